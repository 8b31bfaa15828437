"""The HTTP layer: validation, status codes and JSON shapes. Stream and store logic live in
`contacts_streams/`; this module only translates.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from api import security
from api.openapi import OPENAPI
from contacts_streams import commands, model
from contacts_streams.commands import BadPosition, Idempotency
from contacts_streams.config import Config
from contacts_streams.contacts import Conflict, IdempotencyMismatch, NotFound, WriteContext, WriterFailed
from contacts_streams.publisher import TooLarge, Unavailable
from contacts_streams.service import Service
from contacts_streams.store import BadCursor

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
POSITION, MIN_POSITION, IDEMPOTENCY_KEY = "X-Contacts-Position", "X-Contacts-Min-Position", "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def _json(body, status: int) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=status, mimetype="application/json")


def _message(message: str, status: int, **extra) -> Response:
    return _json({"message": message, **extra}, status)


def _empty(status: int) -> Response:
    return Response(status=status)


def create_app(config: Config, service: Service | None = None, on_fatal=None) -> Flask:
    """Build the app from a config; without a service, one is made and started in the background
    (`on_fatal` is called if its start meets a FatalError)."""
    if service is None:
        service = Service(config, on_fatal=on_fatal).start()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["contacts_service"] = service
    metrics = service.metrics
    contacts = service.contacts
    guard = security.Guard(config)
    series: dict[tuple, tuple] = {}

    def body():
        # Parsed whatever the content type says: clients that forget the header still work,
        # and anything that is not JSON is a 400 below.
        data = request.get_data(cache=False)
        if not data.strip(b" \t\r\n"):  # JSON's white space only: bytes.strip() also eats \x0b and \x0c
            parsed = {}
        else:
            try:
                parsed = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting exhausts the parser
                raise _BadBody() from None
        g.body = parsed
        return parsed

    def write_context() -> WriteContext:
        """Who writes, and the request's Idempotency-Key (checked before anything is sent)."""
        deadline = service.publisher.deadline()
        key = request.headers.get(IDEMPOTENCY_KEY)
        idempotency = None
        if key is not None:
            if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable() or not key.isascii():
                raise model.ValidationError(
                    IDEMPOTENCY_KEY, f"{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
                )
            idempotency = Idempotency(g.caller, request.path, key, commands.body_hash(request.path, g.get("body")))
        return WriteContext(actor=g.caller, origin=commands.ORIGIN_HTTP, idempotency=idempotency, deadline=deadline)

    def written(outcome, empty: bool = False) -> Response:
        response = _empty(outcome.status) if empty else _json(outcome.body, outcome.status)
        response.headers[POSITION] = outcome.position
        return response

    def wait_for_min_position() -> None:
        token = request.headers.get(MIN_POSITION)
        if token is not None:
            try:
                contacts.wait_for_position(token, config.write_timeout_ms / 1000)
            except BadPosition as err:
                raise model.ValidationError(MIN_POSITION, f"{MIN_POSITION}: {err}") from None

    @app.before_request
    def before():
        g.started = time.perf_counter()
        if request.method == "OPTIONS":
            return guard.preflight(request)
        if request.path.startswith("/contacts."):
            denied = guard.check(request)
            if denied:
                return _message(denied, 403)
            g.caller = guard.caller(request)

    @app.after_request
    def after(response: Response):
        guard.cors(request, response)
        endpoint = request.path if request.url_rule is not None else "unmatched"
        key = (endpoint, request.method, response.status_code)
        counted = series.get(key)
        if counted is None:  # labels() costs a lock and a lookup: keep the children
            counted = series[key] = (
                metrics.http_requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)),
                metrics.http_latency.labels(endpoint=endpoint),
            )
        counted[0].inc()
        counted[1].observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(_BadBody)
    def bad_body(_err):
        return _message("body: the request body must be valid JSON", 400)

    @app.errorhandler(model.ValidationError)
    def invalid(err: model.ValidationError):
        return _message(err.message, 400, field=err.field)

    @app.errorhandler(BadCursor)
    def bad_cursor(err: BadCursor):
        return _message(f"cursor: {err}", 400, field="cursor")

    @app.errorhandler(NotFound)
    def not_found(err: NotFound):
        extra = {"merged_into": err.merged_into} if err.merged_into else {}
        return _message(err.message, 404, **extra)

    @app.errorhandler(Conflict)
    def conflict(err: Conflict):
        return _message(err.message, 409, field=err.field)

    @app.errorhandler(Unavailable)
    def unavailable(err: Unavailable):
        response = _message(f"contacts are not available right now, retry later: {err}", 503)
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(TooLarge)
    def too_large(err: TooLarge):
        return _message(str(err), 413)

    @app.errorhandler(IdempotencyMismatch)
    def idempotency_mismatch(err: IdempotencyMismatch):
        return _message(err.message, 422, field=IDEMPOTENCY_KEY)

    @app.errorhandler(WriterFailed)
    def writer_failed(err: WriterFailed):
        return _message(f"internal error: {err}", 500)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if err.code == 413:
            return _message(f"the request body is larger than {MAX_BODY_BYTES} bytes", 413)
        return _message(err.description or err.name, err.code or 500)

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unexpected error on %s", request.path)
        return _message("internal error", 500)

    # --- the Contacts API ----------------------------------------------------------------------

    @app.post("/contacts.create")
    def create():
        fields = model.validate_create(body())
        payload = {"contacts": [{"id": str(uuid.uuid4()), "fields": fields}]}
        return written(contacts.write(commands.CREATE, payload, write_context()))

    @app.post("/contacts.import")
    def import_():
        payloads = model.validate_import(body())
        metrics.import_size.observe(len(payloads))
        payload = {"contacts": [{"id": str(uuid.uuid4()), "fields": fields} for fields in payloads]}
        context = write_context()
        outcome = contacts.write(commands.IMPORT, payload, WriteContext(context.actor, commands.ORIGIN_IMPORT, context.idempotency, context.deadline))
        return written(outcome.__class__(outcome.status, {"data": outcome.body}, outcome.position))

    @app.post("/contacts.list")
    def list_():
        cursor, page_size = model.validate_list(body())
        wait_for_min_position()
        page = contacts.list(cursor, page_size)
        return _json(
            {
                "data": page.contacts,
                "pagination_data": {
                    "previous_cursor": page.previous_cursor,
                    "next_cursor": page.next_cursor,
                    "total": page.total,
                },
            },
            200,
        )

    @app.post("/contacts.info")
    def info():
        kind, value = model.validate_info(body())
        wait_for_min_position()
        contact = contacts.info(value) if kind == "id" else contacts.info_by_conversation(value)
        return _json(_with_history(contact), 200)

    @app.post("/contacts.update")
    def update():
        contact_id, changes = model.validate_update(body())
        return written(contacts.write(commands.UPDATE, {"id": contact_id, "changes": changes}, write_context()), empty=True)

    @app.post("/contacts.delete")
    def delete():
        contact_id = model.validate_id(body())
        return written(contacts.write(commands.DELETE, {"id": contact_id}, write_context()), empty=True)

    @app.post("/contacts.merge")
    def merge():
        source_id, destination_id = model.validate_merge(body())
        outcome = contacts.write(commands.MERGE, {"source_id": source_id, "destination_id": destination_id}, write_context())
        return written(outcome.__class__(outcome.status, _with_history(outcome.body), outcome.position))

    # --- operations ----------------------------------------------------------------------------

    def health(check) -> Response:
        ok, reason = check()
        return _json({"status": "UP" if ok else "DOWN", "reason": reason}, 200 if ok else 503)

    @app.get("/actuator/health")
    @app.get("/actuator/health/readiness")
    def readiness():
        alive, reason = service.alive()
        return health(service.ready if alive else service.alive)

    @app.get("/actuator/health/liveness")
    def liveness():
        return health(service.alive)

    @app.get("/metrics")
    @app.get("/actuator/prometheus")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        return _json(OPENAPI, 200)

    return app


class _BadBody(Exception):
    pass


def _with_history(contact: dict) -> dict:
    return {**contact, "merge_history": contact.get("merge_history", [])}
