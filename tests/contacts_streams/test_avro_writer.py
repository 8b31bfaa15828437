"""The schema-specific Avro writer writes exactly fastavro's bytes, or leaves the record to it."""

from __future__ import annotations

import io

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import MILLIS, merged_contacts

from contacts_streams import events
from contacts_streams.avro_writer import compile_writer, zigzag
from contacts_streams.serialization import (
    AvroCodec,
    ContactCodec,
    DecodeError,
    EncodeError,
    contact_to_record,
    message_codec,
    metadata_codec,
)

CONTACTS = ContactCodec()
EVENTS = events.EventCodec(subject=None)


def fastavro_bytes(codec: AvroCodec, record) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, codec.parsed, record, disable_tuple_notation=True)
    return codec._single_object_header + out.getvalue()


def test_the_service_schemas_compile():
    assert CONTACTS.avro._fast_writer is not None
    assert EVENTS.avro._fast_writer is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contact=merged_contacts())
def test_any_contact_is_written_as_fastavro_writes_it(contact):
    record = contact_to_record(contact)
    assert CONTACTS.avro._fast_writer(record) == fastavro_bytes(CONTACTS.avro, record)[10:]
    assert CONTACTS.encode_contact(contact) == fastavro_bytes(CONTACTS.avro, record)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.none() | merged_contacts(),
    after=st.none() | merged_contacts(),
    operation=st.sampled_from(["imported", "updated", "merged", "deleted", "erased"]),
    headers=st.sampled_from([{}, {"merged_from": "x"}, {"restored_from": "y"}]),
)
def test_any_event_is_written_as_before(before, after, operation, headers):
    event = events.event_for("c", operation, before, after, actor="a", origin="http", now_ms=0, headers=headers)
    # What EventCodec.encode wrote before the fast writer: the normalized record through fastavro.
    record = {**event, "changes": [{"path": c["path"], "before": c["before"], "after": c["after"]} for c in event["changes"]]}
    assert EVENTS.encode(event) == fastavro_bytes(EVENTS.avro, record)
    assert EVENTS.decode(EVENTS.encode(event)) == event


# Values of every Python type the service could hand an encoder, odd ones included.
ODD = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.text()
    | st.binary(max_size=4)
    | st.just({"-type": "x"}),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3),
    max_leaves=6,
)
EVERY_KIND = AvroCodec(
    {
        "type": "record",
        "name": "Every",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "b", "type": "boolean", "default": False},
            {"name": "i", "type": "int", "default": 0},
            {"name": "l", "type": ["null", "long"], "default": None},
            {"name": "d", "type": "double", "default": 0.0},
            {"name": "raw", "type": ["null", "bytes"], "default": None},
            {"name": "tz", "type": ["null", "string", "long", "double"], "default": None},
            {"name": "m", "type": ["null", {"type": "map", "values": "string"}], "default": None},
            {"name": "a", "type": {"type": "array", "items": ["null", "boolean", "string"]}, "default": []},
            {
                "name": "r",
                "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": ["null", "string"], "default": None}]}],
                "default": None,
            },
            {"name": "rs", "type": ["null", {"type": "array", "items": "Inner"}], "default": None},
        ],
    }
)
FIELD_NAMES = [f["name"] for f in EVERY_KIND.schema["fields"]]


def test_contacts_read_fast():
    assert ContactCodec(subject=None).avro._fast_reader is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contact=merged_contacts())
def test_any_contact_reads_as_fastavro_reads_it(contact):
    codec = ContactCodec(subject=None)
    data = codec.encode_contact(contact)
    assert codec.avro._fast_reader(data, 10) == (fastavro_read(codec.avro, data), len(data))
    assert codec.decode_contact(data) == contact


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.fixed_dictionaries({"s": st.text() | ODD}, optional={name: ODD for name in FIELD_NAMES[1:] + ["extra"]}))
def test_odd_values_are_written_as_fastavro_writes_them_or_refused_alike(record):
    try:
        expected = fastavro_bytes(EVERY_KIND, record)
    except Exception:  # noqa: BLE001 - whatever fastavro refuses, the codec refuses
        with pytest.raises(EncodeError):
            EVERY_KIND.encode(record)
        return
    assert EVERY_KIND.encode(record) == expected


def test_well_typed_values_take_the_fast_path():
    record = {
        "s": "é", "b": True, "i": -3, "l": 1 << 40, "d": 2.5, "raw": b"\x00", "tz": 5.5, "m": {"k": "v"},
        "a": [None, False, "x"], "r": {"x": "y"}, "rs": [{"x": None}, {}],
    }  # fmt: skip
    assert EVERY_KIND.encode_fast(record) == fastavro_bytes(EVERY_KIND, record)


