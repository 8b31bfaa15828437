"""Contacts the broker could not store: a write that would make a record larger than the contacts
topic's limit is a 413 naming the cause, and nothing of it reaches the topic (real broker)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from contacts_streams.publisher import RECORD_FRAMING_BYTES

WIDE = "😀"  # four bytes of UTF-8: the model's limits count characters, the broker bytes


def wide_via(count: int, start: int = 0) -> dict:
    """`count` via entries of ~9.2 KB each (256-character key, 2048-character value)."""
    return {f"k{i:03d}" + WIDE * 252: WIDE * 2048 for i in range(start, start + count)}


def wide_fields() -> dict:
    """Every scalar and address field at its 2048-character limit: ~100 KB."""
    scalars = {name: WIDE * 2048 for name in ("avatar_url", "title", "gender", "locale", "organization_name")}
    address = {name: WIDE * 2048 for name in ("organization_name", "address_line1", "address_line2", "postcode", "city", "state", "country")}
    return {**scalars, "address": address}


def wide_metadata() -> dict:
    """About 64 KB of metadata (the model's limit is 65536 bytes of JSON)."""
    return {f"m{i}": WIDE * 4000 for i in range(3)} | {"tail": WIDE * 3500}


def post(client, path, body, status):
    response = client.post(path, json=body)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    return response.get_json() if response.data else None


def records_of(kafka: str, topic: str, key: str) -> list[dict]:
    """The committed records of one key on the topic: their operation header and size."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"limits-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found, ended = [], set()
        for _ in range(600):  # at most ~300 s, ends far sooner
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    ended.add(msg.partition())
                elif msg.key() == key.encode():
                    headers = dict(msg.headers() or [])
                    found.append({"operation": headers.get("operation", b"").decode(), "size": len(msg.value() or b"")})
            if len(ended) == len(partitions):
                return found
        raise AssertionError(f"could not read {topic} to its end")
    finally:
        consumer.close()


def test_an_update_past_the_record_limit_is_a_413_and_changes_nothing(client, service, kafka):
    contact = post(client, "/contacts.create", {"display_name": "Big", "via": wide_via(50), **wide_fields()}, 201)
    before = post(client, "/contacts.info", {"id": contact["id"]}, 200)

    # 100 via keys and 64 KB of metadata: each within the model's limits, together over 1 MB
    error = post(client, "/contacts.update", {"id": contact["id"], "via": wide_via(50, 50), "metadata": wide_metadata()}, 413)
    assert contact["id"] in error["message"] and "record limit" in error["message"], error
    assert f"{service.publisher.record_limit} bytes" in error["message"]

    assert post(client, "/contacts.info", {"id": contact["id"]}, 200) == before
    # the same contact still takes changes that fit; the topic holds the create and that one only
    post(client, "/contacts.update", {"id": contact["id"], "title": "still writable"}, 202)
    operations = [r["operation"] for r in records_of(kafka, service.config.contacts_topic, contact["id"])]
    assert operations == ["created", "updated"]


def test_a_merge_past_the_record_limit_is_a_413_and_both_contacts_stay(client, service, kafka):
    destination = post(client, "/contacts.create", {"display_name": "D", "via": wide_via(60)}, 201)
    source = post(client, "/contacts.create", {"display_name": "S", "via": wide_via(60, 100)}, 201)

    error = post(client, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 413)
    assert error["field"] == "source_id"
    assert error["message"].startswith(f"merging {source['id']} into {destination['id']} would push contact {destination['id']}")
    assert "record limit" in error["message"]

    assert post(client, "/contacts.info", {"id": destination["id"]}, 200)["merge_history"] == []
    assert post(client, "/contacts.info", {"id": source["id"]}, 200)["display_name"] == "S"
    # nothing was half-applied: no merged record, no merged_away tombstone
    post(client, "/contacts.update", {"id": source["id"], "title": "t"}, 202)
    post(client, "/contacts.update", {"id": destination["id"], "title": "t"}, 202)
    topic = service.config.contacts_topic
    assert [r["operation"] for r in records_of(kafka, topic, destination["id"])] == ["created", "updated"]
    assert [r["operation"] for r in records_of(kafka, topic, source["id"])] == ["created", "updated"]


def test_an_import_with_one_contact_past_the_limit_imports_none(client, service):
    small = {"display_name": "small", "conversations": {str(uuid.uuid4()): "facebook"}}
    huge = {"display_name": "huge", "via": wide_via(100), "metadata": wide_metadata(), **wide_fields()}
    error = post(client, "/contacts.import", [small, dict(small, conversations={str(uuid.uuid4()): "google"}), huge], 413)
    assert error["field"] == "[2]" and error["message"].startswith("[2]: the contact would be"), error
    assert post(client, "/contacts.list", {}, 200)["pagination_data"]["total"] == 0
    # the conversations were not claimed either: importing them again works
    assert len(post(client, "/contacts.import", [small], 201)["data"]) == 1


def test_merge_history_entries_are_served_with_what_the_destination_gained(client):
    destination = post(client, "/contacts.create", {"display_name": "D", "via": {"email": "d@example.org"}}, 201)
    conversation = str(uuid.uuid4())
    source = post(
        client,
        "/contacts.create",
        {"display_name": "S", "title": "Dr", "via": {"email": "s@example.org", "phone": "+4930123"}, "conversations": {conversation: "facebook"}},
        201,
    )
    merged = post(client, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 200)
    (entry,) = merged["merge_history"]
    assert {k: entry[k] for k in source} == source
    assert entry["merged_into"] == destination["id"] and entry["merged_at"] == merged["updated_at"]
    assert entry["gained"] == ["title", "via.phone", f"conversations.{conversation}"]
    assert post(client, "/contacts.info", {"id": destination["id"]}, 200)["merge_history"] == [entry]


def test_the_limit_is_the_contacts_topics_max_message_bytes(kafka, make_config, start_service):
    """A topic with a smaller limit than the broker's: the service reads it at start, refuses
    what is over it, and still writes imports of many records near it (its batches fit)."""
    config = make_config()
    topic_limit = 100_000
    admin = AdminClient({"bootstrap.servers": kafka})
    new = NewTopic(config.contacts_topic, config.contacts_partitions, 1, config={"cleanup.policy": "compact", "max.message.bytes": str(topic_limit)})
    for future in admin.create_topics([new]).values():
        future.result(30)
    service = start_service(config)
    assert service.publisher.record_limit == topic_limit - RECORD_FRAMING_BYTES

    from api.app import create_app

    client = create_app(config, service).test_client()
    error = post(client, "/contacts.create", {"via": wide_via(12)}, 413)  # ~110 KB
    assert f"({topic_limit - RECORD_FRAMING_BYTES} bytes)" in error["message"]
    # ~74 KB each: ten of them share three partitions, so batches would pass the limit unless
    # the producer's batch.size follows it
    imported = post(client, "/contacts.import", [{"display_name": f"n{i}", "via": wide_via(8, 10 * i)} for i in range(10)], 201)
    assert len(imported["data"]) == 10
    assert post(client, "/contacts.list", {}, 200)["pagination_data"]["total"] == 10


def post_retrying_timeouts(client, path, body, status, within_s: float = 60.0):
    """As a client would: a 503 whose outcome is unknown is sent again (the writer may still be
    recovering from the refusal before, see below), until another answer or the deadline."""
    deadline = time.monotonic() + within_s
    while True:
        response = client.post(path, json=body)
        if response.status_code != 503 or "outcome of the write is unknown" not in response.get_data(as_text=True):
            break
        assert time.monotonic() < deadline, "the writer answered nothing but timeouts for a minute"
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    return response.get_json() if response.data else None


def test_a_size_refusal_by_the_client_library_is_a_413_too(client, service, kafka):
    """Should the check's allowance for framing ever fall short, the producer's own refusal
    (MSG_SIZE_TOO_LARGE) is still bad input, not a 503 that a retry cannot fix. (A refusal
    costs the writer's producer an epoch bump: under load the next write may time out while it
    recovers, and a retry then gets its answer.)"""
    service.publisher.record_limit = 10**9  # as if the check let it through
    error = post(client, "/contacts.create", {"via": wide_via(100), "metadata": wide_metadata(), **wide_fields()}, 413)
    assert "record limit" in error["message"]
    # a transaction (an import) the same way, and nothing of it was written
    small = {"display_name": "small"}
    post_retrying_timeouts(client, "/contacts.import", [small, {"via": wide_via(100), "metadata": wide_metadata(), **wide_fields()}], 413)
    assert post(client, "/contacts.list", {}, 200)["pagination_data"]["total"] == 0
    assert len(post(client, "/contacts.import", [small, small], 201)["data"]) == 2
