"""An erased tombstone on the real RocksDB: the contact and everything it indexed go, ids merged
into it stop leading anywhere, and once the store has compacted no file of its folder (SST, WAL,
MANIFEST, LOG) holds a byte of what was erased, old versions of the contact included."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

from contacts_streams import identities as I
from contacts_streams import model
from contacts_streams.decisions import ERASED_AT
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Record, Store

CODEC = ContactCodec()
T0 = 1_700_000_000_000
_offsets = itertools.count()


def record(contact_id: str, contact: dict | None, operation: str, **headers) -> Record:
    extra = I.header(contact, "DE") if contact is not None else {}
    value = CODEC.encode_contact(contact) if contact is not None else None
    return Record(0, next(_offsets), contact_id.encode(), value, {"operation": operation, **extra, **headers}, T0)


def files_holding(folder: Path, secrets: list[bytes]) -> dict[str, list[bytes]]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in secrets if s in data]
            if hits:
                found[path.name] = hits
    return found


def test_an_erased_contact_leaves_no_byte_in_any_file_of_the_store(tmp_path):
    folder = tmp_path / "store"
    store = Store(folder, CODEC, "DE")
    tag = uuid.uuid4().hex[:10]
    old_name, new_name = f"Quinn{tag} Old", f"Quinn{tag} Zebedee"
    old_email, new_email = f"old.{tag}@example.org", f"new.{tag}@example.org"
    phone = "+49 170 " + str(int(tag, 16) % 10_000_000).zfill(7)
    secrets = [s.encode() for s in (old_name, new_name, old_email, new_email, tag, phone.replace(" ", "")[-7:])]
    conversation = str(uuid.uuid4())
    # Other contacts around it, so the SST files hold more than the erased one.
    others = [model.new_contact({"display_name": f"Other {i}", "via": {"email": f"o{i}@example.org"}}, str(uuid.uuid4()), T0) for i in range(300)]
    store.apply("contacts", [record(c["id"], c, "created") for c in others])

    contact_id, source_id = str(uuid.uuid4()), str(uuid.uuid4())
    first = model.new_contact({"display_name": old_name, "via": {"email": old_email, "phone": phone}, "conversations": {conversation: "sms"}}, contact_id, T0)
    store.apply("contacts", [record(contact_id, first, "created")])
    store.join_state.apply("join", [Record(0, 0, conversation.encode(), json.dumps({"source": "sms", "display_name": old_name}).encode(), {})])
    for family in list(store._cf):  # the first versions reach SST files, as on a store that ran for a while
        store._cf[family].flush()
    updated = model.apply_update(first, {"display_name": new_name, "via": {"email": new_email}}, T0 + 1)
    store.apply("contacts", [record(contact_id, updated, "updated")])
    source = model.new_contact({"display_name": f"Source {tag}"}, source_id, T0)
    store.apply("contacts", [record(source_id, source, "created")])
    merged = model.merge_contacts(updated, source, T0 + 2)
    store.apply("contacts", [record(contact_id, merged, "merged", merged_from=source_id), record(source_id, None, "merged_away", merged_into=contact_id)])
    assert store.merged_into(source_id) == contact_id
    assert files_holding(folder, secrets), "the test's contact was never written to the store's files"

    store.apply("contacts", [record(contact_id, None, "erased"), record(source_id, None, "erased")])
    store.join_state.apply("join", [Record(0, 1, conversation.encode(), json.dumps({ERASED_AT: T0 + 3}).encode(), {})])
    assert store.get(contact_id) is None and store.merged_into(source_id) is None
    assert store.lookup([("email", new_email)]) == [] and store.contact_id_for_conversation(conversation) is None
    assert [i for i, _ in store.erased()] and contact_id in dict(store.erased())
    assert store.wait_compacted(30)
    assert store.compactions >= 1
    assert files_holding(folder, secrets) == {}, "erased bytes are still in the store's files"
    assert store.get(others[0]["id"]) == others[0] and store.count() == 300  # the others are untouched
    store.close()
    assert files_holding(folder, secrets) == {}

    again = Store(folder, CODEC, "DE")  # and it opens, whole
    try:
        assert again.count() == 300 and again.get(contact_id) is None
    finally:
        again.close()


def test_a_contact_live_again_under_an_erased_id_is_no_longer_listed_as_erased(tmp_path):
    store = Store(tmp_path / "store", CODEC, "DE")
    try:
        contact_id = str(uuid.uuid4())
        contact = model.new_contact({"display_name": "A"}, contact_id, T0)
        store.apply("contacts", [record(contact_id, contact, "created"), record(contact_id, None, "erased")])
        assert contact_id in dict(store.erased())
        store.apply("contacts", [record(contact_id, None, "erased")])  # written again: nothing changes
        assert store.erased() == [(contact_id, T0)]
        store.apply("contacts", [record(contact_id, model.new_contact({"display_name": "New"}, contact_id, T0), "auto_created")])
        assert store.erased() == [] and store.get(contact_id)["display_name"] == "New"
    finally:
        store.close()


def test_an_erased_id_live_again_after_a_reopen_is_no_longer_listed_as_erased(tmp_path):
    """The store skips the erased family's read for a live record while it holds no erased id;
    a reopened store that holds one reads it again."""
    contact_id = str(uuid.uuid4())
    store = Store(tmp_path / "store", CODEC, "DE")
    try:
        assert not store.may_hold_erased
        contact = model.new_contact({"display_name": "A"}, contact_id, T0)
        store.apply("contacts", [record(contact_id, contact, "created"), record(contact_id, None, "erased")])
    finally:
        store.close()
    again = Store(tmp_path / "store", CODEC, "DE")
    try:
        assert again.may_hold_erased and again.erased() == [(contact_id, T0)]
        again.apply("contacts", [record(contact_id, model.new_contact({"display_name": "New"}, contact_id, T0), "auto_created")])
        assert again.erased() == []
        again.reset()
        assert not again.may_hold_erased
    finally:
        again.close()
