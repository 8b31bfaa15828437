"""``Store``: the one object the service holds, the storage with every part of the store on it.

Each concern is a class of its own (``storage.Storage``, ``batch.ContactBatch``,
``indexes.Indexes``, ``pagination.NamePages``, the topic parts); ``Store`` is the storage
itself and answers the rest by handing each call to its part, once a call (never a record).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from contacts_streams.events import EventCodec
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import batch
from contacts_streams.store.indexes import MAX_GROUP, MAX_LOOKUP, Group, Indexes
from contacts_streams.store.layout import Record
from contacts_streams.store.pagination import NamePages, Page
from contacts_streams.store.parts import DismissedGroups, EventHistory, JoinState
from contacts_streams.store.storage import Storage


class Store(Storage):
    """One process owns the store; its threads may read while the materializer writes."""

    def __init__(
        self, path: str | Path, codec: ContactCodec, phone_region: str | None = None, event_codec: EventCodec | None = None
    ):
        super().__init__(path, codec, phone_region, event_codec)
        self._known = batch.KnownContacts(codec)
        self.join_state = JoinState(self)
        self.dismissed = DismissedGroups(self)
        self.history = EventHistory(self)
        self._indexes = Indexes(self, self.dismissed)
        self._pages = NamePages(self)

    # --- what the materializer writes ------------------------------------------------------

    def remember(self, value: bytes, contact: dict) -> None:
        """Tell the store what bytes about to be published decode to (the caller keeps the
        dict unchanged); identical bytes decode identically, so apply can skip the decode."""
        self._known.remember(value, contact)

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        """Apply records of the contacts topic and their offsets in one write batch; returns how many were applied."""
        return batch.apply(self, self._known, topic, records, on_poison)

    # --- reads -----------------------------------------------------------------------------

    def page(self, cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None) -> Page:
        """A page of contacts in name order; the cost does not grow with the page's position.
        `decode`: what to make of each contact's stored bytes (default: the contact dict)."""
        return self._pages.page(cursor, page_size, decode)

    def contact_id_for_conversation(self, conversation_id: str) -> str | None:
        """The live contact that has this conversation, if any."""
        return self._indexes.contact_id_for_conversation(conversation_id)

    def merged_into(self, contact_id: str) -> str | None:
        """Where a merged-away contact lives now (following merges of merges), if it still does."""
        return self._indexes.merged_into(contact_id)

    # --- finding people ----------------------------------------------------------------------

    def indexed(self, contact_id: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(identities, search tokens) as indexed for a live contact; empty for any other id."""
        return self._indexes.indexed(contact_id)

    def holders(self, kind: str, value: str, limit: int = MAX_GROUP) -> list[str]:
        """Ids of the live contacts that have this normalized identity (at most ``limit``)."""
        return self._indexes.holders(kind, value, limit)

    def lookup(
        self, identities: list[tuple[str, str]], limit: int = MAX_LOOKUP, decode: Callable[[bytes], Any] | None = None
    ) -> list[Any]:
        """The live contacts that have every one of these normalized identities."""
        return self._indexes.lookup(identities, limit, decode)

    def search(
        self, terms: list[tuple[str, str]], cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None
    ) -> Page:
        """A page of the contacts that match every term by prefix (``Indexes.search``)."""
        return self._indexes.search(terms, cursor, page_size, decode)

    def duplicates(self, cursor: str | None, page_size: int) -> tuple[list[Group], str | None]:
        """A page of duplicate groups (one per shared identity) and the next page's cursor."""
        return self._indexes.duplicates(cursor, page_size)

    def groups_of(self, contact_id: str) -> list[Group]:
        """The duplicate groups a live contact is in."""
        return self._indexes.groups_of(contact_id)

    def group(self, kind: str, value: str) -> Group | None:
        """The group of live contacts sharing this identity (``Indexes.group``)."""
        return self._indexes.group(kind, value)
