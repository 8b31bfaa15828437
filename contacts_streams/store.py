"""The RocksDB store materialized from the contacts topic.

Column families (DESIGN.md, "store"):
- ``contacts``: contact id -> the record's value bytes exactly as on the topic, so a store rebuilt
  from the topic equals the old one byte for byte;
- ``conversations``: conversation id + 0x00 + contact id -> b"" (who claims the conversation);
- ``merged``: merged-away id + 0x00 + destination id + 0x00 + ``h`` (from the destination's
  history) or ``t`` (from the merged-away tombstone's header) -> b"";
- ``names``: ``model.sort_key(contact)`` -> contact id, the order of ``contacts.list``;
- ``counters``: ``contacts`` -> number of live contacts, so ``total`` costs one read;
- ``offsets``: partition -> next offset to read, written in the same batch as the data it covers;
- ``meta``: the topic the store was built from (and the join-state topic);
- ``join_state`` / ``join_offsets``: auto-create's join state, materialized from its own
  compacted topic (``<APPLICATION_ID>-conversations``: conversation id -> the JSON value as on
  the topic) with that topic's offsets in the same batch (``JoinState``); a rebuild of the
  contacts part leaves it alone, and the other way round;
- ``conversation_metadata``: the join state as versions before the join-state topic kept it,
  only on the local disk; still read (and written to the topic when auto-create next touches
  the conversation), never written.

Every index changes in the same ``WriteBatch`` as the contact and the offset: a crash leaves the
store at one batch boundary or the next, never between. Every index entry depends on one contact's
latest record only, so the order in which partitions are read (a live store and a rebuild read
them differently) never changes the result; lookups pick the claimant that is still live.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from rocksdict import Options, Rdict, ReadOptions, WriteBatch

from contacts_streams import model
from contacts_streams.serialization import ContactCodec, DecodeError

log = logging.getLogger(__name__)

CONTACTS, CONVERSATIONS, MERGED, NAMES = "contacts", "conversations", "merged", "names"
COUNTERS, OFFSETS, META, CONVERSATION_METADATA = "counters", "offsets", "meta", "conversation_metadata"
JOIN_STATE, JOIN_OFFSETS = "join_state", "join_offsets"
FAMILIES = (CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META, CONVERSATION_METADATA, JOIN_STATE, JOIN_OFFSETS)
# What a rebuild from the contacts topic recreates; the join state comes from its own topic.
TOPIC_STATE = (CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META)

CONTACT_COUNT = b"contacts"
TOPIC_KEY = b"topic"
JOIN_TOPIC_KEY = b"join_topic"
# The legacy column family's keys, by the join state's.
_LEGACY_KEYS = {"contact.display_name": "display_name", "contact.avatar_url": "avatar_url"}
MAX_MERGE_CHAIN = 32
MAX_CLAIMANTS = 64
SEPARATOR = b"\x00"
# Two records may name one merge: distinct keys, so neither's removal takes the other's entry.
FROM_HISTORY, FROM_TOMBSTONE = SEPARATOR + b"h", SEPARATOR + b"t"
KNOWN_LIMIT = 50_000

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PARTITION = struct.Struct(">I")

FORWARD, BACKWARD = b"n", b"p"
# A cursor holds the sort key of the contact at the page's edge. Names are up to
# model.MAX_STRING_LENGTH characters, and case folding and NFKC can make them several times
# longer in UTF-8, so a long name's cursor holds only CURSOR_NAME_BYTES of it, the contact's id
# and a digest of its whole key (see _resolve). Its largest shape, base64-encoded, stays well
# under model.MAX_CURSOR_LENGTH.
CURSOR_NAME_BYTES = 512
_CURSOR_DIGEST_BYTES = 8
_NAMED, _UNNAMED, _LONG_NAMED = b"\x01", b"\x02", b"\x03"
_ID_LENGTH = 36


class StoreError(RuntimeError):
    """The store cannot be opened or is inconsistent; the caller rebuilds it."""


class StoreLocked(RuntimeError):
    """Another process owns the store: never wipe it, stop instead."""


class BadCursor(ValueError):
    """A list cursor this store did not hand out."""


@dataclass(frozen=True)
class Record:
    """One record of the contacts topic as the materializer hands it over."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True)
class Page:
    contacts: list[dict]
    previous_cursor: str | None
    next_cursor: str | None
    total: int


