"""Opening a store checks it for damage: the whole store is read only when a table file is not
byte for byte one the store verified or wrote before (a clean restart at 1M contacts took 9 s
reading every entry), and damage is still noticed whatever its shape."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Record, Store
from contacts_streams.store.storage import VERIFIED_TABLES, StoreError

CODEC = ContactCodec()
T0 = 1_700_000_000_000


def filled(folder: Path, count: int = 500) -> None:
    store = Store(folder, CODEC, "DE")
    contacts = [
        model.new_contact({"display_name": f"Person {i}", "via": {"email": f"p{i}@example.org"}}, str(uuid.uuid4()), T0)
        for i in range(count)
    ]
    store.apply(
        "contacts",
        [Record(0, i, c["id"].encode(), CODEC.encode_contact(c), {"operation": "created"}, T0) for i, c in enumerate(contacts)],
    )
    for family in list(store._cf):  # table files, as a store that ran for a while has
        store._cf[family].flush()
    store.close()


def largest_table(folder: Path) -> Path:
    return max(folder.glob("*.sst"), key=lambda p: p.stat().st_size)


def test_a_cleanly_closed_store_opens_without_reading_every_block(tmp_path):
    folder = tmp_path / "store"
    filled(folder)
    assert (folder / VERIFIED_TABLES).exists()
    store = Store(folder, CODEC, "DE")
    try:
        assert not store.read_every_block
        assert store.count() == 500
    finally:
        store.close()


def test_a_store_without_the_record_of_its_tables_is_read_whole_once(tmp_path):
    folder = tmp_path / "store"
    filled(folder)
    (folder / VERIFIED_TABLES).unlink()  # a store of an older version, or a crash before the first record
    first = Store(folder, CODEC, "DE")
    assert first.read_every_block
    first.close()
    second = Store(folder, CODEC, "DE")
    assert not second.read_every_block
    second.close()


@pytest.mark.parametrize("keep_size_and_time", [False, True])
def test_a_damaged_table_is_noticed_even_with_its_size_and_time_kept(tmp_path, keep_size_and_time):
    folder = tmp_path / "store"
    filled(folder, 3000)
    table = largest_table(folder)
    before = table.stat()
    data = bytearray(table.read_bytes())
    at = len(data) // 3
    data[at : at + 256] = os.urandom(256)
    table.write_bytes(bytes(data))
    if keep_size_and_time:  # bit rot: nothing about the file but its bytes changed
        os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(StoreError):
        Store(folder, CODEC, "DE")


def test_a_table_written_by_another_process_is_read(tmp_path):
    folder = tmp_path / "store"
    filled(folder)
    listed = set(__import__("json").loads((folder / VERIFIED_TABLES).read_text()))
    # Another process (a copy, a tool) wrote to the store after this one closed it.
    from rocksdict import Options, Rdict

    from contacts_streams.store import FAMILIES

    db = Rdict(str(folder), options=Options(raw_mode=True), column_families={f: Options(raw_mode=True) for f in FAMILIES})
    cf = db.get_column_family("meta")
    cf[b"another"] = b"process"
    cf.flush()
    del cf
    db.close()
    assert {p.name for p in folder.glob("*.sst")} - listed
    store = Store(folder, CODEC, "DE")
    try:
        assert store.read_every_block
    finally:
        store.close()
