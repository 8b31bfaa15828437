"""How each error the service raises is answered: `{"message", "field"?}` with its status, never
a 500 for bad input. Registered on the app, so the API, the operations paths and anything the
console does not handle itself answer alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api.wire import IDEMPOTENCY_KEY, MAX_BODY_BYTES, BadBody, message, unavailable
from contacts_streams import model
from contacts_streams.contacts import Conflict, IdempotencyMismatch, NotFound, WriterFailed
from contacts_streams.publisher import Unavailable
from contacts_streams.serialization import RegistryError
from contacts_streams.store import BadCursor

log = logging.getLogger(__name__)


def bad_body(_err: BadBody) -> Response:
    return message("body: the request body must be valid JSON", 400)


def invalid(err: model.ValidationError) -> Response:
    return message(err.message, 400, field=err.field)


def bad_cursor(err: BadCursor) -> Response:
    return message(f"cursor: {err}", 400, field="cursor")


def not_found(err: NotFound) -> Response:
    extra = {"merged_into": err.merged_into} if err.merged_into else {}
    return message(err.message, 404, **extra)


def conflict(err: Conflict) -> Response:
    return message(err.message, 409, field=err.field)


def not_now(err: Exception) -> Response:
    # A write the writer did not answer in time, or a registry that did not: the request may be fine.
    return unavailable(f"contacts are not available right now, retry later: {err}")


def too_large(err: model.TooLarge) -> Response:
    extra = {"field": err.field} if err.field is not None else {}
    return message(err.message, 413, **extra)


def idempotency_mismatch(err: IdempotencyMismatch) -> Response:
    return message(err.message, 422, field=IDEMPOTENCY_KEY)


def writer_failed(err: WriterFailed) -> Response:
    return message(f"internal error: {err}", 500)


def http_error(err: HTTPException) -> Response:
    if err.code == 413:
        return message(f"the request body is larger than {MAX_BODY_BYTES} bytes", 413)
    return message(err.description or err.name, err.code or 500)


def unexpected(_err: Exception) -> Response:
    log.exception("unexpected error on %s", request.path)
    return message("internal error", 500)


HANDLERS: dict[type[Exception], Callable[[Any], Response]] = {
    BadBody: bad_body,
    model.ValidationError: invalid,
    BadCursor: bad_cursor,
    NotFound: not_found,
    Conflict: conflict,
    Unavailable: not_now,
    RegistryError: not_now,
    model.TooLarge: too_large,
    IdempotencyMismatch: idempotency_mismatch,
    WriterFailed: writer_failed,
    HTTPException: http_error,
    Exception: unexpected,
}


def register(app: Flask) -> None:
    for error, handler in HANDLERS.items():
        app.register_error_handler(error, handler)