def test_what_it_cannot_tell_apart_is_left_to_fastavro():
    enum = parse_schema({"type": "record", "name": "E", "fields": [{"name": "e", "type": {"type": "enum", "name": "K", "symbols": ["A"]}}]})
    double_first = parse_schema({"type": "record", "name": "D", "fields": [{"name": "n", "type": ["double", "long"]}]})
    assert compile_writer(enum) is None
    assert compile_writer(double_first) is None


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 4095, 4096, (1 << 63) - 1, -(1 << 63)])
def test_zigzag_longs(n):
    out = io.BytesIO()
    schemaless_writer(out, parse_schema({"type": "record", "name": "N", "fields": [{"name": "n", "type": "long"}]}), {"n": n})
    assert zigzag(n) == out.getvalue()


# --- the compiled reader (events use it) ---------------------------------------------------------

FAST_READING = AvroCodec(EVERY_KIND.schema, fast_reader=True)


def fastavro_read(codec: AvroCodec, data: bytes):
    buffer = io.BytesIO(data)
    buffer.seek(10)
    record = schemaless_reader(buffer, codec.parsed, None)
    assert buffer.tell() == len(data)
    return record


def assert_read_alike(codec: AvroCodec, data: bytes) -> None:
    """The codec reads what fastavro reads, and refuses (DecodeError) what fastavro cannot read."""
    try:
        expected = fastavro_read(codec, data)
    except Exception:  # noqa: BLE001 - whatever fastavro cannot read, the codec cannot either
        with pytest.raises(DecodeError):
            codec.decode(data)
        return
    assert codec.decode(data) == expected


def test_events_read_fast():
    assert EVENTS.avro._fast_reader is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.none() | merged_contacts(),
    after=st.none() | merged_contacts(),
    operation=st.sampled_from(["imported", "merged", "erased"]),
)
def test_any_event_reads_as_fastavro_reads_it(before, after, operation):
    event = events.event_for("c", operation, before, after, actor="a", origin="http", now_ms=0, headers={"merged_from": "x"})
    data = EVENTS.encode(event)
    assert EVENTS.avro._fast_reader(data, 10) == (fastavro_read(EVENTS.avro, data), len(data))
    assert EVENTS.decode(data) == event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.fixed_dictionaries({"s": st.text()}, optional={name: ODD for name in FIELD_NAMES[1:]}), cut=st.integers(0, 40), noise=st.binary(max_size=6))
def test_any_bytes_read_as_fastavro_reads_them_or_fail_alike(record, cut, noise):
    try:
        whole = FAST_READING.encode(record)
    except EncodeError:
        return
    assert FAST_READING.decode(whole) == fastavro_read(FAST_READING, whole)
    for data in (whole[: len(whole) - cut], whole + noise, whole[:10] + noise + whole[10:]):
        assert_read_alike(FAST_READING, data)


# --- the routers' records: messages and metadata (enums) -------------------------------------------

MESSAGES = message_codec(None, subject=None)
METADATA = metadata_codec(None, subject=None)
TEXT = st.text(max_size=40)
MESSAGE = st.fixed_dictionaries(
    {
        "id": TEXT,
        "headers": st.none() | st.dictionaries(TEXT, TEXT, max_size=3),
        "isFromContact": st.booleans(),
        "deliveryState": st.sampled_from(["PENDING", "FAILED", "DELIVERED"]),
        "senderId": TEXT,
        "sourceRecipientId": st.none() | TEXT,
        "conversationId": TEXT,
        "channelId": TEXT,
        "source": TEXT,
        "content": st.text(max_size=200),
        "sentAt": MILLIS,
        "updatedAt": st.none() | MILLIS,
    }
)
METADATA_RECORD = st.fixed_dictionaries(
    {
        "subject": TEXT,
        "key": TEXT,
        "value": TEXT,
        "valueType": st.sampled_from(["text", "array", "object", "number", "bool", "nullValue"]),
        "timestamp": MILLIS,
    }
)


def test_messages_and_metadata_read_fast():
    assert MESSAGES._fast_reader is not None
    assert METADATA._fast_reader is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cut=st.integers(0, 12), noise=st.binary(max_size=4))
def test_any_message_or_metadata_reads_as_fastavro_reads_it(data, cut, noise):
    for codec, records in ((MESSAGES, MESSAGE), (METADATA, METADATA_RECORD)):
        record = data.draw(records)
        whole = codec.encode(record)
        assert codec._fast_reader(whole, 10) == (fastavro_read(codec, whole), len(whole))
        assert codec.decode(whole) == record
        for odd in (whole[: len(whole) - cut], whole + noise, whole[:10] + noise + whole[10:]):
            assert_read_alike(codec, odd)


def test_an_enum_index_outside_its_symbols_reads_as_fastavro_reads_it():
    record = {"subject": "s", "key": "k", "value": "v", "valueType": "text", "timestamp": 1}
    whole = METADATA.encode(record)
    # subject, key, value are one-byte strings (length byte + byte): the enum's index follows.
    at = 10 + 2 * 3
    assert whole[at] == 0  # "text", index 0
    # zig-zag bytes for the indexes 6 and 63 (past the six symbols) and -1 (which fastavro
    # reads as the last symbol, Python's indexing)
    for byte in (12, 126, 1):
        assert_read_alike(METADATA, whole[:at] + bytes([byte]) + whole[at + 1 :])
