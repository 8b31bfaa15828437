"""The HTTP layer: validation, status codes and JSON shapes. Stream and store logic live in
`contacts_streams/`; this module only translates.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from urllib.parse import quote

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from api import security
from api.console import console
from api.openapi import OPENAPI
from contacts_streams import commands, model
from contacts_streams.commands import BadPosition, Idempotency
from contacts_streams.config import Config
from contacts_streams.contacts import Conflict, IdempotencyMismatch, NotFound, WriteContext, WriterFailed
from contacts_streams.publisher import Unavailable
from contacts_streams.serialization import RegistryError
from contacts_streams.service import Service
from contacts_streams.store import BadCursor

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
POSITION, MIN_POSITION, IDEMPOTENCY_KEY = "X-Contacts-Position", "X-Contacts-Min-Position", "Idempotency-Key"
# How a write came (the events' origin): the contacts command says "cli"; nothing else is taken.
ORIGIN_HEADER = "X-Contacts-Origin"
MAX_IDEMPOTENCY_KEY_LENGTH = 255
RETRY_AFTER_S = 2
IGNORED_FIELDS_HEADER = "X-Contacts-Ignored-Fields"
MAX_IGNORED_HEADER_LENGTH = 1024
# Printable ASCII stays as it is in the header; "%", ",", "+", space, quotes and backslash are
# percent-encoded (as UTF-8, like everything outside ASCII), so "," separates paths and a
# trailing "+N" (N paths left out) cannot be a path.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '%,+"\\')


def _json(body, status: int) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=status, mimetype="application/json")


def _message(message: str, status: int, **extra) -> Response:
    return _json({"message": message, **extra}, status)


def _unavailable(message: str) -> Response:
    response = _message(message, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


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
    finder = service.finder
    guard = security.Guard(config)
    series: dict[tuple, tuple] = {}

    def ignored() -> list[str]:
        """The list validators add ignored field paths to; after_request names them."""
        if "ignored" not in g:
            g.ignored = []
        return g.ignored

    def body():
        # Parsed whatever the content type says: clients that forget the header still work,
        # and anything that is not JSON is a 400 below.
        data = request.get_data(cache=False)
        if not data:  # no body at all; white space alone is not JSON (a 400 below), as the document says
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
        return WriteContext(actor=g.caller, origin=origin(commands.ORIGIN_HTTP), idempotency=idempotency, deadline=deadline)

    def origin(default: str) -> str:
        return commands.ORIGIN_CLI if request.headers.get(ORIGIN_HEADER, "").strip().lower() == commands.ORIGIN_CLI else default

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
            # Reads and writes alike wait for the store: a write's answer is built from it, and
            # a read must never come from a store still catching up.
            if not service.materializer.ready:
                return _unavailable(f"contacts are not available yet, retry later: {service.store_status()}")
            g.caller = guard.caller(request)

    @app.after_request
    def after(response: Response):
        guard.cors(request, response)
        if g.get("ignored"):
            response.headers[IGNORED_FIELDS_HEADER] = ignored_fields_header(g.ignored)
        # The rule, not the path: console pages take ids in their paths (one series per rule).
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
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
    def unavailable_write(err: Unavailable):
        return _unavailable(f"contacts are not available right now, retry later: {err}")

    @app.errorhandler(RegistryError)  # the record may be fine: the registry did not answer in time
    def unavailable(err: Exception):
        return _unavailable(f"contacts are not available right now, retry later: {err}")

    @app.errorhandler(model.TooLarge)
    def too_large(err: model.TooLarge):
        extra = {"field": err.field} if err.field is not None else {}
        return _message(err.message, 413, **extra)

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
        fields = model.validate_create(body(), ignored())
        payload = {"contacts": [{"id": str(uuid.uuid4()), "fields": fields}]}
        return written(contacts.write(commands.CREATE, payload, write_context()))

    @app.post("/contacts.import")
    def import_():
        payloads, upsert_by = model.validate_import_request(body(), ignored())
        metrics.import_size.observe(len(payloads))
        payload: dict = {"contacts": [{"id": str(uuid.uuid4()), "fields": fields} for fields in payloads]}
        if upsert_by:
            payload["upsert_by"] = upsert_by
        context = write_context()
        outcome = contacts.write(commands.IMPORT, payload, WriteContext(context.actor, origin(commands.ORIGIN_IMPORT), context.idempotency, context.deadline))
        answer: dict = {"data": outcome.body}
        if isinstance(g.body, dict):  # the object form; the array form keeps the platform's shape
            answer.update(created=len(payloads) - outcome.updated, updated=outcome.updated)
        return written(outcome.__class__(outcome.status, answer, outcome.position))

    @app.post("/contacts.list")
    def list_():
        cursor, page_size = model.validate_list(body(), ignored())
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
        kind, value = model.validate_info(body(), ignored())
        wait_for_min_position()
        contact = contacts.info(value) if kind == "id" else contacts.info_by_conversation(value)
        return _json(_with_history(contact), 200)

    @app.post("/contacts.update")
    def update():
        contact_id, changes = model.validate_update(body(), ignored())
        return written(contacts.write(commands.UPDATE, {"id": contact_id, "changes": changes}, write_context()), empty=True)

    @app.post("/contacts.delete")
    def delete():
        contact_id = model.validate_id(body(), ignored())
        return written(contacts.write(commands.DELETE, {"id": contact_id}, write_context()), empty=True)

    @app.post("/contacts.erase")
    def erase():
        contact_id = model.validate_id(body(), ignored())
        return written(contacts.write(commands.ERASE, {"id": contact_id}, write_context()))

    @app.post("/contacts.merge")
    def merge():
        source_id, destination_id, dry_run = model.validate_merge_request(body(), ignored())
        if dry_run:
            preview = finder.merge_preview(source_id, destination_id)
            return _json({**preview, "destination": _with_history(preview["destination"])}, 200)
        outcome = contacts.write(commands.MERGE, {"source_id": source_id, "destination_id": destination_id}, write_context())
        return written(outcome.__class__(outcome.status, _with_history(outcome.body), outcome.position))

    @app.post("/contacts.unmerge")
    def unmerge():
        destination_id, source_id = model.validate_unmerge(body(), ignored())
        outcome = contacts.write(commands.UNMERGE, {"destination_id": destination_id, "source_id": source_id}, write_context())
        answer = {name: _with_history(contact) for name, contact in outcome.body.items()}
        return written(outcome.__class__(outcome.status, answer, outcome.position))

    @app.post("/contacts.history")
    def history():
        contact_id, cursor, page_size = model.validate_history(body(), ignored())
        page = service.history.page(contact_id, cursor, page_size)
        return _json({"data": page.events, "pagination_data": {"previous_cursor": None, "next_cursor": page.next_cursor}}, 200)

    @app.post("/contacts.lookup")
    def lookup():
        return _json({"data": finder.lookup(model.validate_lookup(body(), ignored()))}, 200)

    @app.post("/contacts.search")
    def search():
        query, cursor, page_size = model.validate_search(body(), ignored())
        page = finder.search(query, cursor, page_size)
        pagination = {"previous_cursor": page.previous_cursor, "next_cursor": page.next_cursor, "total": page.total}
        return _json({"data": page.contacts, "pagination_data": pagination}, 200)

    @app.post("/contacts.duplicates")
    def duplicates():
        contact_id, cursor, page_size = model.validate_duplicates(body(), ignored())
        if not service.dismissed.ready:  # else groups people dismissed would be offered again
            return _unavailable(f"duplicates are not available yet, retry later: {service.dismissed.status()}")
        groups, next_cursor = finder.duplicates(contact_id, cursor, page_size)
        return _json({"data": groups, "pagination_data": {"previous_cursor": None, "next_cursor": next_cursor}}, 200)

    @app.post("/contacts.dismiss_duplicates")
    def dismiss_duplicates():
        ids = model.validate_dismiss(body(), ignored())
        return written(contacts.write(commands.DISMISS_DUPLICATES, {"ids": ids}, write_context()), empty=True)

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

    app.register_blueprint(console)
    return app


class _BadBody(Exception):
    pass


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


def _with_history(contact: dict) -> dict:
    return {**contact, "merge_history": contact.get("merge_history", [])}
