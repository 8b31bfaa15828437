"""Applying records of the contacts topic (``apply``): each record's contact, its derived entry
and its index entries, in one ``ContactBatch`` with the topic's offsets.

Every index changes in the same ``WriteBatch`` as the contact and the offset: a crash leaves the
store at one batch boundary or the next, never between. Every index entry depends on one contact's
latest record only, so the order in which partitions are read (a live store and a rebuild read
them differently) never changes the result; lookups pick the claimant that is still live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from rocksdict import ReadOptions, WriteBatch

from contacts_streams import identities as ids_module
from contacts_streams import model
from contacts_streams.decisions import ERASED as ERASED_OPERATION
from contacts_streams.decisions import LIVE_AGAIN
from contacts_streams.serialization import ContactCodec, DecodeError
from contacts_streams.store.layout import (
    _I64,
    _PARTITION,
    _U64,
    CONTACT_COUNT,
    CONTACTS,
    CONVERSATIONS,
    COUNTERS,
    DERIVED,
    ERASED,
    FROM_HISTORY,
    FROM_TOMBSTONE,
    IDENTITIES,
    MERGED,
    META,
    NAMES,
    OFFSETS,
    SEARCH,
    SEPARATOR,
    SHARED,
    TOPIC_KEY,
    Record,
    _digest16,
    _pair,
    search_name,
)
from contacts_streams.store.storage import Storage

log = logging.getLogger(__name__)

KNOWN_LIMIT = 50_000


class KnownValues:
    """Records this process just encoded, by their bytes: applying them needs no decode."""

    def __init__(self, decode: Callable[[bytes], dict]):
        self._decode = decode
        self._known: dict[bytes, dict] = {}

    def remember(self, value: bytes, decoded: dict) -> None:
        """Tell the store what bytes about to be published decode to (the caller keeps the
        dict unchanged); identical bytes decode identically, so apply can skip the decode."""
        if len(self._known) > KNOWN_LIMIT:  # writes that never came back (failed, timed out)
            self._known.clear()
        self._known[value] = decoded

    def decode(self, value: bytes) -> dict:
        known = self._known.pop(value, None)
        return known if known is not None else self._decode(value)


class KnownContacts(KnownValues):
    """Contacts this process just encoded."""

    def __init__(self, codec: ContactCodec):
        super().__init__(codec.decode_indexable)


def apply(
    store: Storage,
    known: KnownContacts,
    topic: str,
    records: Iterable[Record],
    on_poison: Callable[[Record, Exception], None] | None = None,
) -> int:
    """Apply records of the contacts topic and their offsets in one write batch; returns how many were applied."""
    with store._write_lock:
        batch = ContactBatch(store, known)
        batch.put(META, TOPIC_KEY, topic.encode())
        applied = 0
        next_offsets: dict[int, int] = {}
        for record in records:
            try:
                batch.apply(record)
                applied += 1
            except (DecodeError, ValueError) as err:
                log.error("skipping undecodable record at partition %s offset %s: %s", record.partition, record.offset, err)
                if on_poison:
                    on_poison(record, err)
            next_offsets[record.partition] = record.offset + 1
        for partition, offset in next_offsets.items():
            batch.put(OFFSETS, _PARTITION.pack(partition), _U64.pack(offset))
        batch.write()
        if batch.holds_erased:
            store.may_hold_erased = True
    if batch.erased:
        store.request_compaction()
    return applied


class ContactBatch:
    """A write batch that reads its own pending writes, so one batch may touch a contact twice."""

    def __init__(self, store: Storage, known: KnownContacts):
        self._store = store
        self._known = known
        self._batch = WriteBatch(raw_mode=True)
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._count_delta = 0
        # identity prefix (kind + 0x00 + value + 0x00) -> contact id -> held after this batch?
        self._identity_changes: dict[bytes, dict[bytes, bool]] = {}
        # contact id -> the merged-into hints its tombstones put in this batch
        self._tombstone_hints: dict[str, set[bytes]] = {}
        # An erased tombstone removed something: the store compacts once the batch is written.
        self.erased = False
        # It wrote an erased id (the store may hold some once it is written).
        self.holds_erased = False

    def get(self, family: str, key: bytes) -> bytes | None:
        if (family, key) in self._pending:
            return self._pending[(family, key)]
        return self._store._cf[family].get(key)

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self._pending[(family, key)] = value
        self._batch.put(key, value, self._store._handle[family])

    def delete(self, family: str, key: bytes) -> None:
        self._pending[(family, key)] = None
        self._batch.delete(key, self._store._handle[family])

    def _forget_merged_away(self, contact_id: str) -> None:
        """A contact that is live again (restored by an unmerge) no longer lives elsewhere: its
        tombstone's merged-into hints go, those written by this batch too. The hints from a
        destination's history go with that destination's next record (the unmerged one)."""
        prefix = contact_id.encode() + SEPARATOR
        stale = set(self._tombstone_hints.pop(contact_id, ()))
        it = self._store._cf[MERGED].iter(ReadOptions())
        it.seek(prefix)
        while it.valid() and it.key().startswith(prefix):
            if it.key().endswith(FROM_TOMBSTONE):
                stale.add(it.key())
            it.next()
        for key in stale:
            self.delete(MERGED, key)

    def _add_count(self, delta: int) -> None:
        self._count_delta += delta

    def _put_index(self, family: str, key: bytes, value: bytes) -> None:
        """A write to a family nothing reads back within a batch (every index but the contacts,
        derived, erased and counters families): no pending entry to keep."""
        self._batch.put(key, value, self._store._handle[family])

    def _delete_index(self, family: str, key: bytes) -> None:
        self._batch.delete(key, self._store._handle[family])

    def write(self) -> None:
        if self._identity_changes:
            # One iterator for every identity the batch touched, in key order.
            it = self._store._cf[IDENTITIES].iter(ReadOptions())
            for prefix in sorted(self._identity_changes):
                self._recount(it, prefix, self._identity_changes[prefix])
            del it
        if self._count_delta:
            raw = self.get(COUNTERS, CONTACT_COUNT)
            current = _I64.unpack(raw)[0] if raw is not None else 0
            self.put(COUNTERS, CONTACT_COUNT, _I64.pack(current + self._count_delta))
        self._store._db.write(self._batch)
        self._store.generation += 1

    def _recount(self, it, prefix: bytes, changes: dict[bytes, bool]) -> None:
        """Keep the shared family in step with the identities family for one identity: it holds
        the identity while at least two contacts do. The stored entries are the state before
        the batch, so they say whether it is there now; it is written only when that changes."""
        after = {contact_id for contact_id, held in changes.items() if held}
        gone = {contact_id for contact_id, held in changes.items() if not held}
        before = 0
        it.seek(prefix)
        # Enough entries to know whether two held it before and whether two hold it after.
        while it.valid() and (before < 2 or len(after) < 2):
            key = it.key()
            if not key.startswith(prefix):
                break
            before += 1
            contact_id = key[len(prefix) :]
            if contact_id not in gone:
                after.add(contact_id)
            it.next()
        was, now = before >= 2, len(after) >= 2
        if now != was:
            identity = prefix[:-1]
            if now:
                self._put_index(SHARED, _digest16(identity), identity)
            else:
                self._delete_index(SHARED, _digest16(identity))

    def _derive(self, key: bytes, contact: dict, headers: dict[str, str]) -> tuple[list, dict[tuple[str, bytes], bytes]]:
        """The derived entry of a contact's new record and its index entries: its identities
        and search tokens (from its identities header, or computed), display name,
        conversations and merged-away ids, all that its index entries are made of."""
        name = contact.get("display_name")
        name = name if isinstance(name, str) else None
        conversations = list(contact.get("conversations") or ())
        merged = [entry["id"] for entry in contact.get("merge_history") or () if entry.get("id")]
        carried = ids_module.decode(headers.get(ids_module.HEADER))
        if carried is not None:
            identities, tokens = carried
            try:
                if tokens is None:  # a version 1 header
                    tokens = ids_module.search_tokens(contact, identities)
                derived = [identities, tokens, name, conversations, merged]
                return derived, self._entries(key, derived)
            except (AttributeError, TypeError, ValueError):
                pass  # not pairs of strings: another producer's header, computed instead
        identities = ids_module.identities_of(contact, self._store.phone_region)
        derived = [identities, ids_module.search_tokens(contact, identities), name, conversations, merged]
        return derived, self._entries(key, derived)

    def _entries(self, key: bytes, derived: list) -> dict[tuple[str, bytes], bytes]:
        """Every index entry of one contact ((family, key) -> value), from its derived entry."""
        identities, tokens, name, conversations, merged = derived
        contact_id = key.decode()
        entries = {(NAMES, model.sort_key({"id": contact_id, "display_name": name})): key}
        key_tail = SEPARATOR + key
        for kind, value in identities:
            entries[(IDENTITIES, (kind + "\x00" + value).encode() + key_tail)] = b""
        tail = SEPARATOR + search_name({"display_name": name}) + SEPARATOR + key
        previous_namespace, previous = None, ""
        for namespace, token in tokens:
            # The value: how many leading characters the token shares with the contact's token
            # before it (tokens are sorted), so a search tells whether this is the contact's
            # first token with the query's prefix without reading the contact's other tokens.
            if namespace != previous_namespace:
                shared = 0
            elif token == previous:
                continue
            elif previous[:1] != token[:1]:
                shared = 0
            else:
                shared = _common_prefix(previous, token)
            entries[(SEARCH, (namespace + token[: ids_module.MAX_TOKEN_CHARS]).encode() + tail)] = _SHARED_PREFIX[
                shared if shared < 256 else 255
            ]
            previous_namespace, previous = namespace, token
        for conversation_id in conversations:
            entries[(CONVERSATIONS, _pair(conversation_id, contact_id))] = b""
        for merged_id in merged:
            # The destination's history names every contact merged into it, so the merged-into
            # hint survives compaction of the merged-away tombstones.
            entries[(MERGED, _pair(merged_id, contact_id) + FROM_HISTORY)] = b""
        return entries

    def apply(self, record: Record) -> None:
        if record.key is None:
            raise ValueError("record without a key")
        key = record.key
        contact_id = key.decode()
        # The derived entry is there exactly while the contact is: its entries are the old
        # record's index entries, so the old record is never decoded.
        old_derived = self.get(DERIVED, key)
        new = self._known.decode(record.value) if record.value is not None else None
        if new is not None and new.get("id") != contact_id:
            raise ValueError(f"record key {contact_id} does not match its contact id {new.get('id')}")
        new_derived, new_entries = self._derive(key, new, record.headers) if new is not None else (None, {})
        old_entries = self._entries(key, model.json_loads(old_derived)) if old_derived is not None else {}

        handles, batch, changes = self._store._handle, self._batch, self._identity_changes
        if old_entries:
            for entry in old_entries.keys() - new_entries.keys():
                family, entry_key = entry
                if family == IDENTITIES:
                    changes.setdefault(entry_key[: -len(key)], {})[key] = False
                batch.delete(entry_key, handles[family])
        for entry, value in new_entries.items():
            if old_entries and old_entries.get(entry) == value:
                continue  # unchanged: no write
            family, entry_key = entry
            if family == IDENTITIES:
                changes.setdefault(entry_key[: -len(key)], {})[key] = True
            batch.put(entry_key, value, handles[family])

        if new is None:
            if old_derived is not None:
                self.delete(CONTACTS, key)
                self.delete(DERIVED, key)
                self._add_count(-1)
            if record.headers.get("operation") == ERASED_OPERATION:
                # Nothing of it stays, not even where it went: the ids merged into it were
                # erased with it and no longer lead anywhere.
                self._forget_merged_away(contact_id)
                if self.get(ERASED, key) is None:  # the writer's roll writes it again: keep the first time
                    self.put(ERASED, key, _U64.pack(max(0, record.timestamp)))
                    self.holds_erased = True
                self.erased = self.erased or old_derived is not None
                return
            merged_into = record.headers.get("merged_into")
            if merged_into:
                self._put_index(MERGED, _pair(contact_id, merged_into) + FROM_TOMBSTONE, b"")
                self._tombstone_hints.setdefault(contact_id, set()).add(_pair(contact_id, merged_into) + FROM_TOMBSTONE)
            return

        assert record.value is not None  # a tombstone decodes to no contact, handled above
        # Nothing reads the contacts family back within a batch: no pending entry for it.
        batch.put(key, record.value, handles[CONTACTS])
        self.put(DERIVED, key, model.json_bytes(new_derived))
        # Most stores never saw an erase: no read of the erased family for each record then.
        if (self._store.may_hold_erased or (ERASED, key) in self._pending) and self.get(ERASED, key) is not None:
            self.delete(ERASED, key)  # live again: a new contact with the id (auto-create)
        if old_derived is None:
            self._add_count(1)
            if record.headers.get("operation") in LIVE_AGAIN:
                self._forget_merged_away(contact_id)


_SHARED_PREFIX = [bytes((n,)) for n in range(256)]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
