"""The store's indexes for finding people, on the real RocksDB: they follow every record of a
contact, end the same in whatever order partitions are applied, filter dismissed groups, and a
store of the previous format is rebuilt with them."""

from __future__ import annotations

import itertools
import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contacts_streams import identities as I
from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import FORMAT_KEY, IDENTITIES, SEARCH, SHARED, TOPIC_STATE, Record, Store, dismissed_key

CODEC = ContactCodec()
T0 = 1_700_000_000_000
_offsets = itertools.count()


def record(contact: dict | None, contact_id: str | None = None, partition: int = 0, header: bool = True, **headers) -> Record:
    key = (contact or {}).get("id") or contact_id
    extra = I.header(contact, "DE") if header and contact is not None else {}
    return Record(partition, next(_offsets), key.encode(), CODEC.encode_contact(contact) if contact else None, {**extra, **headers})


def new(**fields) -> dict:
    return model.new_contact(fields, str(uuid.uuid4()), T0)


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path / "store", CODEC, "DE")
    yield opened
    opened.close()


def lookup(store, kind, value):
    return [c["id"] for c in store.lookup([I.normalize(kind, value, "DE")])]


def search(store, query):
    return [c["id"] for c in store.search(I.query_terms(query), None, 100).contacts]


def test_indexes_follow_updates_deletes_and_merges(store):
    a = new(display_name="Ada Lovelace", via={"email": "ada@example.org", "phone": "030 1234567"})
    b = new(display_name="Ada L.", via={"email": "ADA@example.org"})
    store.apply("t", [record(a), record(b, header=False)])  # b as another producer wrote it
    assert sorted(lookup(store, "email", "ada@example.org")) == sorted([a["id"], b["id"]])
    assert [g.ids for g in store.duplicates(None, 10)[0]] == [tuple(sorted([a["id"], b["id"]]))]

    renamed = model.apply_update(a, {"display_name": "Countess", "via": {"email": "countess@example.org"}}, T0 + 1)
    store.apply("t", [record(renamed)])
    assert search(store, "lovelace") == [] and search(store, "countess") == [a["id"]]
    assert lookup(store, "email", "ada@example.org") == [b["id"]]
    assert store.duplicates(None, 10)[0] == []
    assert lookup(store, "phone", "+49 30 1234567") == [a["id"]]

    merged = model.merge_contacts(renamed, b, T0 + 2)
    store.apply("t", [record(merged), record(None, b["id"], operation="merged_away", merged_into=a["id"])])
    assert lookup(store, "email", "ada@example.org") == []  # the merged-away source's email lost to the destination's
    assert search(store, "ada") == []
    store.apply("t", [record(None, a["id"], operation="deleted")])
    assert store.lookup([("phone", "+49301234567")]) == [] and search(store, "countess") == []
    for family in (IDENTITIES, SEARCH, SHARED):
        assert list(store._cf[family].keys()) == [], family


def test_one_batch_may_touch_a_contact_and_its_group_many_times(store):
    a, b, c = (new(display_name=n, via={"phone": "+49 30 999"}) for n in "abc")
    gone = model.apply_update(a, {"via": ""}, T0 + 1)
    store.apply("t", [record(a), record(b), record(gone), record(c), record(None, b["id"], operation="deleted")])
    assert store.duplicates(None, 10)[0] == []
    store.apply("t", [record(a)])
    assert [len(g.ids) for g in store.duplicates(None, 10)[0]] == [2]


CONTACT_IDS = [str(uuid.UUID(int=i)) for i in range(1, 6)]
VALUES = st.sampled_from(["x@example.org", "X@example.org ", "y@example.org"])
STATES = st.none() | st.fixed_dictionaries({"email": VALUES}, optional={"phone": st.sampled_from(["030 1", "+49 30 1", "030 2"])})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(CONTACT_IDS), STATES), min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_indexes_end_the_same_in_any_partition_order_and_batching(tmp_path_factory, history, rnd):
    """Each contact lives on one partition; a live store and a rebuild read the partitions in
    different orders and batches: the indexes (shared groups included) must not care."""
    records = []
    for contact_id, via in history:
        contact = None if via is None else {**model.new_contact({"via": via}, contact_id, T0)}
        records.append(record(contact, contact_id, partition=CONTACT_IDS.index(contact_id) % 3, operation="x"))

    def build(order: list[Record], batch: int) -> dict:
        store = Store(tmp_path_factory.mktemp("s") / "store", CODEC, "DE")
        try:
            for start in range(0, len(order), batch):
                store.apply("t", order[start : start + batch])
            # Counters hold 0 or nothing for an empty store alike: compared by value.
            return {f: dict(store._cf[f].items()) for f in TOPIC_STATE if f not in ("offsets", "counters")} | {"count": store.count()}
        finally:
            store.close()

    by_partition = [[r for r in records if r.partition == p] for p in range(3)]
    shuffled: list[Record] = []
    queues = [list(q) for q in by_partition]
    while any(queues):
        shuffled.append(rnd.choice([q for q in queues if q]).pop(0))
    assert build(records, 1) == build(shuffled, rnd.randint(1, 7))


