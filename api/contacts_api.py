"""The Contacts API: the `POST /contacts.*` endpoints. Each validates with `model`, hands the
write to the writer (or reads the store) and answers; stream and store logic live in
`contacts_streams/`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request

from api import reads
from api.wire import (
    IDEMPOTENCY_KEY,
    MIN_POSITION,
    ORIGIN_HEADER,
    POSITION,
    PREFER,
    PREFERENCE_APPLIED,
    body,
    config,
    ignored,
    json_response,
    message,
    name_ignored,
    paged,
    prefers_minimal,
    service,
    unavailable,
)
from contacts_streams import commands, model
from contacts_streams.commands import Idempotency
from contacts_streams.contacts import WriteContext

MAX_IDEMPOTENCY_KEY_LENGTH = 255

contacts_api = Blueprint("contacts_api", __name__)
contacts_api.after_request(name_ignored)


@contacts_api.before_app_request
def gate() -> Response | None:
    """Auth and the readiness gate for every /contacts.* path, routed or not: an unknown or
    misused endpoint is refused the same way before anyone learns whether it exists."""
    if request.method == "OPTIONS" or not request.path.startswith("/contacts."):
        return None
    denied, caller = current_app.extensions["contacts_guard"].check(request)
    if denied:
        return message(denied, 403)
    # Reads and writes alike wait for the store: a write's answer is built from it, and
    # a read must never come from a store still catching up.
    if not service().materializer.ready:
        return unavailable(f"contacts are not available yet, retry later: {service().store_status()}")
    g.caller = caller
    return None


def write_context(default_origin: str = commands.ORIGIN_HTTP) -> WriteContext:
    """Who writes, and the request's Idempotency-Key (checked before anything is sent)."""
    deadline = service().publisher.deadline()
    key = request.headers.get(IDEMPOTENCY_KEY)
    idempotency = None
    if key is not None:
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable() or not key.isascii():
            raise model.ValidationError(
                IDEMPOTENCY_KEY, f"{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
            )
        idempotency = Idempotency(g.caller, request.path, key, commands.body_hash(request.path, g.get("body")))
    cli = request.headers.get(ORIGIN_HEADER, "").strip().lower() == commands.ORIGIN_CLI
    return WriteContext(
        actor=g.caller, origin=commands.ORIGIN_CLI if cli else default_origin, idempotency=idempotency, deadline=deadline
    )


def written(outcome, answer: Any = None, empty: bool = False) -> Response:
    """A write's answer: its status, the body (the outcome's unless another is given) and the
    position token a later read may wait for."""
    response = (
        Response(status=outcome.status) if empty else json_response(outcome.body if answer is None else answer, outcome.status)
    )
    response.headers[POSITION] = outcome.position
    return response


# Set by the fast path (api/fastpath.py) when it already waited the whole timeout for the
# request's X-Contacts-Min-Position and handed the request on: answer it without a second wait.
MIN_POSITION_TIMED_OUT = "contacts.min_position_timed_out"


def wait_for_min_position() -> None:
    reads.wait_for_min_position(
        service(),
        request.headers.get(MIN_POSITION),
        config().write_timeout_ms / 1000,
        timed_out=request.environ.get(MIN_POSITION_TIMED_OUT, False),
    )


def read_answer(text: bytes) -> Response:
    return Response(text, status=200, mimetype="application/json")


@contacts_api.post("/contacts.create")
def create():
    fields = model.validate_create(body(), ignored())
    payload = {"contacts": [{"id": model.random_uuid(), "fields": fields}]}
    return written(service().contacts.write(commands.CREATE, payload, write_context()))