WRITE_BUFFERS_BYTES = 64 * 1024 * 1024


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    # One memtable budget for all column families, or each would take 64 MB of its own.
    options.set_db_write_buffer_size(WRITE_BUFFERS_BYTES)
    return options


class Store:
    """One process owns the store; its threads may read while the materializer writes."""

    def __init__(self, path: str | Path, codec: ContactCodec):
        self.path = Path(path)
        self.codec = codec
        self._write_lock = threading.Lock()
        # Contacts this process just encoded, by their bytes: applying them needs no decode.
        self._known: dict[bytes, dict] = {}
        self._open()
        self.join_state = JoinState(self)

    # --- lifecycle -------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(str(self.path), options=_options(), column_families={f: Options(raw_mode=True) for f in FAMILIES})
        except Exception as err:  # rocksdict raises plain Exception on corruption and lock errors
            if "lock" in str(err).lower():
                raise StoreLocked(f"another process holds the store at {self.path}: {err}") from err
            raise StoreError(f"cannot open the store at {self.path}: {err}") from err
        self._cf = {f: self._db.get_column_family(f) for f in FAMILIES}
        self._handle = {f: self._db.get_column_family_handle(f) for f in FAMILIES}
        try:
            self._verify()
        except Exception as err:
            self.close()
            raise StoreError(f"the store at {self.path} is damaged: {err}") from err

    def _verify(self) -> None:
        """Read every block once: RocksDB opens a store with damaged data blocks without a word,
        and the damage would surface later as failed reads of a service that said it was ready."""
        for family in FAMILIES:
            it = self._cf[family].iter(ReadOptions())
            try:
                it.seek_to_first()
                while it.valid():
                    it.next()
                it.status()  # an iterator stops at damage silently; status() raises it
            finally:
                del it  # a live iterator keeps the database open (and locked) after close()

    def close(self) -> None:
        if self._db is None:
            return
        # Column-family handles keep the database alive: drop them all before close, or a
        # reopen in this process fails on RocksDB's lock.
        self._cf.clear()
        self._handle.clear()
        self._db.close()
        self._db = None

    @classmethod
    def open_or_rebuild(cls, path: str | Path, codec: ContactCodec) -> tuple["Store", str | None]:
        """Open the store; a corrupt one is wiped. Returns the store and why it was wiped, if it was."""
        try:
            return cls(path, codec), None
        except StoreError as err:
            log.warning("store unusable, rebuilding from the topic: %s", err)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, codec), str(err)

    def reset(self) -> None:
        """Forget everything the contacts topic produced (a rebuild follows)."""
        with self._write_lock:
            batch = WriteBatch(raw_mode=True)
            for family in TOPIC_STATE:
                if family == META:
                    continue
                for key in list(self._cf[family].keys()):
                    batch.delete(key, self._handle[family])
            batch.delete(TOPIC_KEY, self._handle[META])
            self._db.write(batch)

    def remember(self, value: bytes, contact: dict) -> None:
        """Tell the store what bytes about to be published decode to (the caller keeps the
        dict unchanged); identical bytes decode identically, so apply can skip the decode."""
        if len(self._known) > KNOWN_LIMIT:  # writes that never came back (failed, timed out)
            self._known.clear()
        self._known[value] = contact

    def _decode_new(self, value: bytes) -> dict:
        known = self._known.pop(value, None)
        return known if known is not None else self.codec.decode_contact(value)

    # --- what the materializer writes ------------------------------------------------------

    def topic(self) -> str | None:
        raw = self._cf[META].get(TOPIC_KEY)
        return raw.decode() if raw is not None else None

    def offsets(self) -> dict[int, int]:
        """partition -> the next offset to read."""
        return {_PARTITION.unpack(k)[0]: _U64.unpack(v)[0] for k, v in self._cf[OFFSETS].items()}

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        """Apply records of the contacts topic and their offsets in one write batch; returns how many were applied."""
        with self._write_lock:
            batch = _Batch(self)
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
            return applied

    # --- reads -----------------------------------------------------------------------------

    def get_bytes(self, contact_id: str) -> bytes | None:
        return self._cf[CONTACTS].get(contact_id.encode())

    def get(self, contact_id: str) -> dict | None:
        raw = self.get_bytes(contact_id)
        return self.codec.decode_contact(raw) if raw is not None else None

    def _claimants(self, family: str, key: str) -> list[str]:
        prefix = key.encode() + SEPARATOR
        it = self._cf[family].iter(ReadOptions())
        it.seek(prefix)
        found = []
        while it.valid() and it.key().startswith(prefix) and len(found) < MAX_CLAIMANTS:
            found.append(it.key()[len(prefix) :].split(SEPARATOR, 1)[0].decode())
            it.next()
        return found

    def contact_id_for_conversation(self, conversation_id: str) -> str | None:
        """The live contact that has this conversation, if any."""
        for contact_id in self._claimants(CONVERSATIONS, conversation_id):
            if self.get_bytes(contact_id) is not None:
                return contact_id
        return None

    def merged_into(self, contact_id: str) -> str | None:
        """Where a merged-away contact lives now (following merges of merges), if it still does."""
        seen, frontier = {contact_id}, [contact_id]
        while frontier and len(seen) < MAX_MERGE_CHAIN:
            current = frontier.pop(0)
            for destination in self._claimants(MERGED, current):
                if destination in seen:
                    continue
                if self.get_bytes(destination) is not None:
                    return destination
                seen.add(destination)
                frontier.append(destination)
        return None

    def count(self) -> int:
        raw = self._cf[COUNTERS].get(CONTACT_COUNT)
        return _I64.unpack(raw)[0] if raw is not None else 0

    def items_bytes(self) -> Iterable[tuple[bytes, bytes]]:
        return self._cf[CONTACTS].items()

    def page(self, cursor: str | None, page_size: int) -> Page:
        """A page of contacts in name order; the cost does not grow with the page's position."""
        direction, after = self._resolve(*_decode_cursor(cursor)) if cursor else (FORWARD, None)
        names = self._cf[NAMES]
        it = names.iter(ReadOptions())
        keys: list[bytes] = []
        ids: list[bytes] = []
        if direction == FORWARD:
            if after is None:
                it.seek_to_first()
            else:
                it.seek(after)
                if it.valid() and it.key() == after:
                    it.next()
            while it.valid() and len(keys) < page_size + 1:
                keys.append(it.key())
                ids.append(it.value())
                it.next()
            more_after = len(keys) > page_size
            keys, ids = keys[:page_size], ids[:page_size]
            more_before = after is not None and self._has_before(keys[0] if keys else after, inclusive=not keys)
        else:
            it.seek_for_prev(after)
            if it.valid() and it.key() == after:
                it.prev()
            while it.valid() and len(keys) < page_size + 1:
                keys.append(it.key())
                ids.append(it.value())
                it.prev()
            more_before = len(keys) > page_size
            keys, ids = keys[:page_size][::-1], ids[:page_size][::-1]
            more_after = self._has_after(keys[-1] if keys else after, inclusive=not keys)
        del it
        contacts = []
        for contact_id in ids:
            raw = self._cf[CONTACTS].get(contact_id)
            if raw is not None:
                contacts.append(self.codec.decode_contact(raw))
        return Page(
            contacts=contacts,
            previous_cursor=_encode_cursor(BACKWARD, keys[0]) if keys and more_before else None,
            next_cursor=_encode_cursor(FORWARD, keys[-1]) if keys and more_after else None,
            total=self.count(),
        )

    def _resolve(self, direction: bytes, cursor_key: bytes) -> tuple[bytes, bytes]:
        """(direction, the names-index key to page from) of a decoded cursor.

        A short name's cursor holds its whole sort key. A long name's holds a prefix of it, the
        contact's id and a digest of the whole key: while the contact keeps that key (the usual
        case), its current key is the exact position. If it was renamed or deleted meanwhile, the
        page starts at the edge of every name sharing the prefix, so paging may show a few
        contacts twice but never skips one.
        """
        if cursor_key[:1] != _LONG_NAMED:
            return direction, cursor_key
        prefix, contact_id, digest = _split_long(cursor_key)
        raw = self._cf[CONTACTS].get(contact_id)
        if raw is not None:
            key = model.sort_key(self.codec.decode_contact(raw))
            if _digest(key) == digest:
                return direction, key
        start = _NAMED + prefix
        # 0xFF never occurs in UTF-8: start + 0xFF sorts after every key beginning with start.
        return direction, start if direction == FORWARD else start + b"\xff"

    def _has_before(self, key: bytes, inclusive: bool) -> bool:
        it = self._cf[NAMES].iter(ReadOptions())
        it.seek_for_prev(key)
        if it.valid() and it.key() == key and not inclusive:
            it.prev()
        return it.valid()

    def _has_after(self, key: bytes, inclusive: bool) -> bool:
        it = self._cf[NAMES].iter(ReadOptions())
        it.seek(key)
        if it.valid() and it.key() == key and not inclusive:
            it.next()
        return it.valid()