def test_dismissed_groups_are_not_offered_until_the_group_changes(store):
    a, b, c = (new(display_name=n, via={"email": "same@example.org"}) for n in "abc")
    store.apply("t", [record(a), record(b)])
    pair = dismissed_key([a["id"], b["id"]])
    store.dismissed.apply("d", [Record(0, 0, pair, b"1", {})])
    assert store.duplicates(None, 10)[0] == [] and store.groups_of(a["id"]) == []
    assert [a["id"], b["id"]] in store.dismissed and store.dismissed.offsets() == {0: 1}
    store.apply("t", [record(c)])  # a new member: a new group
    assert [len(g.ids) for g in store.duplicates(None, 10)[0]] == [3]
    store.apply("t", [record(None, c["id"], operation="deleted")])
    assert store.duplicates(None, 10)[0] == []
    store.dismissed.apply("d", [Record(0, 1, pair, None, {})])  # offered again
    assert [len(g.ids) for g in store.duplicates(None, 10)[0]] == [2]
    poisoned = []
    store.dismissed.apply("d", [Record(0, 2, b"not,ids", b"1", {})], on_poison=lambda r, e: poisoned.append(r))
    assert len(poisoned) == 1 and store.dismissed.offsets() == {0: 3}


def test_duplicates_pages_visit_every_group_once(store):
    contacts = []
    for group in range(7):
        contacts += [new(display_name=f"g{group}-{i}", via={"phone": f"+49 30 {1000 + group}"}) for i in range(2 + group % 3)]
    random.Random(1).shuffle(contacts)
    store.apply("t", [record(c) for c in contacts])
    seen, cursor = [], None
    while True:
        groups, cursor = store.duplicates(cursor, 2)
        seen += [g.reasons[0] for g in groups]
        if cursor is None:
            break
    assert sorted(seen) == sorted(("phone", f"+493{0}{1000 + g}") for g in range(7))


def test_a_store_of_the_previous_format_is_emptied_for_a_rebuild(tmp_path):
    path = tmp_path / "store"
    store = Store(path, CODEC)
    store.apply("t", [record(new(display_name="old"))])
    store._cf["meta"].delete(FORMAT_KEY)  # as version 1 left it
    store.join_state.apply("j", [Record(0, 0, b"conv", b"{}", {})])
    store.close()
    reopened = Store(path, CODEC)
    try:
        assert reopened.upgraded_from == "1"
        assert reopened.count() == 0 and reopened.offsets() == {} and reopened.topic() is None
        assert reopened.join_state.offsets() == {0: 1}  # the join state has its own topic
    finally:
        reopened.close()
    again = Store(path, CODEC)
    assert again.upgraded_from is None
    again.close()


def test_search_pages_are_bounded_and_cursors_belong_to_their_query(store):
    contacts = [new(display_name=f"Pager {i:03d}") for i in range(30)]
    store.apply("t", [record(c) for c in contacts])
    seen, cursor = [], None
    while True:
        page = store.search(I.query_terms("pager"), cursor, 7)
        seen += [c["display_name"] for c in page.contacts]
        assert page.total == 30
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(c["display_name"] for c in contacts)


@pytest.mark.parametrize("one_batch", [False, True])
def test_a_restored_contact_no_longer_resolves_to_its_old_destination(store, one_batch):
    """After an unmerge the source is live again: neither its tombstone's merged_into header nor
    the destination's old history entry may keep sending it to the destination (a later delete of
    the source would otherwise answer "merged into" the destination)."""
    source = new(display_name="Source", via={"email": "s@example.org"})
    destination = new(display_name="Destination")
    merged = model.merge_contacts(destination, source, T0 + 1)
    restored, after = model.unmerge(merged, source["id"], T0 + 2)
    merge = [record(merged, operation="merged", merged_from=source["id"]), record(None, source["id"], operation="merged_away", merged_into=destination["id"])]
    unmerge = [record(after, operation="unmerged"), record(restored, operation="restored")]
    store.apply("t", [record(source), record(destination)])
    if one_batch:
        store.apply("t", merge + unmerge)
    else:
        store.apply("t", merge)
        assert store.merged_into(source["id"]) == destination["id"]
        store.apply("t", unmerge)
    assert store.get(source["id"])["display_name"] == "Source"
    assert store.merged_into(source["id"]) is None
    assert lookup(store, "email", "s@example.org") == [source["id"]]
    store.apply("t", [record(None, source["id"], operation="deleted")])
    assert store.merged_into(source["id"]) is None


NAMES = st.sampled_from(["Gra", "Grace", "grace Gracey", "Gráce Hopper", "Ada", "", "Ada Adams-Ada"])
EMAILS = st.sampled_from(["grace@example.org", "grace.hopper@example.org", "gra.ce@x.org", "ada@example.org"])
PHONES = st.sampled_from(["030 1234567", "+49 30 1234567", "1234567", "+1 555 0100"])
LIVE = st.fixed_dictionaries({}, optional={"display_name": NAMES, "organization_name": NAMES, "via": st.fixed_dictionaries({}, optional={"email": EMAILS, "phone": PHONES})})


