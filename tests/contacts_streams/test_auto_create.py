"""Auto-create on the real broker: one contact per new conversation, exactly once."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from contacts_streams import model
from contacts_dev.airy import airy_message, airy_metadata
from contacts_streams.serialization import message_codec, metadata_codec

SOURCES = ["facebook", "twilio.sms", "google", "chatplugin"]


@pytest.fixture
def airy(kafka, make_config, new_topic):
    """The platform's messages and metadata topics of this test, and a producer of Airy records."""
    config = make_config(auto_create_enabled=True)
    new_topic(config.messages_topic.split(".", 1)[1], partitions=4)
    new_topic(config.metadata_topic.split(".", 1)[1], partitions=2)
    return Airy(kafka, config)


class Airy:
    def __init__(self, kafka: str, config):
        self.config = config
        self.producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True})
        self.messages, self.metadata = message_codec(), metadata_codec()
        self.kafka = kafka

    def message(self, conversation_id: str, source: str) -> None:
        message_id = str(uuid.uuid4())
        record = airy_message(conversation_id, source, message_id, int(time.time() * 1000))
        self.producer.produce(self.config.messages_topic, key=message_id.encode(), value=self.messages.encode(record))

    def meta(self, conversation_id: str, key: str, value: str) -> None:
        record = airy_metadata(conversation_id, key, value, int(time.time() * 1000))
        self.producer.produce(self.config.metadata_topic, key=f"conversation:{conversation_id}:{key}".encode(), value=self.metadata.encode(record))

    def raw(self, topic: str, value: bytes) -> None:
        self.producer.produce(topic, key=b"poison", value=value)

    def flush(self) -> None:
        assert self.producer.flush(20) == 0

    def contact_records(self) -> list[tuple[str, str]]:
        """(contact id, operation) of every record on the contacts topic, in partition order."""
        consumer = Consumer({"bootstrap.servers": self.kafka, "group.id": f"reader-{uuid.uuid4()}", "isolation.level": "read_committed", "enable.partition.eof": True})
        topic = self.config.contacts_topic
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records, ended, deadline = [], set(), time.monotonic() + 20
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    ended.add(msg.partition())
                    continue
                headers = dict(msg.headers() or [])
                records.append((msg.key().decode(), headers["operation"].decode()))
        consumer.close()
        return records


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def conversations(n: int) -> list[tuple[str, str]]:
    return [(str(uuid.uuid4()), SOURCES[i % len(SOURCES)]) for i in range(n)]


def interleaved(convs, per_conversation: int):
    """Messages of all conversations mixed, several per conversation."""
    return [c for _ in range(per_conversation) for c in convs]


def test_every_new_conversation_gets_exactly_one_contact(airy, start_service):
    convs = conversations(40)
    for conversation_id, source in interleaved(convs, 5):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 40, what="40 contacts")
    for conversation_id, source in convs:
        contact = service.contacts.info_by_conversation(conversation_id)
        assert contact["id"] == model.contact_id_for_conversation(conversation_id)
        assert contact["conversations"] == {conversation_id: source}
        assert contact["display_name"] == model.default_display_name(conversation_id, source)
    created = [cid for cid, op in airy.contact_records() if op == "auto_created"]
    assert sorted(created) == sorted(model.contact_id_for_conversation(c) for c, _ in convs)
    assert "contacts_auto_created_total 40.0" in _metrics(service)


def _metrics(service) -> str:
    from prometheus_client import generate_latest

    return generate_latest(service.metrics.registry).decode()


def test_replay_restart_and_a_second_instance_create_nothing_twice(airy, make_config, start_service, tmp_path):
    first, second, third = conversations(20), conversations(20), conversations(20)
    for conversation_id, source in interleaved(first, 3):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 20, what="first 20")
    service.close()  # restart mid-stream

    for conversation_id, source in interleaved(first + second, 2):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 40, what="40 after restart")

    # A second instance joins the group (a rebalance) while messages keep coming. Messages are
    # keyed by message id, so one new conversation's first messages reach both instances at once.
    other = start_service(
        make_config(auto_create_enabled=True, instance_id="other", state_dir=str(tmp_path / "other"))
    )
    for conversation_id, source in interleaved(first + second + third, 3):
        airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: service.store.count() == 60 and other.store.count() == 60, what="60 on both instances")
    other.close()
    service.close()

    # A replay from the start under a new group: every conversation has its contact already.
    replay = start_service(make_config(auto_create_enabled=True, application_id=airy.config.application_id + "-replay", instance_id="replay"))
    wait_for(lambda: replay.router.ready, what="replaying consumer assigned")
    time.sleep(3)  # the replaying group reads all 240 messages in far less
    assert replay.store.count() == 60
    created = [cid for cid, op in airy.contact_records() if op == "auto_created"]
    assert len(created) == len(set(created)) == 60


