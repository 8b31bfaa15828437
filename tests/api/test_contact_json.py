"""reads.contact_json, the JSON of info answers and cache misses, writes exactly the bytes of
model.compact_json (what every other answer is written with) for any JSON value: orjson where
it agrees, json where it would not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import reads
from contacts_streams import model

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-05, 1.5e-07, 1e-10, 1e16, 1.2345e22, 0.0001, -0.0, 5.5, 123456789.125]),
    st.text(),
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)


def _compact(value) -> bytes | type:
    try:
        return model.compact_json(value).encode()
    except UnicodeEncodeError:
        return UnicodeEncodeError


@settings(max_examples=3000, deadline=None)
@given(_JSON)
def test_the_bytes_are_compact_jsons(value):
    expected = _compact(value)
    if expected is UnicodeEncodeError:  # a lone surrogate: an error either way, as before
        with pytest.raises(UnicodeEncodeError):
            reads.contact_json(value)
    else:
        assert reads.contact_json(value) == expected


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_float_is_written_as_json_writes_it(number):
    assert reads.contact_json({"timezone": number}) == _compact({"timezone": number})


def test_a_typical_contact():
    contact = {
        "id": "0ea439b9-9953-467d-9648-8e072d5d59ac",
        "display_name": "Émilie du Châtelet 李白 \u2028",
        "timezone": 5.5,
        "via": {"email": "e@example.org", "phone": "+15550000000"},
        "metadata": {"tier": "pro", "visits": 83, "tiny": 1e-06, "quote": 'a"b\\c\n'},
        "merge_history": [],
    }
    assert reads.contact_json(contact) == _compact(contact)
    # Strings that look like the numbers orjson writes otherwise, and numbers beside UUIDs.
    for text in ("[1e-5", ":-1.5e-7", "0.00001", ",3e-", "1234-567e-8", "9e-", "-1e-9"):
        for value in ({"metadata": {"x": text}}, [text, -1e-9, 2e-300], {"n": [-5e-324, "a3e-"]}):
            assert reads.contact_json(value) == _compact(value), value
