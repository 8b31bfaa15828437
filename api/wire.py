"""What every route reads from a request and writes into a response: the JSON body, the answers'
shapes and the headers the API names. The blueprints and error handlers share them, so an answer
is built one way wherever it comes from.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from flask import Response, current_app, g, request

from contacts_streams import model
from contacts_streams.config import Config
from contacts_streams.service import Service

MAX_BODY_BYTES = 16 * 1024 * 1024
POSITION, MIN_POSITION, IDEMPOTENCY_KEY = "X-Contacts-Position", "X-Contacts-Min-Position", "Idempotency-Key"
# How a write came (the events' origin): the contacts command says "cli"; nothing else is taken.
ORIGIN_HEADER = "X-Contacts-Origin"
# RFC 7240: "Prefer: return=minimal" asks for an answer without the written resources.
PREFER, PREFERENCE_APPLIED = "Prefer", "Preference-Applied"
RETRY_AFTER_S = 2
IGNORED_FIELDS_HEADER = "X-Contacts-Ignored-Fields"
MAX_IGNORED_HEADER_LENGTH = 1024
# Printable ASCII stays as it is in the header; "%", ",", "+", space, quotes and backslash are
# percent-encoded (as UTF-8, like everything outside ASCII), so "," separates paths and a
# trailing "+N" (N paths left out) cannot be a path.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '%,+"\\')


class BadBody(Exception):
    """The request body is not JSON (answered with a 400)."""


def service() -> Service:
    return current_app.extensions["contacts_service"]


def config() -> Config:
    """The app's config: the one `create_app` was given, which may differ from its service's
    (tests serve one service under apps with other security settings)."""
    return current_app.extensions["contacts_config"]


def json_response(body: Any, status: int) -> Response:
    return Response(model.compact_json(body), status=status, mimetype="application/json")


def message(text: str, status: int, **extra: Any) -> Response:
    return json_response({"message": text, **extra}, status)


def unavailable(text: str) -> Response:
    response = message(text, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def paged_body(data: Any, next_cursor: str | None, previous_cursor: str | None = None, **extra: Any) -> dict:
    """The list shape: `{"data", "pagination_data": {"previous_cursor", "next_cursor", ...}}`."""
    return {"data": data, "pagination_data": {"previous_cursor": previous_cursor, "next_cursor": next_cursor, **extra}}


def paged(data: Any, next_cursor: str | None, previous_cursor: str | None = None, **extra: Any) -> Response:
    return json_response(paged_body(data, next_cursor, previous_cursor, **extra), 200)


def body() -> Any:
    # Parsed whatever the content type says: clients that forget the header still work,
    # and anything that is not JSON is a 400.
    data = request.get_data(cache=False)
    if not data:  # no body at all; white space alone is not JSON (a 400), as the document says
        parsed: Any = {}
    else:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting exhausts the parser
            raise BadBody() from None
    g.body = parsed
    return parsed


def ignored() -> list[str]:
    """The list validators add ignored field paths to; `name_ignored` puts them in a header."""
    if "ignored" not in g:
        g.ignored = []
    return g.ignored


def name_ignored(response: Response) -> Response:
    if g.get("ignored"):
        response.headers[IGNORED_FIELDS_HEADER] = ignored_fields_header(g.ignored)
    return response


def ignored_fields_header(paths: list[str]) -> str:
    """The X-Contacts-Ignored-Fields value: comma-separated paths, at most
    MAX_IGNORED_HEADER_LENGTH characters; when some do not fit, the last element is "+N"."""
    out: list[str] = []
    length = 0
    for index, path in enumerate(paths):
        encoded = quote(path.encode("utf-8", "surrogatepass"), safe=_HEADER_SAFE)
        left = len(paths) - index
        rest = f",+{left - 1}" if left > 1 else ""  # room for the marker, should a later path not fit
        if length + len(encoded) + 1 + len(rest) > MAX_IGNORED_HEADER_LENGTH:
            out.append(f"+{left}")
            break
        out.append(encoded)
        length += len(encoded) + 1
    return ",".join(out)


def prefers_minimal(value: str | None) -> bool:
    """Whether a Prefer header (RFC 7240) holds ``return=minimal``: preferences are separated by
    commas, a preference's parameters by semicolons, names are case-insensitive and a value may
    be quoted."""
    for preference in (value or "").split(","):
        name, _, rest = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "return" and rest.strip().strip('"').lower() == "minimal":
            return True
    return False