class JoinState:
    """Auto-create's join state in the store: what its materializer writes from the join-state
    topic (the same methods the contacts part offers the contacts topic's materializer) and
    what auto-create reads."""

    def __init__(self, store: Store):
        self._store = store

    def get(self, conversation_id: str) -> dict:
        """The conversation's join state as the topic holds it: source, display_name, avatar_url."""
        raw = self._store._cf[JOIN_STATE].get(conversation_id.encode())
        return json.loads(raw) if raw is not None else {}

    def legacy(self, conversation_id: str) -> dict:
        """What a version before the join-state topic kept of the conversation on the local disk."""
        raw = self._store._cf[CONVERSATION_METADATA].get(conversation_id.encode())
        if raw is None:
            return {}
        return {_LEGACY_KEYS[k]: v for k, v in json.loads(raw).items() if k in _LEGACY_KEYS and isinstance(v, str)}

    # --- what its materializer asks ------------------------------------------------------------

    def topic(self) -> str | None:
        raw = self._store._cf[META].get(JOIN_TOPIC_KEY)
        return raw.decode() if raw is not None else None

    def offsets(self) -> dict[int, int]:
        return {_PARTITION.unpack(k)[0]: _U64.unpack(v)[0] for k, v in self._store._cf[JOIN_OFFSETS].items()}

    def count(self) -> int:
        """1 when it holds any join state, else 0 (a store with entries but no offsets is rebuilt)."""
        it = self._store._cf[JOIN_STATE].iter(ReadOptions())
        it.seek_to_first()
        found = it.valid()
        del it
        return int(found)

    def reset(self) -> None:
        store = self._store
        with store._write_lock:
            batch = WriteBatch(raw_mode=True)
            for family in (JOIN_STATE, JOIN_OFFSETS):
                for key in list(store._cf[family].keys()):
                    batch.delete(key, store._handle[family])
            batch.delete(JOIN_TOPIC_KEY, store._handle[META])
            store._db.write(batch)

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        """Apply records of the join-state topic and their offsets in one write batch."""
        store = self._store
        with store._write_lock:
            batch = WriteBatch(raw_mode=True)
            batch.put(JOIN_TOPIC_KEY, topic.encode(), store._handle[META])
            applied = 0
            next_offsets: dict[int, int] = {}
            for record in records:
                next_offsets[record.partition] = record.offset + 1
                try:
                    if record.key is None:
                        raise ValueError("record without a key")
                    if record.value is None:
                        batch.delete(record.key, store._handle[JOIN_STATE])
                    elif not isinstance(json.loads(record.value), dict):
                        raise ValueError("the join state is not a JSON object")
                    else:
                        batch.put(record.key, record.value, store._handle[JOIN_STATE])
                    applied += 1
                except ValueError as err:
                    log.error("skipping a join-state record at partition %s offset %s: %s", record.partition, record.offset, err)
                    if on_poison:
                        on_poison(record, err)
            for partition, offset in next_offsets.items():
                batch.put(_PARTITION.pack(partition), _U64.pack(offset), store._handle[JOIN_OFFSETS])
            store._db.write(batch)
            return applied


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=_CURSOR_DIGEST_BYTES).digest()