@contacts_api.post("/contacts.import")
def import_():
    payloads, upsert_by = model.validate_import_request(body(), ignored())
    service().metrics.import_size.observe(len(payloads))
    payload: dict = {"contacts": [{"id": model.random_uuid(), "fields": fields} for fields in payloads]}
    if upsert_by:
        payload["upsert_by"] = upsert_by
    # "Prefer: return=minimal" (the contacts command sends it): the counts and ids only. Reading
    # back and encoding every contact of a batch was a sixth of an import's time in the service.
    minimal = prefers_minimal(request.headers.get(PREFER))
    outcome = service().contacts.write(commands.IMPORT, payload, write_context(commands.ORIGIN_IMPORT), with_body=not minimal)
    counts = {"created": len(payloads) - outcome.updated, "updated": outcome.updated}
    if minimal:
        response = written(outcome, {**counts, "ids": list(outcome.ids)})
        response.headers[PREFERENCE_APPLIED] = "return=minimal"
        return response
    answer: dict = {"data": outcome.body}
    if isinstance(g.body, dict):  # the object form; the array form keeps the platform's shape
        answer.update(counts)
    return written(outcome, answer)


@contacts_api.post("/contacts.list")
def list_():
    items = current_app.extensions["contacts_page_json"]
    return read_answer(reads.list_(service(), items, body(), ignored(), wait_for_min_position))


@contacts_api.post("/contacts.info")
def info():
    cache = current_app.extensions["contacts_json"]
    return read_answer(reads.info(service(), cache, body(), ignored(), wait_for_min_position))


@contacts_api.post("/contacts.update")
def update():
    contact_id, changes = model.validate_update(body(), ignored())
    return written(service().contacts.write(commands.UPDATE, {"id": contact_id, "changes": changes}, write_context()), empty=True)


@contacts_api.post("/contacts.delete")
def delete():
    contact_id = model.validate_id(body(), ignored())
    return written(service().contacts.write(commands.DELETE, {"id": contact_id}, write_context()), empty=True)


@contacts_api.post("/contacts.erase")
def erase():
    contact_id = model.validate_id(body(), ignored())
    return written(service().contacts.write(commands.ERASE, {"id": contact_id}, write_context()))


@contacts_api.post("/contacts.merge")
def merge():
    source_id, destination_id, dry_run = model.validate_merge_request(body(), ignored())
    if dry_run:
        wait_for_min_position()
        preview = service().finder.merge_preview(source_id, destination_id)
        return json_response({**preview, "destination": reads.with_history(preview["destination"])}, 200)
    outcome = service().contacts.write(
        commands.MERGE, {"source_id": source_id, "destination_id": destination_id}, write_context()
    )
    return written(outcome, reads.with_history(outcome.body))


@contacts_api.post("/contacts.unmerge")
def unmerge():
    destination_id, source_id = model.validate_unmerge(body(), ignored())
    outcome = service().contacts.write(
        commands.UNMERGE, {"destination_id": destination_id, "source_id": source_id}, write_context()
    )
    return written(outcome, {name: reads.with_history(contact) for name, contact in outcome.body.items()})


@contacts_api.post("/contacts.history")
def history():
    contact_id, cursor, page_size = model.validate_history(body(), ignored())
    page = service().history.page(contact_id, cursor, page_size)
    return paged(page.events, page.next_cursor)


@contacts_api.post("/contacts.lookup")
def lookup():
    return read_answer(
        reads.lookup(service(), current_app.extensions["contacts_page_json"], body(), ignored(), wait_for_min_position)
    )


@contacts_api.post("/contacts.search")
def search():
    return read_answer(
        reads.search(service(), current_app.extensions["contacts_page_json"], body(), ignored(), wait_for_min_position)
    )


@contacts_api.post("/contacts.duplicates")
def duplicates():
    contact_id, cursor, page_size = model.validate_duplicates(body(), ignored())
    dismissed = service().dismissed
    if not dismissed.ready:  # else groups people dismissed would be offered again
        return unavailable(f"duplicates are not available yet, retry later: {dismissed.status()}")
    wait_for_min_position()
    groups, next_cursor = service().finder.duplicates(contact_id, cursor, page_size)
    return paged(groups, next_cursor)


@contacts_api.post("/contacts.dismiss_duplicates")
def dismiss_duplicates():
    ids = model.validate_dismiss(body(), ignored())
    return written(service().contacts.write(commands.DISMISS_DUPLICATES, {"ids": ids}, write_context()), empty=True)
