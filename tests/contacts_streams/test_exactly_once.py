"""The exactly-once loop on the real broker: a record that can never be processed is found inside
its batch and dead-lettered, and every other record of the batch is processed once, in order."""

from __future__ import annotations

import threading

from confluent_kafka import Consumer, Message, Producer
from streamkit import group_done, read_topic, wait_for

from contacts_streams.exactly_once import ExactlyOnceLoop
from contacts_streams.transaction import Produced
from contacts_streams.metrics import Metrics
from contacts_streams.topics import dead_letter_topic, ensure_topics


class Copy(ExactlyOnceLoop):
    """Copies each record to another topic. Its process fails as a whole for a batch holding
    ``b"fails"`` (an error that names no record), and ``b"huge"`` becomes a record over the
    producer's size limit (the broker side of the same: refused at commit)."""

    name = "copy"

    def __init__(self, config, metrics, source: str, target: str):
        super().__init__(config, metrics, group_id=f"{config.application_id}-copy", topics=[source], transactional_id=f"{config.application_id}-copy")
        self.target = target
        self.transactions = 0
        self.lock = threading.Lock()

    def process(self, consumer: Consumer, messages: list[Message]) -> None:
        if not messages:
            return
        if any(msg.value() == b"fails" for msg in messages):
            raise ValueError("this batch cannot be copied")
        out = [Produced(self.target, msg.key(), msg.value() * (2_000_000 if msg.value() == b"huge" else 1), []) for msg in messages]
        self.commit(consumer, self.next_offsets(messages), out)
        with self.lock:
            self.transactions += 1


def run_to_the_end(loop: Copy, kafka: str, config, source: str) -> None:
    """Run the loop until its group committed past every record of ``source``; it must not fail."""
    loop.start()
    try:
        wait_for(lambda: group_done(kafka, f"{config.application_id}-copy", [source]), what="the loop to commit past every record")
    finally:
        loop.stop()
    assert loop.failure is None


def test_a_byte_bound_splits_what_is_pending_into_transactions_and_loses_or_repeats_nothing(make_config, new_topic, kafka):
    """The writer's bound (max_batch_bytes): records over it wait for the next transaction (the
    consumer is sought back to them); each record is copied once, in order, per partition."""
    config = make_config()
    ensure_topics(config)
    source, target = new_topic("source", partitions=3), new_topic("target")
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "linger.ms": 50})
    values = [f"r{i:03d}".encode() * 25 for i in range(300)]  # 100 bytes each
    for i, value in enumerate(values):
        producer.produce(source, key=str(i % 7).encode(), value=value)
    assert producer.flush(20) == 0

    loop = Copy(config, Metrics(), source, target)
    loop.max_batch_bytes = 1000  # ten records a transaction
    run_to_the_end(loop, kafka, config, source)
    copied = [value for _key, value, _headers in read_topic(kafka, target)]
    assert sorted(copied) == sorted(values)  # each once
    for key in range(7):  # and in order within a key (one partition)
        mine = [v for i, v in enumerate(values) if i % 7 == key]
        wanted = set(mine)
        assert [v for v in copied if v in wanted] == mine
    assert loop.transactions >= 30, loop.transactions


def test_a_batch_that_fails_is_split_until_the_record_that_fails_alone_is_dead_lettered(make_config, new_topic, kafka):
    config = make_config()
    ensure_topics(config)
    source, target = new_topic("source"), new_topic("target")
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "linger.ms": 50})
    values = [f"r{i:03d}".encode() for i in range(300)]
    values[60], values[222] = b"fails", b"huge"
    for value in values:
        producer.produce(source, key=b"k", value=value)
    assert producer.flush(20) == 0

    metrics = Metrics()
    loop = Copy(config, metrics, source, target)
    run_to_the_end(loop, kafka, config, source)
    copied = [value for _key, value, _headers in read_topic(kafka, target)]
    assert copied == [v for v in values if v not in (b"fails", b"huge")]  # each once, in order
    letters = read_topic(kafka, dead_letter_topic(config))
    assert [(v, h["dead_letter.error_class"]) for _k, v, h in letters] == [(b"fails", b"ValueError"), (b"huge", b"Unprocessable")]
    for offset, (_key, _value, headers) in zip((60, 222), letters):
        assert headers["dead_letter.topic"].decode() == source
        assert headers["dead_letter.offset"] == str(offset).encode() and headers["dead_letter.stage"] == b"copy"
    assert b"too large" in letters[1][2]["dead_letter.error_message"].lower()
    # Found by halving, not by a transaction per record.
    assert loop.transactions < 60, loop.transactions
