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
  the conversation), never written;
- ``identities``: kind + 0x00 + normalized value + 0x00 + contact id -> b"" (``identities``
  module: from the record's ``identities`` header, computed here only when it has none), for
  ``contacts.lookup`` and ``contacts.duplicates``;
- ``shared``: a 16-byte digest of kind + 0x00 + value -> kind + 0x00 + value, for every identity
  at least two live contacts hold: ``contacts.duplicates`` pages through it instead of scanning
  the contacts. It is a function of the ``identities`` family (recounted, in the batch, for every
  identity the batch touched), so it too ends the same whatever order partitions are read in;
- ``search``: namespace (``w`` words, ``e`` whole emails, ``p`` reversed phone digits) + token +
  0x00 + name part + 0x00 + contact id -> one byte: how many leading characters the token shares
  with the contact's token before it in the same namespace (tokens sorted), so a search knows
  whether an entry is the contact's first match for its term from the entry alone; the name
  part (0x01 + the folded display name's first SEARCH_NAME_CHARS characters, or 0x02 when
  unnamed) orders each token's contacts by name;
- ``derived``: contact id -> JSON ``[identities, search tokens, display name, conversation ids,
  merged-away ids]``, what every index entry of the contact is made of: a later record of the
  contact removes exactly those entries (the header it came with is gone by then) and writes
  only the entries that changed, without decoding the record it replaces. It is there exactly
  while the contact is live;
- ``dismissed`` / ``dismissed_offsets``: groups people said are not duplicates (sorted contact
  ids joined by ``,`` -> b""), from the ``<APPLICATION_ID>-dismissed`` topic (``DismissedGroups``);
- ``history`` / ``history_offsets``: each contact's recent change events, from the events topic
  (``EventHistory``): contact id + 0x00 + partition (4 bytes) + offset (8 bytes) -> the event's
  time in ms (8 bytes) + the event as compact JSON, so a contact's events are one key range in
  topic order;
- ``erased``: contact id -> when its ``erased`` tombstone was written (ms, 8 bytes), nothing
  personal: the writer appends the tombstone again once the topic's ``segment.ms`` has passed,
  so the partition's segment rolls and compaction can drop what the id held.

An ``erased`` tombstone (contacts.erase) removes what any tombstone removes and the merged-into
hints of its id; then the store compacts every column family that can hold personal data
(``compact_personal``), so no SST file, write-ahead log or MANIFEST keeps the erased bytes.

``meta`` holds the store's format (``FORMAT``): a store written by a version with other indexes is
emptied of everything the contacts topic determines when opened, so the materializer rebuilds it
(indexes included) from the topic's beginning; the join state stays.

Every index changes in the same ``WriteBatch`` as the contact and the offset: a crash leaves the
store at one batch boundary or the next, never between. Every index entry depends on one contact's
latest record only, so the order in which partitions are read (a live store and a rebuild read
them differently) never changes the result; lookups pick the claimant that is still live.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from rocksdict import BottommostLevelCompaction, CompactOptions, Options, Rdict, ReadOptions, WriteBatch

from contacts_streams import identities as ids_module
from contacts_streams import model
from contacts_streams.decisions import ERASED as ERASED_OPERATION
from contacts_streams.decisions import ERASED_AT, LIVE_AGAIN
from contacts_streams.events import EventCodec
from contacts_streams.serialization import ContactCodec, DecodeError

log = logging.getLogger(__name__)

CONTACTS, CONVERSATIONS, MERGED, NAMES = "contacts", "conversations", "merged", "names"
COUNTERS, OFFSETS, META, CONVERSATION_METADATA = "counters", "offsets", "meta", "conversation_metadata"
JOIN_STATE, JOIN_OFFSETS = "join_state", "join_offsets"
IDENTITIES, SHARED, SEARCH, DERIVED = "identities", "shared", "search", "derived"
DISMISSED, DISMISSED_OFFSETS, ERASED = "dismissed", "dismissed_offsets", "erased"
HISTORY, HISTORY_OFFSETS = "history", "history_offsets"
FAMILIES = (
    CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META, CONVERSATION_METADATA, JOIN_STATE, JOIN_OFFSETS,
    IDENTITIES, SHARED, SEARCH, DERIVED, DISMISSED, DISMISSED_OFFSETS, ERASED, HISTORY, HISTORY_OFFSETS,
)  # fmt: skip
# What a rebuild from the contacts topic recreates; the join state and the dismissed groups come
# from their own topics.
TOPIC_STATE = (CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META, IDENTITIES, SHARED, SEARCH, DERIVED, ERASED)
# The families whose keys or values can hold personal data (names, e-mails, phones, whole
# contacts, join state), compacted after an erase. Whole families, not the erased keys' ranges:
# an update long ago deleted index keys (an old e-mail, an old name's words) that the erase no
# longer knows, and their deletes and values may still sit in SST files.
PERSONAL = (
    CONTACTS,
    NAMES,
    IDENTITIES,
    SHARED,
    SEARCH,
    DERIVED,
    CONVERSATIONS,
    MERGED,
    JOIN_STATE,
    CONVERSATION_METADATA,
    HISTORY,
)
# 1: contacts, conversations, merged, names, counters. 2: identities, shared, search, derived.
# 3: whole emails in a search namespace of their own, no local-part token, search entries valued
# with their shared prefix, derived entries holding all a contact's index entries come from.
FORMAT = b"3"
FORMAT_KEY = b"format"
DISMISSED_TOPIC_KEY = b"dismissed_topic"
HISTORY_TOPIC_KEY = b"history_topic"
SEARCH_NAME_CHARS = 32
SEARCH_SCAN = 5000
SEARCH_COUNT = 1000
DUPLICATES_SCAN = 1000
MAX_GROUP = 100
MAX_LOOKUP = 1000
_SEARCH_CURSOR, _DUPLICATES_CURSOR, _HISTORY_CURSOR = b"s", b"d", b"h"
# A search cursor with the total its first page counted (4 bytes after the key): later pages
# do not count again. Cursors of the first kind (no total) are still read.
_SEARCH_TOTAL_CURSOR = b"t"
_TOTAL = struct.Struct(">I")

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


@dataclass(frozen=True)
class Group:
    """Live contacts that share identities: ``reasons`` are those identities, the one the group
    was found by first."""

    ids: tuple[str, ...]
    contacts: list[dict]
    reasons: list[tuple[str, str]]


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
    timestamp: int = 0  # ms


@dataclass(frozen=True)
class Page:
    contacts: list[dict]
    previous_cursor: str | None
    next_cursor: str | None
    total: int


WRITE_BUFFERS_BYTES = 64 * 1024 * 1024
# The MANIFEST records each SST file's smallest and largest key (an index key holds an e-mail, a
# name) and keeps every record until it rolls over (1 GB by default): roll it at every change of
# the file set, so a compaction's new MANIFEST names only the files that are left. It is small
# (a few hundred bytes a file) and changes only on flushes and compactions.
MANIFEST_ROLL_BYTES = 1


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    # One memtable budget for all column families, or each would take 64 MB of its own.
    options.set_db_write_buffer_size(WRITE_BUFFERS_BYTES)
    options.set_max_manifest_file_size(MANIFEST_ROLL_BYTES)
    return options


# Every family is in raw mode, so keys and values are bytes; rocksdict's stubs type them for
# every mode (str, int, float, bytes, bool). An Rdict is not iterable by its keys: `for k in
# family` indexes it with 0, 1, ... and fails, so keys() it is.
def _pairs(family: Rdict, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    items = family.items() if from_key is None else family.items(from_key=from_key)
    return cast(Iterator[tuple[bytes, bytes]], items)


def _keys(family: Rdict) -> Iterator[bytes]:
    return cast(Iterator[bytes], family.keys())


class Store:
    """One process owns the store; its threads may read while the materializer writes."""

    def __init__(
        self, path: str | Path, codec: ContactCodec, phone_region: str | None = None, event_codec: EventCodec | None = None
    ):
        self.path = Path(path)
        self.codec = codec
        self.event_codec = event_codec or EventCodec(subject=None)
        # For records without the identities header only (see the identities module).
        self.phone_region = phone_region
        self.upgraded_from: str | None = None
        self._write_lock = threading.Lock()
        # Contacts this process just encoded, by their bytes: applying them needs no decode.
        self._known: dict[bytes, dict] = {}
        # compact_personal runs on a thread of its own (an erase's apply never waits for it);
        # requests that come while it runs are served by one more run.
        self._compaction = threading.Condition()
        self._compaction_wanted = False
        self._compaction_thread: threading.Thread | None = None
        self.compactions = 0  # runs finished
        self.compactions_requested = 0
        self._open()
        self._upgrade()
        self.join_state = JoinState(self)
        self.dismissed = DismissedGroups(self)
        self.history = EventHistory(self)

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

    def _upgrade(self) -> None:
        """A store of another format loses what the contacts topic determines: the materializer
        finds no offsets and reads the topic from its beginning, building every index."""
        found = self._cf[META].get(FORMAT_KEY)
        if found == FORMAT:
            return
        if found is not None or self.count() or self.offsets():
            self.upgraded_from = (found or b"1").decode()
            log.warning(
                "the store at %s has format %s, this version writes %s: rebuilding it from the topic",
                self.path,
                self.upgraded_from,
                FORMAT.decode(),
            )
            self.reset()
        self._cf[META][FORMAT_KEY] = FORMAT

    def close(self) -> None:
        if self._db is None:
            return  # type: ignore[unreachable]  # typed as open: None only once closed, as here
        with self._compaction:
            self._compaction_wanted = False
            thread = self._compaction_thread
        if thread is not None:
            thread.join()  # a compaction in progress ends first: never cut off halfway
        # Column-family handles keep the database alive: drop them all before close, or a
        # reopen in this process fails on RocksDB's lock.
        self._cf.clear()
        self._handle.clear()
        self._db.close()
        self._db = None  # type: ignore[assignment]  # see above

    @classmethod
    def open_or_rebuild(
        cls, path: str | Path, codec: ContactCodec, phone_region: str | None = None, event_codec: EventCodec | None = None
    ) -> tuple[Store, str | None]:
        """Open the store; a corrupt one is wiped. Returns the store and why it was wiped, if it was."""
        try:
            return cls(path, codec, phone_region, event_codec), None
        except StoreError as err:
            log.warning("store unusable, rebuilding from the topic: %s", err)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, codec, phone_region, event_codec), str(err)

    def reset(self) -> None:
        """Forget everything the contacts topic produced (a rebuild follows)."""
        with self._write_lock:
            batch = WriteBatch(raw_mode=True)
            for family in TOPIC_STATE:
                if family == META:
                    continue
                for key in _keys(self._cf[family]):
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
        return known if known is not None else self.codec.decode_indexable(value)

    # --- what the materializer writes ------------------------------------------------------

    def topic(self) -> str | None:
        raw = self._cf[META].get(TOPIC_KEY)
        return raw.decode() if raw is not None else None

    def offsets(self) -> dict[int, int]:
        """partition -> the next offset to read."""
        return {_PARTITION.unpack(k)[0]: _U64.unpack(v)[0] for k, v in _pairs(self._cf[OFFSETS])}

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
        if batch.erased:
            self.request_compaction()
        return applied

    # --- erase -------------------------------------------------------------------------------

    def erased(self) -> list[tuple[str, int]]:
        """(contact id, when its erased tombstone was written in ms) of every erased id that
        has not come back (an auto-created id whose conversation got a new message)."""
        return [(k.decode(), _U64.unpack(v)[0]) for k, v in _pairs(self._cf[ERASED])]

    def request_compaction(self) -> None:
        """Compact the personal families soon, on a thread of its own (see compact_personal)."""
        with self._compaction:
            self._compaction_wanted = True
            self.compactions_requested += 1
            if self._compaction_thread is None:
                self._compaction_thread = threading.Thread(
                    target=self._compact_while_wanted, name="store-compaction", daemon=True
                )
                self._compaction_thread.start()

    def wait_compacted(self, timeout: float) -> bool:
        """Wait until every compaction requested so far has run."""
        deadline = time.monotonic() + timeout
        with self._compaction:
            while self._compaction_wanted or self._compaction_thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._compaction.wait(left)
            return True

    def _compact_while_wanted(self) -> None:
        while True:
            with self._compaction:
                if not self._compaction_wanted or self._db is None:
                    self._compaction_wanted = False
                    self._compaction_thread = None
                    self._compaction.notify_all()
                    return
                self._compaction_wanted = False
            try:
                self.compact_personal()
            except Exception:  # a store that cannot compact is still a store: say so, go on
                log.exception("compacting the store after an erase failed")
            with self._compaction:
                self.compactions += 1
                self._compaction.notify_all()

    def compact_personal(self) -> None:
        """Make RocksDB let go of deleted bytes: a delete only writes a tombstone, and the old
        key and value stay in SST files until a compaction drops both, and in the write-ahead
        log until every family's memtable that holds them is flushed. So: flush every family
        (the WAL files of the erased writes become obsolete and are deleted), compact each
        personal family to its last level (bottommost forced: no level keeps a dropped value),
        then flush the WAL. Whole-family compactions log no keys (RocksDB's LOG names a manual
        compaction's key range)."""
        started = time.monotonic()
        options = CompactOptions()
        options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        options.set_exclusive_manual_compaction(False)
        for family in FAMILIES:
            self._cf[family].flush()
        for family in PERSONAL:
            self._cf[family].compact_range(None, None, options)
        self._db.flush_wal(True)
        log.info("store compacted after an erase in %.2fs", time.monotonic() - started)

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
        found: list[str] = []
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
        return _pairs(self._cf[CONTACTS])

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
            assert after is not None, "a backward page comes from a cursor"
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

    # --- finding people ----------------------------------------------------------------------

    def indexed(self, contact_id: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(identities, search tokens) as indexed for a live contact; empty for any other id."""
        raw = self._cf[DERIVED].get(contact_id.encode())
        if raw is None:
            return [], []
        identities, tokens = json.loads(raw)[:2]
        return [tuple(p) for p in identities], [tuple(p) for p in tokens]

    def holders(self, kind: str, value: str, limit: int = MAX_GROUP) -> list[str]:
        """Ids of the live contacts that have this normalized identity (at most ``limit``)."""
        prefix = identity_prefix(kind, value)
        it = self._cf[IDENTITIES].iter(ReadOptions())
        it.seek(prefix)
        found: list[str] = []
        while it.valid() and it.key().startswith(prefix) and len(found) < limit:
            found.append(it.key()[len(prefix) :].decode())
            it.next()
        del it
        return found

    def lookup(self, identities: list[tuple[str, str]], limit: int = MAX_LOOKUP) -> list[dict]:
        """The live contacts that have every one of these normalized identities."""
        if not identities:
            return []
        candidates: set[str] | None = None
        for kind, value in identities:
            held = set(self.holders(kind, value, limit))
            candidates = held if candidates is None else candidates & held
            if not candidates:
                return []
        found = [c for c in (self.get(contact_id) for contact_id in sorted(candidates or ())) if c is not None]
        return sorted(found, key=model.sort_key)

    def search(self, terms: list[tuple[str, str]], cursor: str | None, page_size: int) -> Page:
        """A page of the contacts that match every term by prefix (``identities.query_terms``).

        The store walks the first term's entries of the search family from the cursor: that
        term's exact matches by name, then its longer tokens, each by name. A contact found by
        several tokens shows where the first of them is (so it is on one page only), and the other
        terms are checked against the contact's own tokens. A page reads at most SEARCH_SCAN
        entries, wherever it starts, so its cost does not grow with the store; a query whose
        terms rarely meet may get a short page with a next cursor. ``total`` counts the contacts
        among the first term's first SEARCH_COUNT entries: exact for one term with fewer
        matches, else an estimate (an upper one for several terms, SEARCH_COUNT at most); the
        first page counts it and its cursors carry it on.
        """
        if not terms:
            return Page([], None, None, 0)
        namespace, term = terms[0]
        term = term[: ids_module.MAX_TOKEN_CHARS]
        prefix = search_prefix(namespace, term)
        start = prefix
        total = None
        if cursor:
            start, total = _decode_search_cursor(cursor)
            if not start.startswith(prefix):
                raise BadCursor("cursor belongs to another query")
        found: list[dict] = []
        last: bytes | None = None
        more = False
        scanned = 0
        short = len(term)
        for entry, value in _pairs(self._cf[SEARCH], from_key=start):
            if cursor and entry == start:
                continue  # the cursor's own entry was on the page before
            if not entry.startswith(prefix):
                break
            if len(found) == page_size or scanned == SEARCH_SCAN:
                more = True
                break
            scanned += 1
            last = entry
            # The entry's value: how many characters its token shares with the contact's token
            # before it. As long as the term or longer, that token matches too: the contact is
            # shown there, not here.
            if value[0] >= short:
                continue
            contact_id = entry[-_ID_LENGTH:].decode()
            if len(terms) > 1:
                _identities, tokens = self.indexed(contact_id)
                if not all(
                    any(n == other_ns and t.startswith(other[: ids_module.MAX_TOKEN_CHARS]) for n, t in tokens)
                    for other_ns, other in terms[1:]
                ):
                    continue
            contact = self.get(contact_id)
            if contact is not None:
                found.append(contact)
        if total is None:
            total = self._search_total(prefix, len(term))
        next_cursor = _encode_search_cursor(last, total) if more and last is not None else None
        return Page(found, None, next_cursor, total)

    def _search_total(self, prefix: bytes, term_length: int) -> int:
        """The contacts among the first SEARCH_COUNT entries of a term: each contact has one
        entry whose value (the characters shared with the contact's token before it) is
        shorter than the term, its first match."""
        options = ReadOptions()
        # 0xFF never occurs in UTF-8: every key that starts with the prefix sorts before this.
        options.set_iterate_upper_bound(prefix + b"\xff")
        values = self._cf[SEARCH].values(from_key=prefix, read_opt=options)
        return sum(1 for value in itertools.islice(values, SEARCH_COUNT) if value[0] < term_length)

    def duplicates(self, cursor: str | None, page_size: int) -> tuple[list[Group], str | None]:
        """A page of duplicate groups (one per shared identity) and the next page's cursor.

        The shared family holds only identities that two live contacts have, so a page reads
        about page_size of them, not the contacts; groups people dismissed, and groups another
        identity already names (same contacts), are passed over, at most DUPLICATES_SCAN a page.
        """
        after = _decode_duplicates_cursor(cursor) if cursor else None
        it = self._cf[SHARED].iter(ReadOptions())
        if after is None:
            it.seek_to_first()
        else:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        groups: list[Group] = []
        last, more, scanned = None, False, 0
        while it.valid():
            if len(groups) == page_size or scanned == DUPLICATES_SCAN:
                more = True
                break
            scanned += 1
            last = it.key()
            kind, value = it.value().decode().split("\x00", 1)
            it.next()
            group = self.group(kind, value)
            if group is not None:
                groups.append(group)
        del it
        return groups, (_encode_duplicates_cursor(last) if more and last is not None else None)

    def groups_of(self, contact_id: str) -> list[Group]:
        """The duplicate groups a live contact is in."""
        identities, _tokens = self.indexed(contact_id)
        groups: list[Group] = []
        for kind, value in identities:
            group = self.group(kind, value)
            if group is not None and not any(g.ids == group.ids for g in groups):
                groups.append(group)
        return groups

    def group(self, kind: str, value: str) -> Group | None:
        """The group of live contacts sharing this identity, with every identity they all share;
        None when fewer than two share it, when it was dismissed, or when another identity they
        share names the same group first (one group per set of contacts)."""
        ids = sorted(self.holders(kind, value))
        if len(ids) < 2 or ids in self.dismissed:
            return None
        contacts = [c for c in (self.get(i) for i in ids) if c is not None]
        if len(contacts) < 2:
            return None
        shared = set(self.indexed(ids[0])[0])
        for other in ids[1:]:
            shared &= set(self.indexed(other)[0])
        mine = _digest16(f"{kind}\x00{value}".encode())
        for other_kind, other_value in shared:
            if (other_kind, other_value) == (kind, value):
                continue
            if (
                _digest16(f"{other_kind}\x00{other_value}".encode()) < mine
                and sorted(self.holders(other_kind, other_value)) == ids
            ):
                return None
        reasons = [(kind, value)] + sorted(shared - {(kind, value)})
        return Group(tuple(ids), contacts, reasons)


class _TopicPart:
    """A part of the store materialized from a topic of its own (the join state, the dismissed
    groups, the event history): its data family, its offsets family and the key in ``meta`` of
    the topic it was built from. What its ``Materializer`` asks (topic, offsets, count, reset)
    is the same for each; ``apply`` is each part's own."""

    _DATA: str
    _OFFSETS: str
    _TOPIC_KEY: bytes

    def __init__(self, store: Store):
        self._store = store

    def topic(self) -> str | None:
        raw = self._store._cf[META].get(self._TOPIC_KEY)
        return raw.decode() if raw is not None else None

    def offsets(self) -> dict[int, int]:
        return {_PARTITION.unpack(k)[0]: _U64.unpack(v)[0] for k, v in _pairs(self._store._cf[self._OFFSETS])}

    def count(self) -> int:
        """1 when it holds any entry, else 0 (a part with entries but no offsets is rebuilt)."""
        it = self._store._cf[self._DATA].iter(ReadOptions())
        it.seek_to_first()
        found = it.valid()
        del it
        return int(found)

    def reset(self) -> None:
        store = self._store
        with store._write_lock:
            batch = WriteBatch(raw_mode=True)
            for family in (self._DATA, self._OFFSETS):
                for key in list(store._cf[family].keys()):
                    batch.delete(key, store._handle[family])
            batch.delete(self._TOPIC_KEY, store._handle[META])
            store._db.write(batch)


class JoinState(_TopicPart):
    """Auto-create's join state in the store: what its materializer writes from the join-state
    topic (the same methods the contacts part offers the contacts topic's materializer) and
    what auto-create reads."""

    _DATA, _OFFSETS, _TOPIC_KEY = JOIN_STATE, JOIN_OFFSETS, JOIN_TOPIC_KEY

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

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        """Apply records of the join-state topic and their offsets in one write batch."""
        store = self._store
        with store._write_lock:
            batch = WriteBatch(raw_mode=True)
            batch.put(JOIN_TOPIC_KEY, topic.encode(), store._handle[META])
            erased = False
            applied = 0
            next_offsets: dict[int, int] = {}
            for record in records:
                next_offsets[record.partition] = record.offset + 1
                try:
                    if record.key is None:
                        raise ValueError("record without a key")
                    if record.value is None:
                        batch.delete(record.key, store._handle[JOIN_STATE])
                        applied += 1
                        continue
                    state = json.loads(record.value)
                    if not isinstance(state, dict):
                        raise ValueError("the join state is not a JSON object")
                    if ERASED_AT in state and store._cf[JOIN_STATE].get(record.key) != record.value:
                        # The conversation's contact was erased: what was known of it goes from
                        # the disk too (a marker written again changes nothing).
                        batch.delete(record.key, store._handle[CONVERSATION_METADATA])
                        erased = True
                    batch.put(record.key, record.value, store._handle[JOIN_STATE])
                    applied += 1
                except ValueError as err:
                    log.error("skipping a join-state record at partition %s offset %s: %s", record.partition, record.offset, err)
                    if on_poison:
                        on_poison(record, err)
            for partition, offset in next_offsets.items():
                batch.put(_PARTITION.pack(partition), _U64.pack(offset), store._handle[JOIN_OFFSETS])
            store._db.write(batch)
        if erased:
            store.request_compaction()
        return applied


class DismissedGroups(_TopicPart):
    """Groups people said are not duplicates, materialized from the ``<APPLICATION_ID>-dismissed``
    topic (key: ``dismissed_key`` of the group; a value dismisses it, a tombstone offers it
    again) with the same methods as ``JoinState``, so a ``Materializer`` can feed it."""

    _DATA, _OFFSETS, _TOPIC_KEY = DISMISSED, DISMISSED_OFFSETS, DISMISSED_TOPIC_KEY

    def __contains__(self, contact_ids: Iterable[str]) -> bool:
        return self._store._cf[DISMISSED].get(dismissed_key(contact_ids)) is not None

    def groups_with(self, contact_ids: Iterable[str]) -> list[bytes]:
        """The keys of the dismissed groups that name any of these ids (a scan: erases are rare,
        and the family holds contact ids only)."""
        wanted = {c.lower() for c in contact_ids}
        return [key for key in _keys(self._store._cf[DISMISSED]) if wanted & set(key.decode().split(","))]

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        store = self._store
        with store._write_lock:
            batch = WriteBatch(raw_mode=True)
            batch.put(DISMISSED_TOPIC_KEY, topic.encode(), store._handle[META])
            applied = 0
            next_offsets: dict[int, int] = {}
            for record in records:
                next_offsets[record.partition] = record.offset + 1
                try:
                    ids = record.key.decode().split(",") if record.key else []
                    if len(ids) < 2 or not all(_is_id(i.encode()) for i in ids) or dismissed_key(ids) != record.key:
                        raise ValueError("the key is not two or more sorted contact ids joined by ','")
                    if record.value is None:
                        batch.delete(record.key, store._handle[DISMISSED])
                    else:
                        batch.put(record.key, b"", store._handle[DISMISSED])
                    applied += 1
                except (ValueError, UnicodeDecodeError) as err:
                    log.error(
                        "skipping a dismissed-group record at partition %s offset %s: %s", record.partition, record.offset, err
                    )
                    if on_poison:
                        on_poison(record, err)
            for partition, offset in next_offsets.items():
                batch.put(_PARTITION.pack(partition), _U64.pack(offset), store._handle[DISMISSED_OFFSETS])
            store._db.write(batch)
            return applied


@dataclass(frozen=True)
class HistoryPage:
    events: list[dict]
    next_cursor: str | None


class EventHistory(_TopicPart):
    """Each contact's recent change events, materialized from the events topic (the same methods
    as ``JoinState``, so a ``Materializer`` feeds it), for ``contacts.history``.

    Kept as long as the topic keeps them (``retention_ms``, set by the service): older ones are
    dropped when the contact's next event comes and never served. An ``erased`` event replaces
    everything before it (it carries nothing personal; what came before does)."""

    _DATA, _OFFSETS, _TOPIC_KEY = HISTORY, HISTORY_OFFSETS, HISTORY_TOPIC_KEY

    retention_ms: int | None = None

    # --- what its materializer asks ------------------------------------------------------------

    def _horizon(self) -> int:
        return model.now_ms() - self.retention_ms if self.retention_ms else -1

    def _keys_of(self, prefix: bytes, older_than: int | None = None) -> list[bytes]:
        """The stored keys of one contact (those older than a time only: they come first)."""
        it = self._store._cf[HISTORY].iter(ReadOptions())
        it.seek(prefix)
        found = []
        while it.valid() and it.key().startswith(prefix):
            if older_than is not None and _U64.unpack(it.value()[:8])[0] >= older_than:
                break
            found.append(it.key())
            it.next()
        del it
        return found

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        store = self._store
        with store._write_lock:
            pending: dict[bytes, bytes | None] = {}
            applied = 0
            next_offsets: dict[int, int] = {}
            touched: set[bytes] = set()
            erased = False
            for record in records:
                next_offsets[record.partition] = record.offset + 1
                try:
                    if record.value is None:
                        raise ValueError("an event without a value")
                    event = store.event_codec.decode(record.value)
                    contact_id = str(event["contact_id"])
                    if record.key is not None and record.key.decode() != contact_id:
                        raise ValueError(f"record key {record.key!r} does not match the event's contact {contact_id}")
                    at = model.iso_to_millis(event["time"])
                except Exception as err:  # any undecodable event is skipped, never a stalled partition
                    log.error("skipping a change event at partition %s offset %s: %s", record.partition, record.offset, err)
                    if on_poison:
                        on_poison(record, err)
                    continue
                prefix = contact_id.encode() + SEPARATOR
                if event["operation"] == "erased":
                    erased = True
                    for key in self._keys_of(prefix):
                        pending[key] = None
                    for key in [k for k in pending if k.startswith(prefix)]:
                        pending[key] = None
                key = prefix + _PARTITION.pack(record.partition) + _U64.pack(record.offset)
                pending[key] = _U64.pack(max(0, at)) + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
                touched.add(prefix)
                applied += 1
            horizon = self._horizon()
            if horizon > 0:
                for prefix in touched:
                    for key in self._keys_of(prefix, older_than=horizon):
                        pending[key] = None
            batch = WriteBatch(raw_mode=True)
            batch.put(HISTORY_TOPIC_KEY, topic.encode(), store._handle[META])
            handle = store._handle[HISTORY]
            for key, value in pending.items():
                if value is None:
                    batch.delete(key, handle)
                else:
                    batch.put(key, value, handle)
            for partition, offset in next_offsets.items():
                batch.put(_PARTITION.pack(partition), _U64.pack(offset), store._handle[HISTORY_OFFSETS])
            store._db.write(batch)
        if erased:  # the erased events' old values stay in SST files until a compaction
            store.request_compaction()
        return applied

    # --- reads ---------------------------------------------------------------------------------

    def has_events(self, contact_id: str) -> bool:
        return bool(self.page(contact_id, None, 1).events)

    def page(self, contact_id: str, cursor: str | None, page_size: int) -> HistoryPage:
        """A page of a contact's events, newest first, within the retention."""
        prefix = contact_id.encode() + SEPARATOR
        if cursor:
            raw = _b64(cursor)
            if raw[:1] != _HISTORY_CURSOR or len(raw) != 13:
                raise BadCursor("cursor is not a cursor this service handed out")
            start = prefix + raw[1:]
        else:
            start = prefix + b"\xff" * 12
        horizon = self._horizon()
        it = self._store._cf[HISTORY].iter(ReadOptions())
        it.seek_for_prev(start)
        if cursor and it.valid() and it.key() == start:
            it.prev()
        found: list[dict] = []
        last: bytes | None = None
        more = False
        while it.valid() and it.key().startswith(prefix):
            value = it.value()
            if _U64.unpack(value[:8])[0] < horizon:
                break  # older ones are older still
            if len(found) == page_size:
                more = True
                break
            found.append(json.loads(value[8:]))
            last = it.key()
            it.prev()
        del it
        next_cursor = (
            base64.urlsafe_b64encode(_HISTORY_CURSOR + last[len(prefix) :]).decode().rstrip("=") if more and last else None
        )
        return HistoryPage(found, next_cursor)


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


def _encode_search_cursor(key: bytes, total: int) -> str:
    return base64.urlsafe_b64encode(_SEARCH_TOTAL_CURSOR + key + _TOTAL.pack(total)).decode().rstrip("=")


def _decode_search_cursor(cursor: str) -> tuple[bytes, int | None]:
    """(the key to page from, the total of the first page if the cursor carries it)."""
    raw = _b64(cursor)
    kind, key, total = raw[:1], raw[1:], None
    if kind == _SEARCH_TOTAL_CURSOR and len(key) > _TOTAL.size:
        key, (total,) = key[: -_TOTAL.size], _TOTAL.unpack(key[-_TOTAL.size :])
    elif kind != _SEARCH_CURSOR:
        raise BadCursor("cursor is not a cursor this service handed out")
    if (
        key.count(SEPARATOR) != 2
        or not _is_id(key[-_ID_LENGTH:])
        or key[-_ID_LENGTH - 1 : -_ID_LENGTH] != SEPARATOR
        or (total or 0) > SEARCH_COUNT
    ):
        raise BadCursor("cursor is not a cursor this service handed out")
    return key, total


def _encode_duplicates_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(_DUPLICATES_CURSOR + key).decode().rstrip("=")


def _decode_duplicates_cursor(cursor: str) -> bytes:
    raw = _b64(cursor)
    if raw[:1] != _DUPLICATES_CURSOR or len(raw) != 17:
        raise BadCursor("cursor is not a cursor this service handed out")
    return raw[1:]


def _b64(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise BadCursor("cursor is not a cursor this service handed out") from None


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
    return model.is_uuid(contact_id)


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
        # identity prefix (kind + 0x00 + value + 0x00) -> contact id -> held after this batch?
        self._identity_changes: dict[bytes, dict[bytes, bool]] = {}
        # contact id -> the merged-into hints its tombstones put in this batch
        self._tombstone_hints: dict[str, set[bytes]] = {}
        # An erased tombstone removed something: the store compacts once the batch is written.
        self.erased = False

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
        for kind, value in identities:
            entries[(IDENTITIES, kind.encode() + SEPARATOR + value.encode() + SEPARATOR + key)] = b""
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
        new = self._store._decode_new(record.value) if record.value is not None else None
        if new is not None and new.get("id") != contact_id:
            raise ValueError(f"record key {contact_id} does not match its contact id {new.get('id')}")
        new_derived, new_entries = self._derive(key, new, record.headers) if new is not None else (None, {})
        old_entries = self._entries(key, json.loads(old_derived)) if old_derived is not None else {}

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
                self.erased = self.erased or old_derived is not None
                return
            merged_into = record.headers.get("merged_into")
            if merged_into:
                self._put_index(MERGED, _pair(contact_id, merged_into) + FROM_TOMBSTONE, b"")
                self._tombstone_hints.setdefault(contact_id, set()).add(_pair(contact_id, merged_into) + FROM_TOMBSTONE)
            return

        assert record.value is not None  # a tombstone decodes to no contact, handled above
        self.put(CONTACTS, key, record.value)
        self.put(DERIVED, key, json.dumps(new_derived, ensure_ascii=False, separators=(",", ":")).encode())
        if self.get(ERASED, key) is not None:
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


def _pair(owner_of: str, contact_id: str) -> bytes:
    return owner_of.encode() + SEPARATOR + contact_id.encode()


def identity_prefix(kind: str, value: str) -> bytes:
    """The identities family's keys of one identity start with this."""
    return kind.encode() + SEPARATOR + value.encode() + SEPARATOR


def search_prefix(namespace: str, term: str) -> bytes:
    return namespace.encode() + term[: ids_module.MAX_TOKEN_CHARS].encode()


def search_name(contact: dict) -> bytes:
    """What orders one token's contacts: the folded display name's start, unnamed last."""
    name = contact.get("display_name")
    folded = ids_module.fold(name)[:SEARCH_NAME_CHARS] if isinstance(name, str) else ""
    return _NAMED + folded.encode() if folded else _UNNAMED


def _digest16(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def dismissed_key(contact_ids: Iterable[str]) -> bytes:
    """The dismissed groups' key of a group: its contact ids, lowercase, sorted, joined by ","."""
    return ",".join(sorted({c.lower() for c in contact_ids})).encode()
