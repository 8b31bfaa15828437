"""The platform's API guard (system token or HS256 JWT) and CORS, from the `security` config map."""

from __future__ import annotations

import hmac

import jwt
from flask import Request, Response

from contacts_streams.config import Config

CORS_METHODS = "GET, POST, OPTIONS"
# What a browser may send: the write and read headers of the API, and X-Requested-With, which
# the platform's inbox client (lib/typescript/httpclient) sends on every call.
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Contacts-Min-Position, X-Requested-With"
# What a browser script may read of an answer besides the CORS-safelisted headers.
CORS_EXPOSE = "X-Contacts-Ignored-Fields, X-Contacts-Position"


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
        if self._secret is None:  # only the system token is accepted, and this is not it
            return "anonymous"
        try:
            claims = jwt.decode(credential, self._secret, algorithms=["HS256"], options={"require": []})
        except jwt.PyJWTError:
            return "anonymous"
        return str(claims.get("sub") or "jwt")

    def _allowed_origin(self, request: Request) -> tuple[str, bool] | None:
        """(Access-Control-Allow-Origin, whether credentials may be sent) for the request's origin.

        With ``*`` any origin may call, but anonymously: ``*`` itself, never the origin reflected
        with credentials, which would let every web site make calls with the user's cookies.
        A listed origin is reflected and may send credentials (the inbox sends them)."""
        origin = request.headers.get("Origin")
        if not origin or not self._origins:
            return None
        if origin in self._origins:
            return origin, True
        if "*" in self._origins:
            return "*", False
        return None

    def preflight(self, request: Request) -> Response:
        response = Response(status=204)
        if self._allowed_origin(request):
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "3600"
        return response

    def cors(self, request: Request, response: Response) -> None:
        allowed = self._allowed_origin(request)
        if allowed:
            origin, credentials = allowed
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
            if credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        if self._origins:  # the answer depends on the Origin header: caches keep one per origin
            response.headers.add("Vary", "Origin")
