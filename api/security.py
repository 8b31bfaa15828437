"""The platform's API guard (system token or HS256 JWT) and CORS, from the `security` config map."""

from __future__ import annotations

import hmac

import jwt
from flask import Request, Response

from contacts_streams.config import Config

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Contacts-Min-Position"
CORS_EXPOSED = "X-Contacts-Position"


class Guard:
    def __init__(self, config: Config):
        self._token = config.system_token.encode() if config.system_token else None
        self._secret = config.jwt_secret
        self._origins = set(config.allowed_origins)

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._secret is not None

    def check(self, request: Request) -> str | None:
        """None when the request may pass, else why it may not (answered with 403)."""
        if not self.enabled:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return "missing Authorization: Bearer <token>"
        credential = credential.strip()
        if self._token is not None and hmac.compare_digest(credential.encode(), self._token):
            return None
        if self._secret is not None:
            try:
                jwt.decode(credential, self._secret, algorithms=["HS256"], options={"require": []})
                return None
            except jwt.ExpiredSignatureError:
                return "the token has expired"
            except jwt.PyJWTError:
                pass
        return "the token is not valid"

    def caller(self, request: Request) -> str:
        """Who the request acts for (a request that passed check()): ``system`` for the system
        token, the JWT's ``sub``, ``anonymous`` when the API is open."""
        if not self.enabled:
            return "anonymous"
        credential = request.headers.get("Authorization", "").partition(" ")[2].strip()
        if self._token is not None and hmac.compare_digest(credential.encode(), self._token):
            return "system"
        try:
            claims = jwt.decode(credential, self._secret, algorithms=["HS256"], options={"require": []})
        except jwt.PyJWTError:
            return "anonymous"
        return str(claims.get("sub") or "jwt")

    def _allowed_origin(self, request: Request) -> str | None:
        origin = request.headers.get("Origin")
        if not origin or not self._origins:
            return None
        if "*" in self._origins:
            return origin
        return origin if origin in self._origins else None

    def preflight(self, request: Request) -> Response:
        response = Response(status=204)
        origin = self._allowed_origin(request)
        if origin:
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", CORS_HEADERS
            )
            response.headers["Access-Control-Max-Age"] = "3600"
        return response

    def cors(self, request: Request, response: Response) -> None:
        origin = self._allowed_origin(request)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
            response.headers.add("Vary", "Origin")
