"""The parts of the store materialized from topics of their own, each with its offsets in the
same batch as its data: auto-create's join state (``JoinState``), the groups people dismissed
(``DismissedGroups``) and each contact's recent change events (``EventHistory``). A rebuild of
the contacts part leaves them alone, and the other way round."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rocksdict import ReadOptions, WriteBatch

from contacts_streams import model
from contacts_streams.decisions import ERASED_AT
from contacts_streams.store.batch import KnownValues
from contacts_streams.store.layout import (
    _PARTITION,
    _U64,
    CONVERSATION_METADATA,
    DISMISSED,
    DISMISSED_OFFSETS,
    DISMISSED_TOPIC_KEY,
    HISTORY,
    HISTORY_OFFSETS,
    HISTORY_TOPIC_KEY,
    JOIN_OFFSETS,
    JOIN_STATE,
    JOIN_TOPIC_KEY,
    META,
    SEPARATOR,
    Record,
    _is_id,
    _keys,
    _pairs,
    dismissed_key,
)
from contacts_streams.store.pagination import BadCursor, _b64
from contacts_streams.store.storage import Storage

log = logging.getLogger(__name__)

_HISTORY_CURSOR = b"h"
# The legacy column family's keys, by the join state's.
_LEGACY_KEYS = {"contact.display_name": "display_name", "contact.avatar_url": "avatar_url"}


class _TopicPart:
    """A part of the store materialized from a topic of its own (the join state, the dismissed
    groups, the event history): its data family, its offsets family and the key in ``meta`` of
    the topic it was built from. What its ``Materializer`` asks (topic, offsets, count, reset)
    is the same for each; ``apply`` is each part's own."""

    _DATA: str
    _OFFSETS: str
    _TOPIC_KEY: bytes

    def __init__(self, store: Storage):
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


# The operations of a contact's first event ever: their ids are fresh uuid4s (a replayed command
# that repeats one is refused, not published), so nothing of the contact was stored before it.
# An auto-created contact may have a past (its id comes back after a merge or a delete).
FIRST_EVER = frozenset(("created", "imported"))


class EventHistory(_TopicPart):
    """Each contact's recent change events, materialized from the events topic (the same methods
    as ``JoinState``, so a ``Materializer`` feeds it), for ``contacts.history``.

    Kept as long as the topic keeps them (``retention_ms``, set by the service): older ones are
    dropped when the contact's next event comes and never served. An ``erased`` event replaces
    everything before it (it carries nothing personal; what came before does)."""

    _DATA, _OFFSETS, _TOPIC_KEY = HISTORY, HISTORY_OFFSETS, HISTORY_TOPIC_KEY

    retention_ms: int | None = None

    def __init__(self, store: Storage):
        super().__init__(store)
        # The writer's own events: their Avro decode was a tenth of applying them.
        self._known = KnownValues(lambda value: store.event_codec.decode(value))

    def remember(self, value: bytes, event: dict) -> None:
        """Tell the history what event bytes about to be published decode to (as
        ``Store.remember`` for contacts; the caller keeps the dict unchanged)."""
        self._known.remember(value, event)

    # --- what its materializer asks ------------------------------------------------------------

    def _horizon(self) -> int:
        return model.now_ms() - self.retention_ms if self.retention_ms else -1

    def _keys_of(self, prefix: bytes, older_than: int | None = None, it=None) -> list[bytes]:
        """The stored keys of one contact (those older than a time only: they come first).
        `it`: an iterator of the family to seek with, so a batch makes one instead of one a
        contact (making one showed at 4% of the service's time under creates)."""
        if it is None:  # its own, dropped with this frame
            it = self._store._cf[HISTORY].iter(ReadOptions())
        it.seek(prefix)
        found = []
        while it.valid() and it.key().startswith(prefix):
            if older_than is not None and _U64.unpack(it.value()[:8])[0] >= older_than:
                break
            found.append(it.key())
            it.next()
        return found

    def apply(self, topic: str, records: Iterable[Record], on_poison: Callable[[Record, Exception], None] | None = None) -> int:
        store = self._store
        with store._write_lock:
            pending: dict[bytes, bytes | None] = {}
            applied = 0
            next_offsets: dict[int, int] = {}
            touched: set[bytes] = set()
            born: set[bytes] = set()
            erased = False
            for record in records:
                next_offsets[record.partition] = record.offset + 1
                try:
                    if record.value is None:
                        raise ValueError("an event without a value")
                    event = self._known.decode(record.value)
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
                pending[key] = _U64.pack(max(0, at)) + model.json_bytes(event)
                touched.add(prefix)
                if event["operation"] in FIRST_EVER:
                    born.add(prefix)
                applied += 1
            # A contact born in this batch has no stored events to expire: its seek (7% of the
            # service's time under creates at 1M contacts) is skipped.
            touched -= born
            horizon = self._horizon()
            if horizon > 0 and touched:
                # One iterator for the batch: it sees the stored state, as one a contact would
                # (this batch's writes are in `pending` until the write below).
                it = store._cf[HISTORY].iter(ReadOptions())
                for prefix in touched:
                    for key in self._keys_of(prefix, older_than=horizon, it=it):
                        pending[key] = None
                del it
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
