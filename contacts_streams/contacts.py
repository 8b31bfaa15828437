"""What the HTTP layer asks of contacts: commands that publish, queries that read the store.

Every command holds the locks of the contacts and conversations it touches from the moment it
reads the store until its record is applied, so concurrent writes never lose an update and a
conversation never gets two contacts.
"""

from __future__ import annotations

import uuid
from typing import Sequence

from contacts_streams import identities, model
from contacts_streams.publisher import MERGED_FROM, MERGED_INTO, Outgoing, Publisher, RecordTooLarge, megabytes
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Page, Store


class NotFound(LookupError):
    def __init__(self, message: str, merged_into: str | None = None):
        super().__init__(message)
        self.message = message
        self.merged_into = merged_into


class Conflict(ValueError):
    """The write contradicts the store (a conversation that belongs to another contact)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


def conversation_lock_key(conversation_id: str) -> str:
    """The lock name of a conversation: claiming one serializes with every other claim of it."""
    return f"conversation:{conversation_id}"


class Contacts:
    def __init__(self, store: Store, publisher: Publisher, codec: ContactCodec):
        self._store = store
        self._codec = codec
        self._publisher = publisher

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

    def list(self, cursor: str | None, page_size: int) -> Page:
        return self._store.page(cursor, page_size)

    def _not_found(self, contact_id: str, field: str = "id") -> NotFound:
        destination = self._store.merged_into(contact_id)
        if destination:
            return NotFound(f"contact {contact_id} ({field}) was merged into {destination}", merged_into=destination)
        return NotFound(f"contact {contact_id} ({field}) does not exist")

    def _encode(self, contact: dict) -> bytes:
        value = self._codec.encode_contact(contact)
        self._store.remember(value, contact)
        return value

    # --- commands ----------------------------------------------------------------------------

    def create(self, fields: dict) -> dict:
        return self.import_([fields], operation="created", single=True)[0]

    def import_(self, payloads: Sequence[dict], operation: str = "imported", single: bool = False) -> list[dict]:
        if not payloads:
            return []
        now = model.now_ms()
        contacts = [model.new_contact(fields, str(uuid.uuid4()), now) for fields in payloads]
        conversations = [c for contact in contacts for c in contact.get("conversations", {})]
        keys = [c["id"] for c in contacts] + [conversation_lock_key(c) for c in conversations]
        with self._publisher.writing(keys) as write:
            seen: dict[str, int] = {}
            for index, contact in enumerate(contacts):
                prefix = "" if single else f"[{index}]."
                for conversation_id in contact.get("conversations", {}):
                    field = f"{prefix}conversations.{conversation_id}"
                    if conversation_id in seen:
                        raise Conflict(f"{field}: conversation is also given to [{seen[conversation_id]}]", field)
                    seen[conversation_id] = index
                    self._check_conversation_free(conversation_id, None, field)
            try:
                write.publish([Outgoing(c["id"], self._encode(c), operation, identities.header(c, self._store.phone_region)) for c in contacts])
            except RecordTooLarge as err:  # nothing of the import was produced
                index = next(i for i, c in enumerate(contacts) if c["id"] == err.contact_id)
                field = None if single else f"[{index}]"
                where = "the contact" if single else f"{field}: the contact"
                raise err.reworded(f"{where} would be {_size_against_limit(err)}", field) from None
        return contacts

    def update(self, contact_id: str, changes: dict) -> dict:
        given = changes.get("conversations")
        added = [c for c, source in given.items() if source != ""] if isinstance(given, dict) else []
        keys = [contact_id] + [conversation_lock_key(c) for c in added]
        with self._publisher.writing(keys) as write:
            current = self._store.get(contact_id)
            if current is None:
                raise self._not_found(contact_id)
            for conversation_id in added:
                self._check_conversation_free(conversation_id, contact_id, f"conversations.{conversation_id}")
            updated = model.apply_update(current, changes, model.now_ms())
            if model.same_json(updated, current):  # apply_update leaves updated_at alone when nothing changed
                return current
            write.publish([Outgoing(contact_id, self._encode(updated), "updated", identities.header(updated, self._store.phone_region))])
            return updated

    def delete(self, contact_id: str) -> None:
        with self._publisher.writing([contact_id]) as write:
            if self._store.get_bytes(contact_id) is None:
                raise self._not_found(contact_id)
            write.publish([Outgoing(contact_id, None, "deleted")])

    def merge(self, source_id: str, destination_id: str) -> dict:
        with self._publisher.writing([source_id, destination_id]) as write:
            source = self._store.get(source_id)
            if source is None:
                raise self._not_found(source_id, "source_id")
            destination = self._store.get(destination_id)
            if destination is None:
                raise self._not_found(destination_id, "destination_id")
            merged = model.merge_contacts(destination, source, model.now_ms())
            try:
                write.publish(
                    [
                        Outgoing(destination_id, self._encode(merged), "merged", {MERGED_FROM: source_id, **identities.header(merged, self._store.phone_region)}),
                        Outgoing(source_id, None, "merged_away", {MERGED_INTO: destination_id}),
                    ]
                )
            except RecordTooLarge as err:  # neither record was produced: both contacts stay as they were
                raise err.reworded(
                    f"merging {source_id} into {destination_id} would push contact {destination_id} to "
                    f"{_size_against_limit(err)} (the merged contact holds the source's values and, in "
                    "merge_history, the source as it was)",
                    "source_id",
                ) from None
            return merged

    def _check_conversation_free(self, conversation_id: str, owner: str | None, field: str) -> None:
        holder = self._store.contact_id_for_conversation(conversation_id)
        if holder is not None and holder != owner:  # the store names live contacts only
            raise Conflict(f"{field}: conversation already belongs to contact {holder}", field)



def _size_against_limit(err: RecordTooLarge) -> str:
    return f"{megabytes(err.size)} ({err.size} bytes), over the record limit of {megabytes(err.limit)} ({err.limit} bytes) of the contacts topic"
