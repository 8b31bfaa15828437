"""The fast path: a WSGI layer in front of the Flask app that answers the common hot read
(`contacts.info`, `.list`, `.search`, `.lookup`) without Flask's routing, request and response
objects and hooks, which cost several times the read itself (#13).

It answers only what it is sure of: a POST to one of those paths with a JSON (or no) content
type and a small body that parses, that passes the guard and the readiness gate, and whose read
succeeds (`reads`, the functions the Flask views call). Everything else (other methods and paths,
errors, missing or bad auth, not ready, bad JSON, validation errors, unknown ids, preflights) goes
to the Flask app untouched, with the body put back: the error shapes stay the Flask app's alone.
What a client sees is the same either way (status, body, Content-Type, X-Contacts-Ignored-Fields,
Vary, the CORS headers), and both feed the same request metrics.

CORS stays flask-cors's: an answer's CORS headers depend on its Origin alone (the configuration
is fixed), so the first successful read from an allowed origin goes to Flask and the fast path
keeps the headers Flask added to it, for that origin's later reads (a bounded set of origins;
an origin not kept, or not allowed, is always Flask's).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from flask import Flask

from api import reads
from api.contacts_api import MIN_POSITION_TIMED_OUT
from api.request_metrics import RequestMetrics
from api.wire import IGNORED_FIELDS_HEADER, ignored_fields_header
from contacts_streams.publisher import Unavailable

# A read's body is a few ids or a query; anything longer is left to Flask (and its size limit).
MAX_FAST_BODY_BYTES = 16 * 1024
_JSON_TYPES = ("", "application/json")
# Origins whose CORS headers are kept: the configured ones are a handful; with "*" any web site
# may send its own, so the set is bounded (past it, an origin's reads are Flask's).
MAX_ORIGINS = 64
# What the fast path writes itself; any other header of Flask's answer came from its hooks.
_OWN_HEADERS = frozenset({"content-type", "content-length", "x-contacts-ignored-fields"})
_METHOD = "POST"
_JSON = "application/json"
_INFO = "/contacts.info"
_NONE_IGNORED: list[str] = []  # never appended to: an info body by id has no other fields
_OK = "200 OK"


class _Request:
    """What `security.Guard.check` reads of a request: its headers."""

    __slots__ = ("headers",)

    def __init__(self, environ: dict):
        self.headers = _Headers(environ)


class _Headers:
    __slots__ = ("_environ",)

    def __init__(self, environ: dict):
        self._environ = environ

    def get(self, name: str, default: Any = None) -> Any:
        return self._environ.get("HTTP_" + name.upper().replace("-", "_"), default)


class FastReads:
    """WSGI middleware: `app.wsgi_app = FastReads(app, app.wsgi_app)`."""

    def __init__(self, app: Flask, wsgi_app: Callable):
        self.wsgi_app = wsgi_app  # the Flask app's own (what every other request goes to)
        service = app.extensions["contacts_service"]
        config = app.extensions["contacts_config"]
        cache = app.extensions["contacts_json"]
        items = app.extensions["contacts_page_json"]
        self._service = service
        self._guard = app.extensions["contacts_guard"]
        self._guarded = self._guard.enabled
        self._materializer = service.materializer
        self._cache = cache
        metrics: RequestMetrics = app.extensions["contacts_request_metrics"]
        self._observe = metrics.observe
        self._timeout_s = config.write_timeout_ms / 1000
        # security._vary adds it to every answer once origins are configured.
        self._vary = [("Vary", "Origin")] if config.allowed_origins else []
        self._cors: dict[str, list[tuple[str, str]]] = {}  # an allowed origin -> Flask's headers
        self._reads: dict[str, Callable[[Any, list[str], Callable[[], None]], bytes]] = {
            "/contacts.info": lambda payload, ignored, wait: reads.info(service, cache, payload, ignored, wait),
            "/contacts.list": lambda payload, ignored, wait: reads.list_(service, items, payload, ignored, wait),
            "/contacts.search": lambda payload, ignored, wait: reads.search(service, items, payload, ignored, wait),
            "/contacts.lookup": lambda payload, ignored, wait: reads.lookup(service, items, payload, ignored, wait),
        }

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        read = self._reads.get(path)
        if read is None or environ.get("REQUEST_METHOD") != _METHOD or "HTTP_TRANSFER_ENCODING" in environ:
            return self.wsgi_app(environ, start_response)
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type != _JSON and content_type.partition(";")[0].strip().lower() not in _JSON_TYPES:
            return self.wsgi_app(environ, start_response)
        origin: str | None = environ.get("HTTP_ORIGIN")
        extra: list[tuple[str, str]] | None
        if origin is None:
            extra = self._vary
        else:
            extra = self._cors.get(origin)
            if extra is None:
                return self.wsgi_app(environ, self._learning(origin, start_response))
        started = perf_counter()
        length = environ.get("CONTENT_LENGTH") or "0"
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_FAST_BODY_BYTES:
            return self.wsgi_app(environ, start_response)
        size = int(length)
        data = environ["wsgi.input"].read(size) if size else b""
        answer = self._answer(path, read, environ, data, size)
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(data)  # Flask reads the body as it came
            return self.wsgi_app(environ, start_response)
        text, ignored = answer
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(text)))]
        if ignored:
            headers.append((IGNORED_FIELDS_HEADER, ignored_fields_header(ignored)))
        if extra:
            headers.extend(extra)
        start_response(_OK, headers)
        self._observe(path, _METHOD, 200, perf_counter() - started)
        return [text]

    def _learning(self, origin: str, start_response: Callable) -> Callable:
        """start_response that keeps the headers Flask adds to a read's 200 for an allowed origin."""

        def keep(status: str, headers: list[tuple[str, str]], exc_info=None):
            if status == _OK and len(self._cors) < MAX_ORIGINS:
                added = [(name, value) for name, value in headers if name.lower() not in _OWN_HEADERS]
                if any(name.lower() == "access-control-allow-origin" for name, _ in added):
                    self._cors.setdefault(origin, added)
            return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

        return keep

    def _answer(self, path: str, read: Callable, environ: dict, data: bytes, size: int) -> tuple[bytes, list[str]] | None:
        """The 200 answer's body and the ignored field paths, or None: Flask answers instead.
        `size`: the body's length as the request declared it."""
        if self._guarded and self._guard.check(_Request(environ))[0]:
            return None
        if not self._materializer.ready or len(data) != size:
            return None  # not ready, or a short body: Flask's answer decides what that is
        token = environ.get("HTTP_X_CONTACTS_MIN_POSITION")
        wait = _no_wait if token is None else self._waiting(environ, token)
        if path == _INFO:
            contact_id = reads.info_id(data)
            if contact_id is not None:  # the common body: no JSON parse, no validation
                try:
                    wait()
                    return reads.info_json(self._service, self._cache, "id", contact_id), _NONE_IGNORED
                except Exception:  # noqa: BLE001 - see below
                    return None
        try:
            payload = json.loads(data) if data else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        ignored: list[str] = []
        try:
            return read(payload, ignored, wait), ignored
        except Exception:  # noqa: BLE001 - every error is answered by the Flask app, the one place errors are shaped
            return None

    def _waiting(self, environ: dict, token: str) -> Callable[[], None]:
        def wait() -> None:
            try:
                reads.wait_for_min_position(self._service, token, self._timeout_s)
            except Unavailable:
                environ[MIN_POSITION_TIMED_OUT] = True  # Flask answers the 503 without waiting again
                raise

        return wait


def _no_wait() -> None:
    pass
