"""The platform's API guard (system token or HS256 JWT) and CORS, from the `security` config map."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any

import flask
import jwt
from flask import Flask, Request, Response
from flask_cors import CORS

from contacts_streams.config import Config

CORS_METHODS = ["GET", "POST", "OPTIONS"]
# What a browser may send: the write and read headers of the API, and X-Requested-With, which
# the platform's inbox client (lib/typescript/httpclient) sends on every call.
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "X-Contacts-Min-Position", "X-Requested-With"]
# What a browser script may read of an answer besides the CORS-safelisted headers.
CORS_EXPOSE = ["Preference-Applied", "X-Contacts-Ignored-Fields", "X-Contacts-Position"]
CORS_MAX_AGE_S = 3600


class Guard:
    def __init__(self, config: Config):
        self._token = config.system_token.encode() if config.system_token else None
        self._secret = config.jwt_secret

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._secret is not None

    def check(self, request: Request) -> tuple[str | None, str]:
        """(None, who the request acts for) when it may pass, else (why not, answered with 403,
        ""). Who: ``system`` for the system token, the JWT's ``sub``, ``anonymous`` when the API
        is open."""
        if not self.enabled:
            return None, "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return "missing Authorization: Bearer <token>", ""
        credential = credential.strip()
        if self._token is not None and hmac.compare_digest(credential.encode(), self._token):
            return None, "system"
        if self._secret is not None:
            try:
                claims = jwt.decode(credential, self._secret, algorithms=["HS256"], options={"require": []})
                return None, str(claims.get("sub") or "jwt")
            except jwt.ExpiredSignatureError:
                return "the token has expired", ""
            except jwt.PyJWTError:
                pass
        return "the token is not valid", ""


def allow_origins(app: Flask, origins: Iterable[str]) -> None:
    """CORS for `allowedOrigins`, by flask-cors.

    A listed origin is reflected and may send credentials (the inbox sends them). With ``*`` any
    other origin may call, but anonymously: ``*`` itself, never the origin reflected with
    credentials, which would let every web site make calls with the user's cookies. flask-cors
    takes one credentials setting per configuration, so these are two: Flask runs after_request
    hooks last-registered first and flask-cors leaves an answer that already has an
    Allow-Origin alone, so the listed origins (registered last) answer first and ``*`` the rest.
    """
    origins = tuple(origins)
    # Every OPTIONS is a preflight, answered before auth and the readiness gate (a browser's
    # preflight never carries the token); the CORS headers are added to it like to any answer.
    app.before_request(_preflight)
    if not origins:
        return
    common: dict[str, Any] = dict(
        methods=CORS_METHODS,
        allow_headers=CORS_HEADERS,
        expose_headers=CORS_EXPOSE,
        max_age=CORS_MAX_AGE_S,
        always_send=False,  # no Origin, no CORS headers: not a browser's cross-origin call
        vary_header=False,  # flask-cors varies only when it reflects an origin; see _vary
        intercept_exceptions=False,  # error handlers answer like views, so after_request sees them
    )
    if "*" in origins:
        CORS(app, origins="*", send_wildcard=True, supports_credentials=False, **common)
    listed = [o for o in origins if o != "*"]
    if listed:
        # Escaped: flask-cors reads an origin holding "*", "?", "[", ... as a regex matched at the
        # start only, where an entry here is one origin, matched whole.
        exact = [re.compile(re.escape(origin) + r"\Z", re.IGNORECASE) for origin in listed]
        CORS(app, origins=exact, supports_credentials=True, **common)
    app.after_request(_vary)


def _preflight() -> Response | None:
    return Response(status=204) if flask.request.method == "OPTIONS" else None


def _vary(response: Response) -> Response:
    # Every answer depends on the Origin header (a stranger's has no CORS headers): caches keep one per origin.
    response.vary.add("Origin")
    return response