def test_metadata_name_replaces_the_default_but_never_a_name_a_person_set(airy, start_service):
    (named_later, src1), (edited, src2), (avatar_only, src3) = conversations(3)
    for conversation_id, source in [(named_later, src1), (edited, src2), (avatar_only, src3)]:
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 3, what="3 contacts")
    edited_id = model.contact_id_for_conversation(edited)
    service.contacts.update(edited_id, {"display_name": "Set By A Person"})

    airy.meta(named_later, "contact.display_name", "Real Name")
    airy.meta(named_later, "contact.avatar_url", "https://example.org/a.png")
    airy.meta(edited, "contact.display_name", "Name From The Channel")
    airy.meta(avatar_only, "contact.avatar_url", "https://example.org/b.png")
    airy.flush()
    wait_for(lambda: service.contacts.info_by_conversation(avatar_only).get("avatar_url"), what="avatar")
    wait_for(lambda: service.contacts.info_by_conversation(named_later).get("display_name") == "Real Name", what="real name")
    wait_for(lambda: service.contacts.info_by_conversation(named_later).get("avatar_url"), what="avatar with the name")
    assert service.contacts.info_by_conversation(named_later)["avatar_url"] == "https://example.org/a.png"
    assert service.contacts.info_by_conversation(edited)["display_name"] == "Set By A Person"
    assert service.contacts.info_by_conversation(avatar_only)["display_name"] == model.default_display_name(avatar_only, src3)

    # Metadata that arrives before the first message names the contact right away.
    early, source = conversations(1)[0]
    airy.meta(early, "contact.display_name", "Known Early")
    airy.flush()
    time.sleep(0.5)
    airy.message(early, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(early), what="early contact")
    assert service.contacts.info_by_conversation(early)["display_name"] == "Known Early"


def test_a_merged_away_contacts_conversation_gets_no_new_contact(airy, start_service):
    (a, src_a), (b, src_b) = conversations(2)
    airy.message(a, src_a)
    airy.message(b, src_b)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 2, what="2 contacts")
    id_a, id_b = model.contact_id_for_conversation(a), model.contact_id_for_conversation(b)
    service.contacts.merge(id_a, id_b)
    for _ in range(3):
        airy.message(a, src_a)
    airy.meta(a, "contact.avatar_url", "https://example.org/merged.png")
    airy.flush()
    wait_for(lambda: service.contacts.info(id_b).get("avatar_url"), what="metadata reaching the destination")
    assert service.store.count() == 1
    assert service.contacts.info_by_conversation(a)["id"] == id_b
    assert service.store.get(id_a) is None


def test_a_poison_record_is_skipped_counted_and_its_neighbours_kept(airy, start_service):
    convs = conversations(6)
    for i, (conversation_id, source) in enumerate(convs):
        airy.message(conversation_id, source)
        if i in (1, 4):
            airy.raw(airy.config.messages_topic, b"\xc3\x01not avro at all")
    airy.raw(airy.config.metadata_topic, b"\x00\x00\x00\x00\x07garbage")
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 6, what="6 contacts around the poison")
    text = _metrics(service)
    poisoned = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("contacts_poison_records_total{"))
    assert poisoned == 3
    assert service.router.failure is None and service.writer.failure is None


def test_the_switch_off_creates_nothing(airy, make_config, start_service):
    convs = conversations(5)
    for conversation_id, source in convs:
        airy.message(conversation_id, source)
    airy.flush()
    off = start_service(make_config(auto_create_enabled=False))
    assert off.router is None
    time.sleep(2)
    assert off.store.count() == 0
    assert airy.contact_records() == []
    off.close()
    # The same records do create contacts once the switch is on: they were valid all along.
    on = start_service(airy.config)
    wait_for(lambda: on.store.count() == 5, what="5 contacts with the switch on")


def test_auto_create_and_http_edits_never_lose_each_other(airy, start_service):
    convs = conversations(30)
    for conversation_id, source in convs:
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 30, what="30 contacts")
    # HTTP edits and metadata fills race on the same contacts: both kinds of change must land.
    for conversation_id, _ in convs:
        airy.meta(conversation_id, "contact.avatar_url", f"https://example.org/{conversation_id}.png")
    airy.flush()
    for conversation_id, _ in convs:
        service.contacts.update(model.contact_id_for_conversation(conversation_id), {"title": "Customer"})
    for conversation_id, _ in convs:
        wait_for(lambda c=conversation_id: service.contacts.info_by_conversation(c).get("avatar_url"), what="avatars")
        contact = service.contacts.info_by_conversation(conversation_id)
        assert contact["title"] == "Customer"
        assert contact["avatar_url"] == f"https://example.org/{conversation_id}.png"


def test_a_deleted_contacts_conversation_gets_a_new_contact_with_its_next_message(airy, start_service):
    (conversation_id, source), = conversations(1)
    airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 1, what="the first contact")
    first = service.contacts.info_by_conversation(conversation_id)
    service.router.reroute_after_s = 0.0  # the window in which the router trusts its own memory
    service.contacts.delete(first["id"])
    airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(conversation_id), what="a new contact")
    again = service.contacts.info_by_conversation(conversation_id)
    assert again["id"] == first["id"] and again["created_at"] > first["created_at"]
    assert service.store.count() == 1
