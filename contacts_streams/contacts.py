"""What the HTTP layer asks of contacts: writes become commands for the writer, reads come
from the own store.

A write's answer is built from this replica's store once it has applied what the writer
produced for it (the reply's offsets), so a client reads its own writes on the replica that
answered, and anywhere else with the position token.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contacts_streams import commands, model
from contacts_streams.commands import Idempotency, Reply
from contacts_streams.decisions import Conflict, NotFound
from contacts_streams.materializer import Materializer
from contacts_streams.model import ValidationError
from contacts_streams.publisher import CommandClient, TooLarge, Unavailable
from contacts_streams.store import Page, Store
from contacts_streams.topics import EraseBound

# After the topics' bound, the time a replica's store takes to compact what an erase removed
# (it starts as soon as the replica applies the erase).
STORE_COMPACTION_MS = 5000

__all__ = ["Conflict", "Contacts", "IdempotencyMismatch", "NotFound", "TooLarge", "Unavailable", "WriteContext", "Written"]


class IdempotencyMismatch(ValueError):
    """The Idempotency-Key was used before with a different request body (422)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class WriterFailed(RuntimeError):
    """The writer answered 500: a bug, logged there."""


@dataclass(frozen=True)
class WriteContext:
    """Who writes and how, and the request's Idempotency-Key with its body's fingerprint."""

    actor: str = commands.SYSTEM
    origin: str = commands.ORIGIN_HTTP
    idempotency: Idempotency | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class Written:
    status: int
    body: Any  # the JSON answer (a contact, a list of them, ...), None for an empty one
    position: str  # X-Contacts-Position
    updated: int = 0  # an import: how many elements updated a contact (the others created one)
    ids: tuple[str, ...] = ()  # the contacts the write made or changed, in the command's order


