"""Tests of contacts_streams.serialization: single-object and Confluent framing, schema evolution.

The Confluent wire format is tested against a real schema registry (AxonOps Schema Registry,
Confluent's REST API; contacts_dev.schema_registry). Its error texts differ from Confluent's:
the tests assert on HTTP statuses and error codes.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import merged_contacts
from support import CONVERSATION_A
from support import SEED_CONTACT as SEED_PAYLOAD

from contacts_streams import model, serialization
from contacts_streams.serialization import (
    AvroCodec,
    ContactCodec,
    DecodeError,
    EncodeError,
    RegistryError,
    SchemaRefused,
    message_codec,
    metadata_codec,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
_CODEC = ContactCodec()  # single-object encoding, no registry
encode_contact, decode_contact = _CODEC.encode_contact, _CODEC.decode_contact
CONTACT_ID = "6b80b10c-ae6e-4995-844d-c56c4da11623"
T0 = 1637068863580

# The seed's create request as the contact it becomes.
SEED_CONTACT = {"id": CONTACT_ID, **SEED_PAYLOAD, "created_at": "2021-11-16T13:21:03.580Z", "updated_at": "2021-11-16T13:21:03.580Z"}

MESSAGE = {
    "id": "0e1a6a4f-8d6c-4f0c-9a7e-2f1f0f3c6d11",
    "headers": None,
    "isFromContact": True,
    "deliveryState": "DELIVERED",
    "senderId": "psid-1",
    "sourceRecipientId": None,
    "conversationId": CONVERSATION_A,
    "channelId": "0d4b4ff3-6a4e-4e0c-8b7c-7a8d7c5e1f22",
    "source": "facebook",
    "content": '{"text":"hello"}',
    "sentAt": T0,
    "updatedAt": None,
}

METADATA = {
    "subject": f"conversation:{CONVERSATION_A}",
    "key": "contact.display_name",
    "value": "Grace Hopper",
    "valueType": "text",
    "timestamp": T0,
}


def contact_v0_schema() -> dict:
    """An older contact schema: no locale, no updated_at, and a nickname field since removed."""
    schema = json.loads((SCHEMAS / "contact.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("locale", "updated_at")]
    schema["fields"].insert(2, {"name": "nickname", "type": ["null", "string"], "default": None})
    return schema


V0_RECORD = {
    "id": CONTACT_ID,
    "display_name": "Grace Hopper",
    "nickname": "Amazing Grace",
    "timezone": -5,
    "via": {"email": "grace@navy.mil"},
    "metadata": '{"rank":"Rear Admiral"}',
    "created_at": T0,
}
V0_AS_CONTACT = {
    "id": CONTACT_ID,
    "display_name": "Grace Hopper",
    "timezone": -5,
    "via": {"email": "grace@navy.mil"},
    "metadata": {"rank": "Rear Admiral"},
    "created_at": "2021-11-16T13:21:03.580Z",
}


# --- the real schema registry (tests/conftest.py: schema_registry, private_registry) -----------


@pytest.fixture
def subject(unique):
    """A subject of this test's own in the session's registry."""
    return f"{unique}.contacts-value"


def fresh_client(url: str, **conf) -> SchemaRegistryClient:
    """A client with an empty cache, so every lookup goes over HTTP."""
    return SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": 5, **conf})


def retried(call, timeout: float = 10.0):
    """call() until it stops raising RegistryError (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except RegistryError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def latest_id(registry, subject: str) -> int:
    status, body = registry.request("GET", f"/subjects/{subject}/versions/latest")
    assert status == 200, body
    return body["id"]


# --- schemas ------------------------------------------------------------------------------------


def test_fingerprints_are_crc64_avro_little_endian():
    # The Avro spec's vector: the fingerprint of "null" is 0x63dd24e7cc258f8a (7195948357588979594).
    assert serialization._fingerprint(parse_schema("null")) == (7195948357588979594).to_bytes(8, "little")
    codec = ContactCodec()
    parsed = parse_schema(json.loads((SCHEMAS / "contact.avsc").read_text()))
    assert codec.avro.fingerprint.hex() == fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")


def test_the_contact_schema_is_pinned():
    # Changing schemas/contact.avsc? Copy the old one to schemas/history/contact-vN.avsc (so every
    # record already on the topic stays readable), only add fields with a default, then update this.
    assert ContactCodec().avro.fingerprint.hex() == "c8b4ffbb00fd5e14"
    # every schema the topic was ever written with is shipped, the first one included
    shipped = {AvroCodec(path).fingerprint.hex() for path in (SCHEMAS / "history").glob("contact-v*.avsc")}
    assert "74b5a8800e6c0351" in shipped


def test_contact_schema_carries_every_field_of_the_contract():
    schema = json.loads((SCHEMAS / "contact.avsc").read_text())
    names = [field["name"] for field in schema["fields"]]
    assert names == ["id", *model.CONTACT_FIELDS, "created_at", "updated_at", "merge_history", *model.HISTORY_ENTRY_FIELDS]
    by_name = {field["name"]: field for field in schema["fields"]}
    assert by_name["merge_history"]["type"] == ["null", {"type": "array", "items": "Contact"}]
    assert by_name["timezone"]["type"] == ["null", "string", "long", "double"]
    address = by_name["address"]["type"][1]
    assert [field["name"] for field in address["fields"]] == list(model.ADDRESS_FIELDS)
    assert "JSON" in by_name["metadata"]["doc"]
    for field in schema["fields"]:
        if field["name"] not in ("id", "created_at"):
            assert field["default"] is None, field["name"]


def test_airy_message_and_metadata_schemas_match_airy():
    message = json.loads((SCHEMAS / "message.avsc").read_text())
    assert (message["namespace"], message["name"]) == ("co.airy.avro.communication", "Message")
    assert [(f["name"], f["type"] if isinstance(f["type"], str) else json.dumps(f["type"])) for f in message["fields"]] == [
        ("id", "string"),
        ("headers", '["null", {"type": "map", "values": "string"}]'),
        ("isFromContact", "boolean"),
        ("deliveryState", '{"name": "DeliveryState", "type": "enum", "symbols": ["PENDING", "FAILED", "DELIVERED"]}'),
        ("senderId", "string"),
        ("sourceRecipientId", '["null", "string"]'),
        ("conversationId", "string"),
        ("channelId", "string"),
        ("source", "string"),
        ("content", "string"),
        ("sentAt", "long"),
        ("updatedAt", '["null", "long"]'),
    ]
    metadata = json.loads((SCHEMAS / "metadata.avsc").read_text())
    assert (metadata["namespace"], metadata["name"]) == ("co.airy.avro.communication", "Metadata")
    assert [f["name"] for f in metadata["fields"]] == ["subject", "key", "value", "valueType", "timestamp"]
    assert metadata["fields"][3]["type"]["symbols"] == ["text", "array", "object", "number", "bool", "nullValue"]
    assert metadata["fields"][3]["default"] == "text"


# --- single-object encoding ---------------------------------------------------------------------


def test_single_object_encoding_of_the_seed_contact():
    data = encode_contact(SEED_CONTACT)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == ContactCodec().avro.fingerprint
    decoded = decode_contact(data)
    assert decoded == SEED_CONTACT
    assert list(decoded) == list(SEED_CONTACT)


@pytest.mark.parametrize("timezone", ["", "+01:00", 2, -5, 0, 2.0, 5.5, -3.75, 0.0])
def test_timezone_keeps_its_type(timezone):
    decoded = decode_contact(encode_contact(dict(SEED_CONTACT, timezone=timezone)))
    assert decoded["timezone"] == timezone and type(decoded["timezone"]) is type(timezone)


def test_metadata_json_is_preserved():
    metadata = {"a": None, "b": True, "c": 1, "d": 1.0, "e": -(2**63), "f": "", "g": {"h": {"i": "ü😀"}}, "k": {}}
    decoded = decode_contact(encode_contact(dict(SEED_CONTACT, metadata=metadata)))
    assert decoded["metadata"] == metadata
    assert type(decoded["metadata"]["d"]) is float and type(decoded["metadata"]["c"]) is int
    assert list(decoded["metadata"]) == list(metadata)


def test_empty_maps_and_merge_history_round_trip():
    older = {"id": "c564cea4-a96f-4ebb-a220-3fb81b6ad522", "title": "old", "created_at": "2020-01-01T00:00:00.000Z"}
    contact = {
        "id": CONTACT_ID,
        "via": {},
        "metadata": {},
        "created_at": "2021-11-16T13:21:03.580Z",
        "merge_history": [older, SEED_CONTACT],
    }
    assert decode_contact(encode_contact(contact)) == contact
    minimal = {"id": CONTACT_ID, "created_at": "2021-11-16T13:21:03.580Z"}
    assert decode_contact(encode_contact(minimal)) == minimal


@pytest.mark.parametrize(
    "contact",
    [
        {"id": CONTACT_ID},  # no created_at
        dict(SEED_CONTACT, nickname="x"),
        dict(SEED_CONTACT, created_at="yesterday"),
        dict(SEED_CONTACT, updated_at=5),
        dict(SEED_CONTACT, via={"email": 3}),
        dict(SEED_CONTACT, timezone=True),
        dict(SEED_CONTACT, timezone=None),
        dict(SEED_CONTACT, address={"zip": "1"}),
        dict(SEED_CONTACT, metadata={"x": float("nan")}),
        dict(SEED_CONTACT, conversations=[CONVERSATION_A]),
        dict(SEED_CONTACT, id=None),
        "not a contact",
    ],
)
def test_encode_refuses_what_does_not_fit(contact):
    with pytest.raises(EncodeError):
        encode_contact(contact)


def test_decode_errors():
    data = encode_contact(SEED_CONTACT)
    bad = [
        b"",
        b"\xc3",
        b"\xc3\x01\x00",
        b"\x01garbage",
        b'{"id": 1}',
        b"\xc3\x01" + b"\x00" * 8 + data[10:],  # unknown fingerprint
        data + b"\x00",  # trailing byte
        b"\x00\x00\x00\x00\x01" + data[10:],  # Confluent-framed, no registry configured
    ]
    bad += [data[:size] for size in range(len(data))]  # every truncation
    for value in bad:
        with pytest.raises(DecodeError):
            decode_contact(value)
    with pytest.raises(DecodeError):
        decode_contact(None)
    with pytest.raises(DecodeError):
        decode_contact("text")


def test_a_record_whose_metadata_is_not_json_is_a_decode_error():
    record = serialization.contact_to_record(SEED_CONTACT)
    record["metadata"] = "{not json"
    data = ContactCodec().avro.encode(record)
    with pytest.raises(DecodeError):
        decode_contact(data)


def test_older_writer_schemas_resolve_against_the_current_schema(tmp_path):
    old = AvroCodec(contact_v0_schema())
    data = old.encode(V0_RECORD)
    assert data[2:10] == old.fingerprint != ContactCodec().avro.fingerprint
    codec = ContactCodec(history=[])
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        codec.decode_contact(data)
    assert codec.add_writer_schema(contact_v0_schema()) == old.fingerprint.hex()
    assert codec.decode_contact(data) == V0_AS_CONTACT
    # the same through a history file, as the project ships them in schemas/history/
    path = tmp_path / "contact-v0.avsc"
    path.write_text(json.dumps(contact_v0_schema()))
    assert ContactCodec(history=[path]).decode_contact(data) == V0_AS_CONTACT
    # and the current schema's own records still take the fast path
    assert codec.decode_contact(encode_contact(SEED_CONTACT)) == SEED_CONTACT


def _without_entry_fields(contact: dict) -> dict:
    """The contact as the first schema could carry it: history entries were bare snapshots."""
    if "merge_history" not in contact:
        return contact
    history = [{k: v for k, v in e.items() if k not in model.HISTORY_ENTRY_FIELDS} for e in contact["merge_history"]]
    return {**contact, "merge_history": history}


def test_records_of_the_first_schema_with_full_snapshots_still_decode_and_merge():
    """Records already on the topic (merge_history of full snapshots, no merged_at / gained)
    decode with the current schema, and such a contact can be merged again."""
    first = AvroCodec(SCHEMAS / "history" / "contact-v1.avsc")
    older = dict(SEED_CONTACT, id="c564cea4-a96f-4ebb-a220-3fb81b6ad522")
    contact = {"id": CONTACT_ID, "display_name": "D", "created_at": "2021-11-16T13:21:03.580Z", "merge_history": [older]}
    data = first.encode(serialization.contact_to_record(contact))
    assert data[2:10] == first.fingerprint != ContactCodec().avro.fingerprint
    decoded = decode_contact(data)
    assert decoded == contact and "gained" not in decoded["merge_history"][0]
    source = model.new_contact({"title": "t"}, "8904adee-38b4-493b-a4d8-272e2e5a6815", T0)
    merged = model.merge_contacts(decoded, source, T0 + 1)
    assert decode_contact(encode_contact(merged)) == merged
    assert merged["merge_history"][0] == older  # the old entry reads as it was
    assert merged["merge_history"][1]["gained"] == ["title"]


@pytest.mark.parametrize(
    "contact",
    [
        dict(SEED_CONTACT, gained=[]),  # entry fields on a contact
        dict(SEED_CONTACT, merged_at="2021-11-16T13:21:03.580Z"),
        dict(SEED_CONTACT, merge_history=[dict(SEED_CONTACT, merge_history=[])]),  # nested history
        dict(SEED_CONTACT, merge_history=[dict(SEED_CONTACT, merged_at="soon")]),
        dict(SEED_CONTACT, merge_history=[dict(SEED_CONTACT, gained="via.email")]),
    ],
)
def test_encode_keeps_entry_fields_in_entries(contact):
    with pytest.raises(EncodeError):
        encode_contact(contact)


def test_a_writer_schema_that_cannot_resolve_is_a_decode_error():
    other = {
        "type": "record",
        "name": "Contact",
        "namespace": "co.airy.avro.contacts",
        "fields": [{"name": "id", "type": "long"}],
    }
    codec = ContactCodec()
    codec.add_writer_schema(other)
    with pytest.raises(DecodeError):
        codec.decode_contact(AvroCodec(other).encode({"id": 5}))


def test_codec_accepts_a_schema_as_dict_path_or_json_text():
    path = SCHEMAS / "metadata.avsc"
    for schema in (path, str(path), path.read_text(), json.loads(path.read_text())):
        assert AvroCodec(schema).decode(AvroCodec(schema).encode(METADATA)) == METADATA
    with pytest.raises(TypeError):
        AvroCodec(42)


def test_message_and_metadata_codecs_single_object():
    messages, metadata = message_codec(), metadata_codec()
    assert messages.decode(messages.encode(MESSAGE)) == MESSAGE
    assert metadata.decode(metadata.encode(METADATA)) == METADATA
    # a Metadata record written without valueType (Airy's default "text") and sentAt stays ms
    assert messages.decode(messages.encode(MESSAGE))["sentAt"] == T0
    with pytest.raises(DecodeError):
        metadata.decode(messages.encode(MESSAGE))
    with pytest.raises(EncodeError):
        messages.encode(dict(MESSAGE, deliveryState="LOST"))


# --- Confluent wire format against the real registry --------------------------------------------


def test_confluent_encoding_frames_with_the_id_the_registry_gave(schema_registry, subject):
    url = schema_registry.url
    codec = ContactCodec(url, subject, registry_client=fresh_client(url))
    data = codec.encode_contact(SEED_CONTACT)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == latest_id(schema_registry, subject) == codec.avro.schema_id
    assert codec.encode_contact(SEED_CONTACT) == data
    # what the registry holds is the contact schema as the project ships it, logical types and all
    status, held = schema_registry.request("GET", f"/schemas/ids/{codec.avro.schema_id}")
    assert status == 200 and json.loads(held["schema"]) == json.loads((SCHEMAS / "contact.avsc").read_text())
    # a reader with an empty cache fetches the writer schema by id
    reader = ContactCodec(url, subject, registry_client=fresh_client(url))
    assert reader.decode_contact(data) == SEED_CONTACT
    # readers accept both framings whatever their configuration
    assert reader.decode_contact(encode_contact(SEED_CONTACT)) == SEED_CONTACT
    assert decode_contact(encode_contact(SEED_CONTACT)) == SEED_CONTACT


def test_known_ids_need_no_registry_and_forgotten_ones_are_registered_again(private_registry, subject):
    """What a codec keeps: its registration (until confirm_every runs out) and every writer
    schema it fetched, for good. A registry that comes back empty gets the schema again, maybe
    under another id; records with the old id still decode in the codecs that read them."""
    url = private_registry.url
    writer = ContactCodec(url, subject, registry_client=fresh_client(url))
    confirming = ContactCodec(url, subject, registry_client=fresh_client(url), confirm_every=0)
    reader = ContactCodec(url, subject, registry_client=fresh_client(url))
    old = writer.encode_contact(SEED_CONTACT)
    assert confirming.encode_contact(SEED_CONTACT) == old
    assert reader.decode_contact(old) == SEED_CONTACT

    private_registry.stop()
    assert writer.encode_contact(SEED_CONTACT) == old  # registered once: no registry needed
    assert reader.decode_contact(old) == SEED_CONTACT  # fetched once: no registry needed
    with pytest.raises(RegistryError) as down:
        confirming.encode_contact(SEED_CONTACT)  # its registration is due again
    assert not isinstance(down.value, SchemaRefused) and subject in str(down.value)
    with pytest.raises(RegistryError):
        ContactCodec(url, subject, registry_client=fresh_client(url)).decode_contact(old)  # may be fine: retry, don't skip

    private_registry.start()  # in memory: empty again
    other_status, other = private_registry.request("POST", "/subjects/other-value/versions", {"schema": '"string"'})
    assert other_status == 200 and other["id"] == writer.avro.schema_id  # the old id now names another schema
    new = retried(lambda: confirming.encode_contact(SEED_CONTACT))  # a failure pauses its retries a second
    assert new[0] == 0 and int.from_bytes(new[1:5], "big") == latest_id(private_registry, subject) != writer.avro.schema_id
    assert new[5:] == old[5:]
    for codec in (confirming, reader):
        assert codec.decode_contact(old) == codec.decode_contact(new) == SEED_CONTACT
    assert ContactCodec(url, subject, registry_client=fresh_client(url)).decode_contact(new) == SEED_CONTACT


def test_a_registry_that_does_not_answer_is_a_registry_error_within_the_timeout(subject):
    with socket.socket() as silent:  # takes connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(RegistryError):
            ContactCodec(url, subject, registry_client=fresh_client(url, timeout=0.5)).encode_contact(SEED_CONTACT)
        assert time.monotonic() - started < 5
        with pytest.raises(RegistryError):
            ContactCodec(url, subject, registry_client=fresh_client(url, timeout=0.5)).decode_contact(b"\x00\x00\x00\x00\x01" + encode_contact(SEED_CONTACT)[10:])


def test_a_subject_whose_rule_refuses_the_schema_is_a_schema_refusal(schema_registry, subject):
    status, _ = schema_registry.request("POST", f"/subjects/{subject}/versions", {"schema": json.dumps({"type": "record", "name": "Contact", "fields": [{"name": "id", "type": "long"}]})})
    assert status == 200
    assert schema_registry.request("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})[0] == 200
    codec = ContactCodec(schema_registry.url, subject, registry_client=fresh_client(schema_registry.url))
    with pytest.raises(SchemaRefused) as refused:
        codec.encode_contact(SEED_CONTACT)
    assert refused.value.status == 409 and refused.value.code == 409
    assert subject in str(refused.value) and "incompatible" in str(refused.value)
    with pytest.raises(SchemaRefused):  # again at once: the same answer, without asking
        codec.avro.register()


def test_confluent_older_writer_schema_resolves(schema_registry, subject):
    url = schema_registry.url
    old = AvroCodec(contact_v0_schema(), url, subject, registry_client=fresh_client(url))
    data = old.encode(V0_RECORD)
    assert data[0] == 0
    reader = ContactCodec(url, subject, registry_client=fresh_client(url))
    assert reader.decode_contact(data) == V0_AS_CONTACT
    # the current schema is BACKWARD compatible with it: the registry takes it as the next version
    assert ContactCodec(url, subject, registry_client=fresh_client(url)).avro.register() != old.schema_id


def test_confluent_decode_errors(schema_registry, subject, unique):
    url = schema_registry.url
    codec = ContactCodec(url, subject, registry_client=fresh_client(url))
    body = encode_contact(SEED_CONTACT)[10:]
    with pytest.raises(DecodeError, match="unknown"):
        codec.decode_contact(b"\x00\x00\x00\x27\x0f" + body)  # id 9999
    status, json_schema = schema_registry.request("POST", f"/subjects/{unique}.json-value/versions", {"schema": '{"type": "object"}', "schemaType": "JSON"})
    assert status == 200
    with pytest.raises(DecodeError, match="not Avro"):
        codec.decode_contact(b"\x00" + json_schema["id"].to_bytes(4, "big") + body)
    status, text_schema = schema_registry.request("POST", f"/subjects/{unique}.text-value/versions", {"schema": '"string"'})
    assert status == 200
    with pytest.raises(DecodeError):
        codec.decode_contact(b"\x00" + text_schema["id"].to_bytes(4, "big") + body)
    good = codec.encode_contact(SEED_CONTACT)
    with pytest.raises(DecodeError):
        codec.decode_contact(good[:-1])
    with pytest.raises(DecodeError, match="no schema registry"):
        ContactCodec().decode_contact(good)


def test_registry_url_builds_a_shared_client(schema_registry, unique):
    url = schema_registry.url
    one, two = ContactCodec(url), message_codec(url, f"{unique}.messages-value")
    assert one.avro.registry is two.registry
    assert message_codec(url).decode(two.encode(MESSAGE)) == MESSAGE
    assert f"{unique}.messages-value" in schema_registry.request("GET", "/subjects")[1]


def test_confluent_kafka_serializers_interoperate(schema_registry, unique):
    """Bytes from confluent-kafka's own AvroSerializer decode here, and ours decode there."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    url = schema_registry.url
    topic = f"{unique}.metadata"
    context = SerializationContext(topic, MessageField.VALUE)
    schema_text = (SCHEMAS / "metadata.avsc").read_text()
    theirs = AvroSerializer(fresh_client(url), schema_text)(METADATA, context)
    ours = metadata_codec(url, f"{topic}-value", registry_client=fresh_client(url))
    assert ours.decode(theirs) == METADATA
    assert ours.encode(METADATA)[:5] == theirs[:5]  # same subject, same schema id
    assert AvroDeserializer(fresh_client(url))(ours.encode(METADATA), context) == METADATA


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contact=merged_contacts())
def test_round_trip_of_any_valid_contact(contact):
    expected = copy.deepcopy(contact)
    assert decode_contact(encode_contact(contact)) == expected
    assert contact == expected  # encoding does not touch its input


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contact=merged_contacts())
def test_any_contact_the_first_schema_wrote_reads_the_same_today(contact):
    old = _without_entry_fields(contact)
    data = AvroCodec(SCHEMAS / "history" / "contact-v1.avsc").encode(serialization.contact_to_record(old))
    assert decode_contact(data) == old


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), prefix=st.sampled_from([b"", b"\xc3\x01", b"\x00\x00\x00\x00\x01"]))
def test_decode_raises_only_decode_errors_on_arbitrary_bytes(data, prefix):
    header = encode_contact(SEED_CONTACT)[:10]
    for value in (prefix + data, header + data):
        try:
            decode_contact(value)
        except DecodeError:
            pass
