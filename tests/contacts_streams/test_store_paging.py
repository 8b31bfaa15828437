"""contacts.list paging in the real RocksDB store: cursors work for every name a contact may have
and stay bounded in size, and paging either way yields every contact exactly once, in order."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import CURSOR_NAME_BYTES, Record, Store

CODEC = ContactCodec()
T0 = 1_700_000_000_000
_offsets = itertools.count()


def put(store: Store, contact: dict) -> None:
    record = Record(0, next(_offsets), contact["id"].encode(), CODEC.encode_contact(contact), {"operation": "created"})
    store.apply("contacts", [record])


def delete(store: Store, contact_id: str) -> None:
    store.apply("contacts", [Record(0, next(_offsets), contact_id.encode(), None, {"operation": "deleted"})])


def contact(name: str | None, contact_id: str | None = None) -> dict:
    fields = {"title": "t"} if name is None else {"display_name": name}
    return model.new_contact(fields, contact_id or str(uuid.uuid4()), T0)


def forward(store: Store, page_size: int) -> tuple[list[str], list[str | None]]:
    """Every id paging forward from the first page, and the previous cursors met on the way."""
    ids, previous, cursor = [], [], None
    for _ in range(10_000):
        page = store.page(cursor, page_size)
        ids += [c["id"] for c in page.contacts]
        previous.append(page.previous_cursor)
        cursor = page.next_cursor
        if cursor is None:
            return ids, previous
        assert len(cursor) <= model.MAX_CURSOR_LENGTH
    raise AssertionError("paging forward never ended")


def backward(store: Store, cursor: str, page_size: int) -> list[str]:
    """Every id before the cursor, paging backward."""
    ids: list[str] = []
    for _ in range(10_000):
        page = store.page(cursor, page_size)
        ids = [c["id"] for c in page.contacts] + ids
        cursor = page.previous_cursor
        if cursor is None:
            return ids
        assert len(cursor) <= model.MAX_CURSOR_LENGTH
    raise AssertionError("paging backward never ended")


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path / "store", CODEC)
    yield opened
    opened.close()


# --- the names of the issue -----------------------------------------------------------------------

LONG_NAMES = [
    "李" * 250,  # 750 bytes of UTF-8
    "ß" * 400,  # case-folds to 800 bytes
    "ß" * 400 + "a",
    "\ufdfa" * model.MAX_STRING_LENGTH,  # NFKC makes each one 18 characters: the longest sort key
    "x" * model.MAX_STRING_LENGTH,
    "🙂" * model.MAX_STRING_LENGTH,
]


@pytest.mark.parametrize("name", LONG_NAMES, ids=["cjk", "eszett", "eszett+a", "ligature", "ascii", "emoji"])
def test_a_cursor_after_a_contact_with_a_long_name_is_bounded_and_works(store, name):
    edge = contact(name)
    after = contact(None)  # unnamed: sorts after every named contact
    for c in (contact("a"), edge, after):
        put(store, c)
    first = store.page(None, 2)
    assert [c["id"] for c in first.contacts][-1] == edge["id"]
    assert first.next_cursor and len(first.next_cursor) <= model.MAX_CURSOR_LENGTH
    model.validate_list({"cursor": first.next_cursor})  # the API takes it back
    second = store.page(first.next_cursor, 2)
    assert [c["id"] for c in second.contacts] == [after["id"]]
    back = store.page(second.previous_cursor, 2)
    assert [c["id"] for c in back.contacts][-1] == edge["id"]


def test_a_long_named_contact_deleted_between_two_pages_loses_no_contact(store):
    # The cursor holds only a prefix of a long name: when its contact is gone, the next page starts
    # before every name sharing that prefix (it may repeat some, it never skips one).
    base = "ß" * CURSOR_NAME_BYTES
    named = sorted((contact(base + suffix) for suffix in "abcdef"), key=model.sort_key)
    for c in named:
        put(store, c)
    first = store.page(None, 3)
    assert [c["id"] for c in first.contacts] == [c["id"] for c in named[:3]]
    delete(store, named[2]["id"])
    rest = store.page(first.next_cursor, 10)
    assert [c["id"] for c in rest.contacts][-3:] == [c["id"] for c in named[3:]]
    back = store.page(rest.previous_cursor, 10) if rest.previous_cursor else None
    assert back is None or {c["id"] for c in back.contacts} <= {c["id"] for c in named}


# --- the property ---------------------------------------------------------------------------------

# Names from a few letters and a few long runs, so that names share long prefixes, differ only
# past CURSOR_NAME_BYTES, differ only in case, or are equal.
_PIECES = st.sampled_from(["a", "A", "b", "ß", "SS", "李", " ", "\u0301", "🙂", "ß" * 300, "a" * 600, "李" * 250])
NAMES = st.one_of(
    st.none(),
    st.just(""),
    st.lists(_PIECES, min_size=1, max_size=6).map("".join).map(lambda n: n[: model.MAX_STRING_LENGTH]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAMES, min_size=0, max_size=25), page_size=st.integers(1, 6))
def test_paging_both_ways_yields_every_contact_once_in_order(names, page_size):
    folder = Path(tempfile.mkdtemp(prefix="paging-"))
    store = Store(folder / "store", CODEC)
    try:
        contacts = [contact(name) for name in names]
        for c in contacts:
            put(store, c)
        expected = [c["id"] for c in sorted(contacts, key=model.sort_key)]
        ids, _ = forward(store, page_size)
        assert ids == expected
        if not contacts:
            return
        # From the last page, backward to the start: the same contacts, the same order.
        last = store.page(None, page_size)
        while last.next_cursor:
            last = store.page(last.next_cursor, page_size)
        tail = [c["id"] for c in last.contacts]
        before = backward(store, last.previous_cursor, page_size) if last.previous_cursor else []
        assert before + tail == expected
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
