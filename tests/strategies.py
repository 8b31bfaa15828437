"""Hypothesis strategies of valid contact payloads and contacts, shared by the model and serialization tests."""

from __future__ import annotations

from hypothesis import strategies as st

from contacts_streams import model
from contacts_streams.model import ADDRESS_FIELDS

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
KEYS = TEXT.filter(bool)
CONVERSATION_IDS = st.uuids().map(str)
METADATA = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
CREATE_PAYLOADS = st.fixed_dictionaries(
    {},
    optional={
        "display_name": TEXT,
        "avatar_url": TEXT,
        "title": TEXT,
        "timezone": TEXT | st.integers(-86400, 86400) | st.floats(-86400, 86400),
        "gender": TEXT,
        "locale": TEXT,
        "organization_name": TEXT,
        "via": st.dictionaries(KEYS, TEXT, max_size=3),
        "address": st.dictionaries(st.sampled_from(ADDRESS_FIELDS), TEXT, max_size=3),
        "conversations": st.dictionaries(CONVERSATION_IDS, KEYS, max_size=3),
        "metadata": st.dictionaries(KEYS, METADATA, max_size=4),
    },
).filter(lambda payload: any(v != {} for v in payload.values()))

MILLIS = st.integers(-62135596800000, 253402300799999)
NEW_CONTACTS = st.builds(
    lambda fields, contact_id, ms: model.new_contact(model.validate_create(fields), contact_id, ms),
    CREATE_PAYLOADS,
    st.uuids().map(str),
    MILLIS,
)


@st.composite
def merged_contacts(draw, depth: int = 2):
    """A contact with merges into it, sources that had merges of their own included."""
    contact = draw(NEW_CONTACTS)
    sources = st.lists(merged_contacts(depth - 1) if depth > 1 else NEW_CONTACTS, max_size=2)
    for other in draw(sources):
        if other["id"] != contact["id"] and not {e["id"] for e in other.get("merge_history", [])} & {contact["id"]}:
            contact = model.merge_contacts(contact, other, draw(MILLIS))
    return contact
