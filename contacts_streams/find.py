"""Finding people: lookup by identity, search, duplicate groups and the merge preview.

Reads of the store only (its identities, search and shared families); nothing here writes. The
query side of each normalizes as the writer did (``identities``), with the store's region.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contacts_streams import identities, model
from contacts_streams.contacts import NotFound
from contacts_streams.store import Page, Store


class Finder:
    def __init__(self, store: Store):
        self._store = store

    def lookup(self, via: dict[str, str], decode: Callable[[bytes], Any] | None = None) -> list[Any]:
        """Live contacts that have every given via key/value, normalized. `decode`: what to make
        of each found contact's stored bytes (default: the contact dict)."""
        wanted = sorted({identities.normalize(key, value, self._store.phone_region) for key, value in via.items()})
        if any(not kind or not value for kind, value in wanted):
            return []  # a blank value is no identity: nothing is indexed under it
        return self._store.lookup(wanted, decode=decode)

    def search(self, query: str, cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None) -> Page:
        """`decode`: what to make of each found contact's stored bytes (default: the contact dict)."""
        return self._store.search(identities.query_terms(query), cursor, page_size, decode)

    def duplicates(self, contact_id: str | None, cursor: str | None, page_size: int) -> tuple[list[dict], str | None]:
        """Groups of live contacts sharing identities, and the next page's cursor; with an id,
        that contact's groups (all on one page)."""
        if contact_id is not None:
            if self._store.get_bytes(contact_id) is None:
                raise self._not_found(contact_id)
            groups, next_cursor = self._store.groups_of(contact_id), None
        else:
            groups, next_cursor = self._store.duplicates(cursor, page_size)
        return [
            {
                "contacts": group.contacts,
                "reasons": [{"kind": kind, "value": value} for kind, value in group.reasons],
                "conflicts": model.group_conflicts(group.contacts),
            }
            for group in groups
        ], next_cursor

    def merge_preview(self, source_id: str, destination_id: str) -> dict:
        """What merging would make of the destination and the source's values that would lose."""
        source = self._store.get(source_id)
        if source is None:
            raise self._not_found(source_id, "source_id")
        destination = self._store.get(destination_id)
        if destination is None:
            raise self._not_found(destination_id, "destination_id")
        return model.merge_preview(destination, source, model.now_ms())

    def _not_found(self, contact_id: str, field: str = "id") -> NotFound:
        destination = self._store.merged_into(contact_id)
        if destination:
            return NotFound(f"contact {contact_id} ({field}) was merged into {destination}", merged_into=destination)
        return NotFound(f"contact {contact_id} ({field}) does not exist")
