"""What the stream-stage tests share: a producer of the platform's records, reading a topic to its
end, and waiting on a condition (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import KafkaError, KafkaException, Consumer, Producer, TopicPartition

from contacts_dev.airy import airy_message, airy_metadata
from contacts_streams.serialization import message_codec, metadata_codec


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

    def raw(self, topic: str, value: bytes, key: bytes = b"poison") -> None:
        self.producer.produce(topic, key=key, value=value)

    def flush(self) -> None:
        assert self.producer.flush(20) == 0

    def read(self, topic: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes | None, dict]]:
        """(key, value, headers) of every committed record of a topic, in partition order."""
        return read_topic(self.kafka, topic, timeout)

    def contact_records(self) -> list[tuple[str, str]]:
        """(contact id, operation) of every record on the contacts topic, in partition order."""
        return [(key.decode(), headers["operation"].decode()) for key, _value, headers in self.read(self.config.contacts_topic)]


def read_records(kafka: str, topic: str, timeout: float = 20.0, committed: bool = True) -> list:
    """Every committed record of a topic (committed=False: aborted ones too), read to its end
    within `timeout`: (partition, offset, key, value, headers as received)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"reader-{uuid.uuid4()}",
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records, ended, deadline = [], set(), time.monotonic() + timeout
        while len(ended) < len(partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout}s"
            for msg in consumer.consume(2000, 0.5):
                if msg.error():
                    ended.add(msg.partition())
                    continue
                records.append((msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers() or []))
        return records
    finally:
        consumer.close()


def read_topic(kafka: str, topic: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes | None, dict]]:
    """(key, value, headers) of every committed record of a topic, in partition order."""
    return [(key, value, dict(headers)) for _p, _o, key, value, headers in read_records(kafka, topic, timeout)]


def group_done(kafka: str, group: str, topics: list[str]) -> bool:
    """No committed record lies after the group's committed offsets in these topics: the
    group has decided about everything there is (transaction markers don't count)."""
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            try:
                committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            except KafkaException as err:  # the group coordinator moving or loading: ask again
                if err.args[0].retriable() or err.args[0].code() == KafkaError.NOT_COORDINATOR:
                    return False
                raise
            consumer.assign([TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed])
            ended, deadline = set(), time.monotonic() + 10
            while len(ended) < len(partitions):
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                for msg in consumer.consume(100, 0.5):
                    if msg.error() is None:
                        return False
                    ended.add(msg.partition())
            consumer.unassign()
        return True
    finally:
        consumer.close()


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