def _encode_cursor(direction: bytes, key: bytes) -> str:
    if key[:1] == _NAMED and len(key) > 1 + CURSOR_NAME_BYTES + 1 + _ID_LENGTH:
        contact_id = key[-_ID_LENGTH:]
        key = _LONG_NAMED + key[1 : 1 + CURSOR_NAME_BYTES] + SEPARATOR + contact_id + _digest(key)
    return base64.urlsafe_b64encode(direction + key).decode().rstrip("=")


def _split_long(key: bytes) -> tuple[bytes, bytes, bytes]:
    """(name prefix, contact id, digest) of a long name's cursor key."""
    digest = key[-_CURSOR_DIGEST_BYTES:]
    contact_id = key[-_CURSOR_DIGEST_BYTES - _ID_LENGTH : -_CURSOR_DIGEST_BYTES]
    return key[1 : -_CURSOR_DIGEST_BYTES - _ID_LENGTH - 1], contact_id, digest


def _decode_cursor(cursor: str) -> tuple[bytes, bytes]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise BadCursor("cursor is not a cursor this service handed out") from None
    direction, key = raw[:1], raw[1:]
    if direction not in (FORWARD, BACKWARD) or not _is_cursor_key(key):
        raise BadCursor("cursor is not a cursor this service handed out")
    return direction, key


