"""The Kafka features the service relies on, proven on the session's real broker."""

from __future__ import annotations

import time

import pytest

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType


def drain(consumer: Consumer, expect: int, timeout: float = 20.0) -> list:
    """Poll until `expect` records arrived or the time is up; returns what came."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            if msg.error() is None:
                got.append(msg)
    return got


def read_committed(kafka: str, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def test_compacted_topic_is_created_with_its_policy(kafka, new_topic):
    topic = new_topic("contacts", partitions=3, compacted=True)
    admin = AdminClient({"bootstrap.servers": kafka})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3


def test_idempotent_acks_all_producer_delivers_in_order(kafka, new_topic, unique):
    topic = new_topic()
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "acks": "all"})
    reports = []
    for i in range(50):
        producer.produce(topic, key=b"k", value=str(i).encode(), on_delivery=lambda err, msg: reports.append((err, msg.offset())))
    assert producer.flush(20) == 0
    assert [err for err, _ in reports] == [None] * 50
    assert [offset for _, offset in reports] == list(range(50))
    consumer = read_committed(kafka, unique, topic)
    try:
        assert [m.value() for m in drain(consumer, 50)] == [str(i).encode() for i in range(50)]
    finally:
        consumer.close()


def test_committed_transaction_is_visible_and_aborted_one_never(kafka, new_topic, unique):
    topic = new_topic(partitions=2)
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"{unique}-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=b"committed")
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"last", value=b"committed")
    producer.commit_transaction(30)

    consumer = read_committed(kafka, unique, topic)
    try:
        values = [m.value() for m in drain(consumer, 11)]
        values += [m.value() for m in drain(consumer, 1, timeout=2)]  # nothing more may come
    finally:
        consumer.close()
    assert values == [b"committed"] * 11


def test_offsets_commit_with_the_transaction(kafka, new_topic, unique):
    source, sink = new_topic("in"), new_topic("out")
    seed = Producer({"bootstrap.servers": kafka})
    for i in range(20):
        seed.produce(source, value=str(i).encode())
    seed.flush(10)

    group = f"{unique}-group"
    consumer = read_committed(kafka, group, source)
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"{unique}-eos"})
    producer.init_transactions(30)
    batch = drain(consumer, 20)
    assert len(batch) == 20
    producer.begin_transaction()
    for msg in batch:
        producer.produce(sink, value=msg.value())
    producer.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    consumer.close()

    committed = Consumer({"bootstrap.servers": kafka, "group.id": group}).committed([TopicPartition(source, 0)], timeout=10)
    assert committed[0].offset == 20
    reader = read_committed(kafka, f"{unique}-reader", sink)
    try:
        assert len(drain(reader, 20)) == 20
    finally:
        reader.close()


def test_a_fenced_producer_cannot_commit(kafka, new_topic, unique):
    topic = new_topic()
    old = Producer({"bootstrap.servers": kafka, "transactional.id": f"{unique}-fence"})
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, value=b"zombie")
    new = Producer({"bootstrap.servers": kafka, "transactional.id": f"{unique}-fence"})
    new.init_transactions(30)  # bumps the epoch and aborts the zombie's open transaction
    with pytest.raises(KafkaException) as raised:
        old.commit_transaction(10)
    error = raised.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), error
    new.begin_transaction()
    new.produce(topic, value=b"successor")
    new.commit_transaction(30)
    reader = read_committed(kafka, f"{unique}-reader", topic)
    try:
        assert [m.value() for m in drain(reader, 1)] == [b"successor"]
    finally:
        reader.close()
