"""The families read by key keep a Bloom filter in their table files (a rebuild reads the derived
entry of every new contact, almost all of them absent), and a store written before the filters
existed opens as it is: same contents, same offsets, no rebuild."""

from __future__ import annotations

import uuid
from pathlib import Path

from rocksdict import Options

from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Record, Store, storage
from contacts_streams.store.layout import CONTACTS, DERIVED, SEARCH, TOPIC_STATE

CODEC = ContactCodec()
T0 = 1_700_000_000_000
# RocksDB names the filter policy in each table file's meta-index block.
FILTER_NAME = b"filter.rocksdb.BuiltinBloomFilter"


def records(count: int) -> list[Record]:
    contacts = [
        model.new_contact(
            {"display_name": f"Person {i}", "via": {"email": f"p{i}@example.org", "phone": f"+4930{i:07d}"}},
            str(uuid.uuid4()),
            T0,
        )
        for i in range(count)
    ]
    return [Record(0, i, c["id"].encode(), CODEC.encode_contact(c), {"operation": "created"}, T0) for i, c in enumerate(contacts)]


def flushed(store: Store) -> dict[str, list[Path]]:
    """Flush every family, one at a time: family -> the table files its flush wrote."""
    written = {}
    for family in list(store._cf):
        before = set(Path(store.path).glob("*.sst"))
        store._cf[family].flush()
        written[family] = sorted(set(Path(store.path).glob("*.sst")) - before)
    return written


def contents(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    return {family: list(store._cf[family].items()) for family in TOPIC_STATE}


def test_the_families_read_by_key_have_a_bloom_filter_and_the_scanned_ones_none(tmp_path):
    store = Store(tmp_path / "store", CODEC, "DE")
    try:
        store.apply("contacts", records(300))
        written = flushed(store)
        for family, filtered in ((CONTACTS, True), (DERIVED, True), (SEARCH, False)):
            tables = written[family]
            assert tables, family
            assert all((FILTER_NAME in table.read_bytes()) is filtered for table in tables), family
    finally:
        store.close()


def test_a_store_written_without_filters_opens_as_it_is_and_reads_the_same(tmp_path, monkeypatch):
    folder = tmp_path / "store"
    first, second = records(300), records(50)
    # As the version before the filters built its families.
    monkeypatch.setattr(storage, "_family_options", lambda _family, _cache: Options(raw_mode=True))
    old = Store(folder, CODEC, "DE")
    old.apply("contacts", first)
    tables = flushed(old)[DERIVED]
    assert tables and all(FILTER_NAME not in table.read_bytes() for table in tables)
    before, offsets = contents(old), old.offsets()
    old.close()
    monkeypatch.undo()

    store = Store(folder, CODEC, "DE")
    try:
        assert store.upgraded_from is None  # no rebuild: the layout is the same
        assert store.offsets() == offsets
        assert contents(store) == before
        # Reads through the old unfiltered files and the new filtered ones alike.
        store.apply("contacts", second)
        flushed(store)
        assert store.count() == 350
        for record in first + second:
            assert store.get_bytes(record.key.decode()) == record.value
        assert store.get_bytes(str(uuid.uuid4())) is None
    finally:
        store.close()


def test_every_family_reads_through_one_bounded_block_cache(tmp_path, monkeypatch):
    """The memory a store's reads keep is one cache's, however many families they touch (each
    family had a 32 MB cache of its own, which at 1M contacts held most of the service's RSS)."""
    monkeypatch.setattr(storage, "BLOCK_CACHE_BYTES", 256 * 1024)
    store = Store(tmp_path / "store", CODEC, "DE")
    try:
        store.apply("contacts", records(3000))
        flushed(store)  # reads now come from table files, through the cache
        for family in (CONTACTS, DERIVED, SEARCH):
            for _ in store._cf[family].items():
                pass
        usage = {family: store._cf[family].property_int_value("rocksdb.block-cache-usage") for family in (CONTACTS, DERIVED, SEARCH)}
        # One cache: every family reports the same usage, and it stays within the bound.
        assert len(set(usage.values())) == 1, usage
        assert 0 < usage[CONTACTS] <= 256 * 1024 * 1.1, usage
    finally:
        store.close()