def _index_state(store: Store) -> dict:
    return {f: dict(store._cf[f].items()) for f in TOPIC_STATE if f not in ("offsets", "counters", "meta")} | {"count": store.count()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(CONTACT_IDS), st.none() | LIVE), min_size=1, max_size=20), st.booleans())
def test_a_store_that_followed_every_update_equals_one_built_from_the_last_records(tmp_path_factory, history, header):
    """Updates write only the index entries that changed (compared with the derived entry of
    the record before): what is left must be exactly what the last records give applied
    fresh, with the writer's identities header or without it (computed by the store)."""
    last: dict[str, Record] = {}
    followed = []
    for contact_id, fields in history:
        contact = None if fields is None else model.new_contact(fields, contact_id, T0)
        r = record(contact, contact_id, header=header, operation="x")
        followed.append(r)
        last[contact_id] = r

    def build(records: list[Record], batch: int) -> dict:
        store = Store(tmp_path_factory.mktemp("s") / "store", CODEC, "DE")
        try:
            for start in range(0, len(records), batch):
                store.apply("t", records[start : start + batch])
            return _index_state(store)
        finally:
            store.close()

    fresh = [r for r in last.values() if r.value is not None]
    assert build(followed, 3) == build(fresh, 100)
    if header:  # a record without the header indexes the same
        assert build(fresh, 100) == build([Record(r.partition, r.offset, r.key, r.value, {"operation": "x"}) for r in fresh], 100)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(LIVE, min_size=1, max_size=12), st.sampled_from(["gra", "grace", "g", "ada", "grace@", "gra.ce@x", "4567", "hopper gra", "ada ada"]), st.integers(1, 4))
def test_search_pages_show_each_matching_contact_once(tmp_path_factory, people, query, page_size):
    """Every contact with a token starting with each term, each on one page only (the entry's
    shared-prefix value picks the contact's first matching token)."""
    contacts = [model.new_contact(fields, CONTACT_IDS[i % 5] if i < 5 else str(uuid.UUID(int=100 + i)), T0) for i, fields in enumerate(people)]
    store = Store(tmp_path_factory.mktemp("s") / "store", CODEC, "DE")
    try:
        store.apply("t", [record(c) for c in contacts])
        live = {}
        for c in contacts:
            live[c["id"]] = c  # a later one of the same id replaces it
        terms = I.query_terms(query)
        expected = set()
        for c in live.values():
            tokens = I.search_tokens(c, I.identities_of(c, "DE"))
            if all(any(n == ns and t.startswith(term) for n, t in tokens) for ns, term in terms):
                expected.add(c["id"])
        seen, cursor = [], None
        for _ in range(100):
            page = store.search(terms, cursor, page_size)
            seen += [c["id"] for c in page.contacts]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(expected)
        if len(terms) == 1:
            assert store.search(terms, None, 1).total == len(expected)
    finally:
        store.close()


def test_later_search_pages_take_the_total_from_the_cursor_and_old_cursors_still_work(store):
    import base64

    contacts = [new(display_name=f"Carry {i:02d}") for i in range(6)]
    store.apply("t", [record(c) for c in contacts])
    first = store.search(I.query_terms("carry"), None, 2)
    assert first.total == 6
    store.apply("t", [record(new(display_name="Carry 99"))])
    assert store.search(I.query_terms("carry"), first.next_cursor, 2).total == 6  # as the first page said
    # A cursor of the kind before the total travelled in it (b"s" + key): counted again.
    raw = base64.urlsafe_b64decode(first.next_cursor + "=" * (-len(first.next_cursor) % 4))
    old = base64.urlsafe_b64encode(b"s" + raw[1:-4]).decode().rstrip("=")
    page = store.search(I.query_terms("carry"), old, 2)
    assert page.total == 7 and [c["display_name"] for c in page.contacts] == ["Carry 02", "Carry 03"]


def test_a_search_total_follows_every_write_though_it_is_kept_between_them(store):
    # The first page's total is kept between writes (it reads up to SEARCH_COUNT entries); each
    # write batch must make the next first page count again, deletes and renames included.
    graces = [new(display_name=f"Grace {i}") for i in range(5)]
    store.apply("contacts", [record(c) for c in graces])
    terms = I.query_terms("grace")
    assert store.search(terms, None, 2).total == 5
    assert store.search(terms, None, 2).total == 5  # kept: the same answer
    store.apply("contacts", [record(new(display_name="Grace Hopper"))])
    assert store.search(terms, None, 2).total == 6
    store.apply("contacts", [record(None, graces[0]["id"], operation="deleted")])
    assert store.search(terms, None, 2).total == 5
    renamed = model.apply_update(graces[1], {"display_name": "Ada"}, T0 + 1)
    store.apply("contacts", [record(renamed)])
    assert store.search(terms, None, 2).total == 4
    assert store.search(I.query_terms("ada"), None, 2).total == 1
