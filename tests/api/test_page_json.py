"""A list or search page built from its contacts' cached JSON texts is byte for byte the page
encoded whole from the decoded contacts, as the answer was before the cache (and as the Flask
test client would compare only by parsed JSON)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import NEW_CONTACTS, merged_contacts

from api import reads
from api.wire import paged_body
from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Page

CODEC = ContactCodec()
CURSORS = st.one_of(st.none(), st.text(alphabet="abcXYZ09-_", min_size=1, max_size=30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contacts=st.lists(st.one_of(NEW_CONTACTS, merged_contacts()), max_size=8),
    next_cursor=CURSORS,
    previous_cursor=CURSORS,
    total=st.integers(0, 10**7),
    cached_first=st.booleans(),
)
def test_a_page_from_cached_texts_is_the_page_encoded_whole(contacts, next_cursor, previous_cursor, total, cached_first):
    raws = [CODEC.encode_contact(c) for c in contacts]
    items = reads.ContactJson(CODEC.decode_contact, reads.PAGE_ITEM_JSON_BYTES, shape=reads.page_item)
    if cached_first:  # hits and misses give the same text
        for raw in raws:
            items.json(raw)
    page = Page([items.json(raw) for raw in raws], previous_cursor, next_cursor, total)
    whole = model.compact_json(paged_body([CODEC.decode_contact(raw) for raw in raws], next_cursor, previous_cursor, total=total))
    assert reads._page_json(page) == whole.encode()


def test_page_items_carry_no_history_default_and_info_does():
    contact = model.new_contact({"display_name": "Ada"}, "6b3b1d8e-4c1e-4f4f-9b9b-0d4b1f0e0c11", 1_700_000_000_000)
    raw = CODEC.encode_contact(contact)
    info = reads.ContactJson(CODEC.decode_contact)
    items = reads.ContactJson(CODEC.decode_contact, shape=reads.page_item)
    assert b'"merge_history":[]' in info.json(raw)
    assert b"merge_history" not in items.json(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contact=st.one_of(NEW_CONTACTS, merged_contacts()), timezone=st.one_of(st.none(), st.floats(-14, 14)), shape=st.sampled_from([reads.with_history, reads.page_item]))
def test_a_decoded_contacts_json_is_the_stdlib_encoders_floats_anywhere_included(contact, timezone, shape):
    if timezone is not None:  # a float where the schema allows one, on the contact or a merged one
        target = (contact.get("merge_history") or [contact])[-1]
        target["timezone"] = timezone
    decoded = shape(CODEC.decode_contact(CODEC.encode_contact(contact)))
    assert reads.decoded_contact_json(decoded) == model.compact_json(decoded).encode()