def _is_id(contact_id: bytes) -> bool:
    return len(contact_id) == _ID_LENGTH and contact_id.count(b"-") == 4


def _is_cursor_key(key: bytes) -> bool:
    # The shapes model.sort_key makes (0x01 + folded name + 0x00 + id, or 0x02 + id) and a long
    # name's (0x03 + CURSOR_NAME_BYTES of the name + 0x00 + id + digest).
    if key[:1] == _NAMED and SEPARATOR in key:
        return _is_id(key.rsplit(SEPARATOR, 1)[1])
    if key[:1] == _UNNAMED:
        return _is_id(key[1:])
    if key[:1] == _LONG_NAMED and len(key) == 1 + CURSOR_NAME_BYTES + 1 + _ID_LENGTH + _CURSOR_DIGEST_BYTES:
        prefix, contact_id, _ = _split_long(key)
        separator = key[1 + CURSOR_NAME_BYTES : 2 + CURSOR_NAME_BYTES]
        return separator == SEPARATOR and SEPARATOR not in prefix and _is_id(contact_id)
    return False


class _Batch:
    """A write batch that reads its own pending writes, so one batch may touch a contact twice."""

    def __init__(self, store: Store):
        self._store = store
        self._batch = WriteBatch(raw_mode=True)
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._count_delta = 0

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

    def write(self) -> None:
        if self._count_delta:
            raw = self.get(COUNTERS, CONTACT_COUNT)
            current = _I64.unpack(raw)[0] if raw is not None else 0
            self.put(COUNTERS, CONTACT_COUNT, _I64.pack(current + self._count_delta))
        self._store._db.write(self._batch)

    def _add_count(self, delta: int) -> None:
        self._count_delta += delta

    def apply(self, record: Record) -> None:
        if record.key is None:
            raise ValueError("record without a key")
        key = record.key
        contact_id = key.decode()
        old_raw = self.get(CONTACTS, key)
        decode = self._store.codec.decode_contact
        old = decode(old_raw) if old_raw is not None else None
        new = self._store._decode_new(record.value) if record.value is not None else None
        if new is not None and new.get("id") != contact_id:
            raise ValueError(f"record key {contact_id} does not match its contact id {new.get('id')}")

        if old is not None:
            self.delete(NAMES, model.sort_key(old))
            for conversation_id in old.get("conversations", {}):
                self.delete(CONVERSATIONS, _pair(conversation_id, contact_id))
            for merged in old.get("merge_history", []):
                if merged.get("id"):
                    self.delete(MERGED, _pair(merged["id"], contact_id) + FROM_HISTORY)

        if new is None:
            if old_raw is not None:
                self.delete(CONTACTS, key)
                self._add_count(-1)
            merged_into = record.headers.get("merged_into")
            if merged_into:
                self.put(MERGED, _pair(contact_id, merged_into) + FROM_TOMBSTONE, b"")
            return

        self.put(CONTACTS, key, record.value)
        if old_raw is None:
            self._add_count(1)
        self.put(NAMES, model.sort_key(new), key)
        for conversation_id in new.get("conversations", {}):
            self.put(CONVERSATIONS, _pair(conversation_id, contact_id), b"")
        for merged in new.get("merge_history", []):
            # The destination's history names every contact merged into it, so the merged-into
            # hint survives compaction of the merged-away tombstones.
            if merged.get("id"):
                self.put(MERGED, _pair(merged["id"], contact_id) + FROM_HISTORY, b"")


def _pair(owner_of: str, contact_id: str) -> bytes:
    return owner_of.encode() + SEPARATOR + contact_id.encode()