class Contacts:
    def __init__(self, store: Store, client: CommandClient, materializer: Materializer, dismissed: Materializer | None = None):
        self._store = store
        self._client = client
        self._materializer = materializer
        self._dismissed = dismissed  # feeds the store's dismissed groups
        # How long the topics keep an erased value, as the broker's settings say (set at start).
        self.erase_bound: EraseBound | None = None

    # --- queries -----------------------------------------------------------------------------

    def info(self, contact_id: str) -> dict:
        contact = self._store.get(contact_id)
        if contact is None:
            raise self._not_found(contact_id)
        return contact

    def info_by_conversation(self, conversation_id: str) -> dict:
        contact_id = self._store.contact_id_for_conversation(conversation_id)
        contact = self._store.get(contact_id) if contact_id else None
        if contact is None:
            raise NotFound(f"no contact has conversation {conversation_id}")
        return contact

    def list(self, cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None) -> Page:
        """`decode`: what to make of each contact's stored bytes (default: the contact dict)."""
        return self._store.page(cursor, page_size, decode)

    def wait_for_position(self, token: str, timeout: float) -> None:
        """Return once this replica has applied the write a position token names (BadPosition
        for a token it did not hand out, Unavailable when that takes longer than `timeout`)."""
        offsets = commands.decode_position(token)
        if offsets and not self._materializer.wait_applied(offsets, timeout):
            raise Unavailable("this replica has not applied the given X-Contacts-Min-Position yet")

    def _not_found(self, contact_id: str, field: str = "id") -> NotFound:
        destination = self._store.merged_into(contact_id)
        if destination:
            return NotFound(f"contact {contact_id} ({field}) was merged into {destination}", merged_into=destination)
        return NotFound(f"contact {contact_id} ({field}) does not exist")

    # --- writes ------------------------------------------------------------------------------

    def write(self, type_: str, payload: dict, context: WriteContext | None = None, with_body: bool = True) -> Written:
        """Send one write to the writer; the answer's body comes from the own store.
        ``with_body=False``: no body (the caller answers from the ids and counts); the store
        still applied the write first, so a read after the answer sees it."""
        context = context or WriteContext()
        reply = self._client.send(
            type_, payload, deadline=context.deadline, actor=context.actor, origin=context.origin, idempotency=context.idempotency
        )
        position = commands.encode_position(reply.offsets)
        self._raise_error(reply)
        if reply.dismissed and self._dismissed is not None:
            # What the write dismissed is left out of the duplicates this replica answers next.
            left = (
                context.deadline - time.monotonic()
                if context.deadline is not None
                else self._client.deadline() - time.monotonic()
            )
            if not self._dismissed.wait_applied(reply.dismissed, max(0.0, left)):
                raise Unavailable("the write is committed but this replica's store did not apply it in time")
        body = self._body(type_, reply) if with_body else None
        return Written(reply.status, body, position, len(reply.updated), tuple(reply.ids))

    @staticmethod
    def _raise_error(reply: Reply) -> None:
        if reply.status < 300:
            return
        error = reply.error or {}
        message = error.get("message", "the write was refused")
        if reply.status == 404:
            raise NotFound(message, merged_into=error.get("merged_into"))
        if reply.status == 409:
            raise Conflict(message, error.get("field", ""))
        if reply.status == 400:
            raise ValidationError(error.get("field", ""), message)
        if reply.status == 413:
            raise TooLarge(message, error.get("field"))
        if reply.status == 422:
            raise IdempotencyMismatch(message)
        raise WriterFailed(message)

    def _body(self, type_: str, reply: Reply):
        # The store has applied at least this write; later writes may have changed the contacts
        # since (a concurrent merge, a retried create of a contact edited since): the answer
        # shows the contact as it is now, where it lives now.
        if type_ == commands.CREATE:
            return self._current(reply.ids[0])
        if type_ == commands.IMPORT:
            return [self._current(i) for i in reply.ids]
        if type_ == commands.MERGE:
            return self._current(reply.ids[0])
        if type_ == commands.UNMERGE:
            return {"destination": self._current(reply.ids[0]), "restored": self._current(reply.ids[1])}
        if type_ == commands.ERASE:
            return {"erased": reply.ids[0], "complete_by": self.complete_by()}
        return None

    def complete_by(self, now_ms: int | None = None) -> str | None:
        """When no copy of what an erase removes is left anywhere the service keeps data (ISO
        UTC), or None when a topic keeps data without a time limit (see topics.EraseBound)."""
        bound = self.erase_bound.bound_ms if self.erase_bound is not None else None
        if bound is None:
            return None
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        when = datetime.fromtimestamp((now_ms + bound + STORE_COMPACTION_MS) / 1000, UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _current(self, contact_id: str) -> dict:
        contact = self._store.get(contact_id)
        if contact is None:
            home = self._store.merged_into(contact_id)
            contact = self._store.get(home) if home else None
        return contact if contact is not None else {"id": contact_id}

    # Shorthands (tests, tools): the body, as before commands existed.

    def create(self, fields: dict, context: WriteContext | None = None) -> dict:
        payload = {"contacts": [{"id": model.random_uuid(), "fields": fields}]}
        return self.write(commands.CREATE, payload, context).body

    def import_(
        self, payloads: Sequence[dict], context: WriteContext | None = None
    ) -> builtins.list[dict]:  # in this class `list` is the method
        payload = {"contacts": [{"id": model.random_uuid(), "fields": fields} for fields in payloads]}
        return self.write(commands.IMPORT, payload, context).body

    def update(self, contact_id: str, changes: dict, context: WriteContext | None = None) -> None:
        self.write(commands.UPDATE, {"id": contact_id, "changes": changes}, context)

    def delete(self, contact_id: str, context: WriteContext | None = None) -> None:
        self.write(commands.DELETE, {"id": contact_id}, context)

    def merge(self, source_id: str, destination_id: str, context: WriteContext | None = None) -> dict:
        return self.write(commands.MERGE, {"source_id": source_id, "destination_id": destination_id}, context).body

    def erase(self, contact_id: str, context: WriteContext | None = None) -> dict:
        return self.write(commands.ERASE, {"id": contact_id}, context).body

    def unmerge(self, destination_id: str, source_id: str, context: WriteContext | None = None) -> dict:
        return self.write(commands.UNMERGE, {"destination_id": destination_id, "source_id": source_id}, context).body
