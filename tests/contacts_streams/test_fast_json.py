"""``model.json_bytes`` and ``model.json_loads`` (orjson) against the stdlib encoding they replace
on the writer's and the stores' paths: the same bytes where bytes are kept (store entries and
headers hold no floats), the same value where they are read back (commands)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contacts_streams import model, serialization

# Any text, lone surrogates and NUL included; keys too.
TEXT = st.text(st.characters(codec=None, min_codepoint=0), max_size=12)
INTS = st.integers(min_value=-(2**70), max_value=2**70)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars):
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=20,
    )


# What orjson reads as an integer; past that it reads a float (model.json_loads says why that is fine).
READ_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
NO_FLOATS = json_values(st.none() | st.booleans() | INTS | TEXT)
ANY = json_values(st.none() | st.booleans() | READ_INTS | TEXT | FLOATS)


def stdlib_bytes(value) -> bytes:
    return model.compact_json(value).encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(NO_FLOATS)
def test_without_floats_the_bytes_are_the_stdlib_encoders(value):
    try:
        expected = stdlib_bytes(value)
    except UnicodeEncodeError:  # a lone surrogate: the same error as before
        with pytest.raises(UnicodeEncodeError):
            model.json_bytes(value)
        return
    assert model.json_bytes(value) == expected


@settings(max_examples=200, deadline=None)
@given(ANY)
def test_any_value_reads_back_as_itself(value):
    try:
        raw = model.json_bytes(value)
    except UnicodeEncodeError:
        return
    assert json.loads(raw) == value
    assert model.json_loads(raw) == value


@given(FLOATS)
def test_a_float_reads_back_as_the_same_float(number):
    back = json.loads(model.json_bytes(number))
    assert back == number and math.copysign(1, back) == math.copysign(1, number)


def test_tuples_nesting_and_keys_that_are_not_strings_go_the_old_way():
    deep: list = []
    for _ in range(600):  # deeper than orjson writes
        deep = [deep]
    for value in ({1: "a", None: 2}, ("a", 1), deep):
        assert model.json_bytes(value) == stdlib_bytes(value)


def same(a, b) -> bool:
    """Equal, of the same types all the way down (1 is not 1.0 here), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=200, deadline=None)
@given(json_values(st.none() | st.booleans() | READ_INTS | TEXT | st.floats()))
def test_loads_reads_what_json_loads_reads(value):
    """Any JSON text json.dumps writes (NaN, Infinity, escapes, lone surrogates as escapes):
    the same value, of the same types, keys in the same order."""
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, separators=(",", ":"))):
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            continue
        assert same(model.json_loads(raw), json.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [b"", b"[1,", b"\xff", b'{"a":}', b"NaNa", b'"\\ud800', b"1e400", b'{"a":1,"a":2}', b"-0", b"1E5", b" [ ] "],
)
def test_loads_answers_bad_and_odd_text_as_json_loads(raw):
    reads_alike(model.json_loads, raw)


def reads_alike(loads, text) -> None:
    """`loads(text)` is json.loads's value, of the same types, or raises json.loads's error."""
    try:
        expected = json.loads(text)
    except Exception as err:  # noqa: BLE001 - the very error is what is compared
        with pytest.raises(type(err)):
            loads(text)
        return
    assert same(loads(text), expected)


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_exact_bytes_are_the_stdlib_encoders_whatever_the_value(value):
    """Where the bytes are seen (a contact's metadata text on the contacts topic, the metadata
    size limit): the stdlib's bytes, floats included."""
    try:
        expected = stdlib_bytes(value)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            model.exact_json_bytes(value)
        return
    assert model.exact_json_bytes(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, ANY | st.floats(), max_size=5))
def test_a_contacts_metadata_text_is_what_the_stdlib_wrote(metadata):
    stdlib = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        expected = stdlib.encode(metadata)
    except ValueError as err:  # NaN, infinities: refused the same way
        with pytest.raises(type(err)):
            serialization._metadata_text(metadata)
        return
    assert serialization._metadata_text(metadata) == expected


def test_a_cyclic_value_is_left_to_the_stdlib():
    cyclic: dict = {"a": "b"}
    cyclic["self"] = cyclic
    assert model.holds_float(cyclic)
    with pytest.raises(ValueError, match="Circular"):
        serialization._metadata_text(cyclic)


@settings(max_examples=300, deadline=None)
@given(json_values(st.none() | st.booleans() | INTS | TEXT | st.floats()))
def test_exact_loads_reads_any_text_as_json_loads_integers_past_64_bits_too(value):
    """A stored contact's metadata text (any producer's): the stdlib's value, of the same types,
    an integer past 64 bits included (json_loads would read it as a float)."""
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, separators=(",", ":"))):
        assert same(model.json_loads_exact(text), json.loads(text))
        try:
            raw = text.encode("utf-8")  # an answer of the service, as received
        except UnicodeEncodeError:
            continue
        assert same(model.json_loads_exact(raw), json.loads(raw))


@pytest.mark.parametrize("text", ["", "[1,", '{"a":}', "NaNa", '"\\ud800', "1e400", '{"a":1,"a":2}', "-0", "18446744073709551616", "1.0000000000000000001"])
def test_exact_loads_answers_bad_and_odd_text_as_json_loads(text):
    reads_alike(model.json_loads_exact, text)
    reads_alike(model.json_loads_exact, text.encode("utf-8", "surrogatepass"))
