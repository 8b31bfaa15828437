"""The history family on the real RocksDB: a contact's events older than the events topic's
retention go when its next event comes, in a batch that touches many contacts at once (one
iterator serves the whole batch), while other contacts' events stay."""

from __future__ import annotations

import itertools
import uuid

from contacts_streams import events, model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Record, Store

DAY_MS = 86_400_000
_offsets = itertools.count()


def event_record(store: Store, contact_id: str, at_ms: int, operation: str = "updated") -> Record:
    event = events.event_for(contact_id, operation, None, {"display_name": "x"}, actor="a", origin="http", now_ms=at_ms)
    return Record(contact_id_partition(contact_id), next(_offsets), contact_id.encode(), store.event_codec.encode(event), {})


def contact_id_partition(contact_id: str) -> int:
    return int(contact_id[:2], 16) % 3


def operations_kept(store: Store, contact_id: str) -> list[str]:
    return [e["time"] for e in store.history.page(contact_id, None, 100).events]


def test_events_past_the_retention_go_with_the_next_batch_and_only_those(tmp_path):
    store = Store(tmp_path / "store", ContactCodec(), "DE")
    try:
        now = model.now_ms()
        store.history.retention_ms = 7 * DAY_MS
        old, fresh = now - 10 * DAY_MS, now - DAY_MS
        touched = [str(uuid.uuid4()) for _ in range(40)]
        untouched = [str(uuid.uuid4()) for _ in range(10)]
        # Old and fresh events of every contact, written while no retention applies yet.
        store.history.retention_ms = None
        store.history.apply("events", [event_record(store, c, at) for c in touched + untouched for at in (old, fresh)])
        store.history.retention_ms = 7 * DAY_MS
        # One batch with a new event for each touched contact: their old events go.
        store.history.apply("events", [event_record(store, c, now) for c in touched])
        for contact_id in touched:
            assert operations_kept(store, contact_id) == [model.millis_to_iso(now), model.millis_to_iso(fresh)]
        # Never touched again: the old ones remain stored (the page hides them by time).
        for contact_id in untouched:
            prefix = contact_id.encode() + b"\x00"
            assert len(store.history._keys_of(prefix)) == 2
            assert operations_kept(store, contact_id) == [model.millis_to_iso(fresh)]
    finally:
        store.close()


def test_a_contact_born_in_a_batch_keeps_its_events_and_an_auto_created_one_drops_its_old_ones(tmp_path):
    """A created or imported contact's first event has nothing stored before it (fresh ids), so
    the batch skips its expiry; an auto-created id can come back after a delete, and its events
    past the retention still go with its next event."""
    store = Store(tmp_path / "store", ContactCodec(), "DE")
    try:
        now = model.now_ms()
        old = now - 10 * DAY_MS
        came_back = str(uuid.uuid4())
        store.history.apply("events", [event_record(store, came_back, old, "auto_created")])
        store.history.retention_ms = 7 * DAY_MS
        born = [str(uuid.uuid4()) for _ in range(20)]
        batch = [event_record(store, c, now - 1, op) for c, op in zip(born, itertools.cycle(("created", "imported")))]
        batch += [event_record(store, c, now) for c in born[:5]]  # and changed in the same batch
        batch.append(event_record(store, came_back, now, "auto_created"))
        store.history.apply("events", batch)
        for contact_id in born:
            kept = 2 if contact_id in born[:5] else 1
            assert len(store.history._keys_of(contact_id.encode() + b"\x00")) == kept
            assert len(operations_kept(store, contact_id)) == kept
        assert len(store.history._keys_of(came_back.encode() + b"\x00")) == 1
        assert operations_kept(store, came_back) == [model.millis_to_iso(now)]
    finally:
        store.close()


def test_an_event_the_writer_remembered_is_stored_as_one_read_from_the_topic(tmp_path):
    """The writer hands its events to its own store's history with their bytes, so the history
    skips their Avro decode: what it stores and serves is the same either way."""
    stores = [Store(tmp_path / name, ContactCodec(), "DE") for name in ("decoded", "remembered")]
    try:
        contact_id = str(uuid.uuid4())
        before = {"id": contact_id, "display_name": "Ada", "via": {"email": "ada@example.org"}, "metadata": {"n": 1e-05}}
        after = {**before, "display_name": "Ada Lovelace", "metadata": {"n": 0.5, "ü": "ß"}}
        event = events.event_for(contact_id, "updated", before, after, actor="a", origin="http", now_ms=model.now_ms())
        raw = stores[0].event_codec.encode(event)
        stores[1].history.remember(raw, event)
        for store in stores:
            store.history.apply("events", [Record(0, 7, contact_id.encode(), raw, {})])
        stored = [list(store._cf["history"].items()) for store in stores]
        assert stored[0] == stored[1] and len(stored[0]) == 1
        assert stores[1].history.page(contact_id, None, 10).events == [event]
        assert stores[1].history._known.decode(raw) == event  # taken once: decoded again now
    finally:
        for store in stores:
            store.close()
