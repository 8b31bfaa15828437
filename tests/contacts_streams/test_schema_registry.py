"""The service with KAFKA_SCHEMA_REGISTRY_URL, on the real broker and a real schema registry
(AxonOps Schema Registry, Confluent's REST API; contacts_dev.schema_registry): what the
platform's other services read, a registry outage, and a subject that refuses the schema.
The registry's error texts differ from Confluent's: assertions are on statuses and codes."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from support import CONVERSATION_A

from api.app import create_app
from contacts_streams.service import FatalError, Service

METADATA = {"crm": {"id": 42, "score": 1.0, "tags": None}, "vip": True, "note": "ü😀"}


def contacts_topic_records(config, wanted: int, timeout: float = 30.0) -> list:
    """The contacts topic's first `wanted` records (read_committed), read as any consumer would."""
    consumer = Consumer({"bootstrap.servers": config.kafka_brokers, "group.id": "reader", "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(config.contacts_topic, timeout=10).topics[config.contacts_topic].partitions
        consumer.assign([TopicPartition(config.contacts_topic, p, 0) for p in partitions])
        records, deadline = [], time.monotonic() + timeout
        while len(records) < wanted:
            assert time.monotonic() < deadline, f"read {len(records)} of {wanted} records"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append(msg)
        return records
    finally:
        consumer.close()


def registered_id(url: str, subject: str) -> int:
    return SchemaRegistryClient({"url": url}).get_latest_version(subject).schema_id


def test_records_written_with_the_registry_are_read_by_a_plain_avro_deserializer(make_config, start_service, schema_registry):
    config = make_config(schema_registry_url=schema_registry.url)
    client = create_app(config, start_service(config)).test_client()
    ada = client.post("/contacts.create", json={"display_name": "Ada", "timezone": 5.5, "metadata": METADATA, "via": {"email": "ada@example.org"}}).get_json()
    grace = client.post("/contacts.create", json={"display_name": "Grace", "timezone": -5, "conversations": {CONVERSATION_A: "facebook"}}).get_json()
    alan = client.post("/contacts.create", json={"display_name": "Alan", "timezone": "+01:00", "title": "Dr"}).get_json()
    merged = client.post("/contacts.merge", json={"source_id": alan["id"], "destination_id": ada["id"]})
    assert merged.status_code == 200

    # As a Java service of the platform reads the topic: Confluent's deserializer, the writer
    # schema fetched by the id in each record, nothing of this project's code.
    records = contacts_topic_records(config, 5)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": schema_registry.url}))
    context = SerializationContext(config.contacts_topic, MessageField.VALUE)
    schema_id = registered_id(schema_registry.url, f"{config.contacts_topic}-value")
    states, operations = {}, {}
    for msg in sorted(records, key=lambda m: m.timestamp()[1]):
        key = msg.key().decode()
        operations.setdefault(key, []).append(dict(msg.headers())["operation"].decode())
        if msg.value() is None:
            states[key] = None
            continue
        assert msg.value()[0] == 0 and int.from_bytes(msg.value()[1:5], "big") == schema_id
        states[key] = deserialize(msg.value(), context)

    assert operations == {ada["id"]: ["created", "merged"], grace["id"]: ["created"], alan["id"]: ["created", "merged_away"]}
    assert states[alan["id"]] is None  # the merged-away tombstone
    ada_record, grace_record = states[ada["id"]], states[grace["id"]]
    assert ada_record["id"] == ada["id"] and ada_record["display_name"] == "Ada"
    assert isinstance(ada_record["metadata"], str) and json.loads(ada_record["metadata"]) == METADATA  # JSON text
    assert ada_record["via"] == {"email": "ada@example.org"}
    # the timezone union keeps the type the client sent
    assert ada_record["timezone"] == 5.5 and type(ada_record["timezone"]) is float
    assert grace_record["timezone"] == -5 and type(grace_record["timezone"]) is int
    assert grace_record["conversations"] == {CONVERSATION_A: "facebook"}
    assert grace_record["metadata"] is None and grace_record["address"] is None
    # timestamp-millis, as the registered schema says: a datetime to the client
    assert grace_record["created_at"] == datetime.fromisoformat(grace["created_at"].replace("Z", "+00:00"))
    # the merge: Alan's title filled Ada's gap, and the history names what was merged
    assert ada_record["title"] == "Dr"
    history = ada_record["merge_history"]
    assert [entry["id"] for entry in history] == [alan["id"]]
    assert history[0]["timezone"] == "+01:00"


def test_a_registry_outage_answers_503_on_writes_keeps_reads_and_recovers_without_a_restart(make_config, start_service, private_registry):
    write_timeout_s = 3.0
    config = make_config(schema_registry_url=private_registry.url, schema_registry_check_ms=200, write_timeout_ms=int(write_timeout_s * 1000))
    service = start_service(config)
    client = create_app(config, service).test_client()
    subject = f"{config.contacts_topic}-value"
    before = client.post("/contacts.create", json={"display_name": "Before", "metadata": METADATA}).get_json()
    old_id = service.codec.avro.schema_id
    assert service.store.get_bytes(before["id"])[:5] == b"\x00" + old_id.to_bytes(4, "big")

    private_registry.stop()
    deadline = time.monotonic() + 30
    while True:  # the registration is due again within 200 ms; writes meanwhile may still pass
        started = time.monotonic()
        answer = client.post("/contacts.create", json={"display_name": "During"})
        took = time.monotonic() - started
        if answer.status_code != 201:
            break
        assert time.monotonic() < deadline, "writes kept succeeding with the registry down"
        time.sleep(0.05)
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert took < write_timeout_s
    assert "schema registry" in answer.get_json()["message"] and answer.headers["Retry-After"].isdigit()
    update = client.post("/contacts.update", json={"id": before["id"], "title": "During"})
    assert update.status_code == 503 and update.headers["Retry-After"]
    # reads answer, and nothing died
    assert client.post("/contacts.info", json={"id": before["id"]}).get_json()["metadata"] == METADATA
    assert client.post("/contacts.list", json={}).status_code == 200
    assert client.get("/actuator/health/liveness").status_code == 200
    assert client.post("/contacts.info", json={"id": before["id"]}).get_json().get("title") is None  # the 503 wrote nothing

    private_registry.start()  # in memory: it comes back empty
    status, other = private_registry.request("POST", f"/subjects/{config.contacts_topic}-other-value/versions", {"schema": '"string"'})
    assert status == 200 and other["id"] == old_id  # the old id now names another schema
    deadline = time.monotonic() + 30
    while (after := client.post("/contacts.create", json={"display_name": "After"})).status_code != 201:
        assert after.status_code == 503 and time.monotonic() < deadline, after.get_data(as_text=True)
        time.sleep(0.1)
    new_id = service.codec.avro.schema_id
    assert new_id == registered_id(private_registry.url, subject) != old_id
    assert service.store.get_bytes(after.get_json()["id"])[:5] == b"\x00" + new_id.to_bytes(4, "big")
    # the record written under the old id still reads, and takes updates
    assert client.post("/contacts.info", json={"id": before["id"]}).get_json() == {**before, "merge_history": []}
    assert client.post("/contacts.update", json={"id": before["id"], "title": "After"}).status_code == 202
    assert client.post("/contacts.info", json={"id": before["id"]}).get_json()["title"] == "After"
    assert client.get("/actuator/health").status_code == 200


def register_incompatible(registry, subject: str) -> None:
    """What another service might have put under the subject: a Contact whose id is a long."""
    schema = {"type": "record", "name": "Contact", "namespace": "co.airy.avro.contacts", "fields": [{"name": "id", "type": "long"}]}
    assert registry.request("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})[0] == 200
    assert registry.request("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})[0] == 200


def test_a_subject_holding_an_incompatible_schema_stops_the_service_at_start(make_config, schema_registry):
    config = make_config(schema_registry_url=schema_registry.url)
    subject = f"{config.contacts_topic}-value"
    register_incompatible(schema_registry, subject)
    service = Service(config)
    try:
        with pytest.raises(FatalError) as fatal:
            service.start(wait=True, timeout=60)
        message = str(fatal.value)
        assert subject in message and "incompatible" in message and "409" in message
        assert service.fatal is fatal.value
        client = create_app(config, service).test_client()
        liveness = client.get("/actuator/health/liveness")
        assert liveness.status_code == 503 and subject in liveness.get_json()["reason"]
        assert client.get("/actuator/health/readiness").status_code == 503
        assert len(SchemaRegistryClient({"url": schema_registry.url}).get_versions(subject)) == 1  # nothing registered
    finally:
        service.close()


def test_a_registry_down_at_start_is_waited_for_not_fatal(make_config, start_service, private_registry):
    private_registry.stop()
    config = make_config(schema_registry_url=private_registry.url)
    service = start_service(config, wait=False)
    client = create_app(config, service).test_client()
    deadline = time.monotonic() + 30
    while "schema registry unreachable" not in (reason := client.get("/actuator/health").get_json()["reason"]):
        assert time.monotonic() < deadline, reason
        time.sleep(0.1)
    assert client.get("/actuator/health/liveness").status_code == 200 and service.fatal is None
    private_registry.start()
    service.wait_ready(60)
    assert client.post("/contacts.create", json={"display_name": "Late"}).status_code == 201
    assert service.codec.avro.schema_id == registered_id(private_registry.url, f"{config.contacts_topic}-value")


def test_a_hung_registry_times_writes_out_and_the_store_waits_for_it(make_config, start_service, private_registry, kafka, caplog):
    """A registry that takes connections but answers nothing (SIGSTOP): a write answers 503
    within WRITE_TIMEOUT_MS, and a record whose writer schema the store must fetch meanwhile is
    applied once the registry answers again, not skipped as poison."""
    from contacts_streams.serialization import AvroCodec, contact_to_record

    write_timeout_s = 3.0
    config = make_config(schema_registry_url=private_registry.url, schema_registry_check_ms=200, write_timeout_ms=int(write_timeout_s * 1000))
    service = start_service(config)
    client = create_app(config, service).test_client()
    assert client.post("/contacts.create", json={"display_name": "Before"}).status_code == 201
    # Another writer's record under a schema version this service has not seen (one field more).
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "contact.avsc").read_text())
    schema["fields"].append({"name": "nickname", "type": ["null", "string"], "default": None})
    newer = AvroCodec(schema, private_registry.url, f"{config.contacts_topic}-value")
    contact = {"id": "0b9b5f8e-3f5c-4a8e-9d55-8f8a0d1c2e3f", "display_name": "Newer", "created_at": "2024-01-01T00:00:00.000Z"}
    value = newer.encode({**contact_to_record(contact), "nickname": "N"})

    private_registry.pause()
    try:
        # A write within SCHEMA_REGISTRY_CHECK_MS of the last confirmation rightly trusts it:
        # let that window pass, or on a fast machine the write below never asks the registry.
        time.sleep(config.schema_registry_check_ms / 1000 + 0.1)
        started = time.monotonic()
        answer = client.post("/contacts.create", json={"display_name": "During"})
        took = time.monotonic() - started
        assert answer.status_code == 503 and took < write_timeout_s, (answer.status_code, took)
        producer = Producer({"bootstrap.servers": kafka})
        producer.produce(config.contacts_topic, key=contact["id"].encode(), value=value, headers=[("operation", b"created")])
        assert producer.flush(10) == 0
        del producer
        deadline = time.monotonic() + 30
        while not any("the store waits for the schema registry" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the store never met the hung registry"
            time.sleep(0.1)
        assert client.get("/actuator/health/liveness").status_code == 200
    finally:
        private_registry.resume()
    deadline = time.monotonic() + 30
    while (info := client.post("/contacts.info", json={"id": contact["id"]})).status_code != 200:
        assert time.monotonic() < deadline, info.get_data(as_text=True)
        time.sleep(0.1)
    assert info.get_json()["display_name"] == "Newer"
    assert not service.metrics.registry.get_sample_value("contacts_poison_records_total", {"topic": config.contacts_topic})
    assert client.post("/contacts.create", json={"display_name": "After"}).status_code == 201
