"""A consume-transform-produce loop with Kafka transactions: what a batch produces and the
group's offsets for it commit together (``send_offsets_to_transaction``), one transaction per
poll batch, so a replay, a restart or a rebalance never applies a record twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from contacts_streams.config import Config
from contacts_streams.metrics import Metrics, report_lag
from contacts_streams.serialization import RegistryError

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
LAG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Produced:
    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]


class Restart(Exception):
    """Drop the consumer (and maybe the producer) and resume from the group's committed offsets."""

    def __init__(self, message: str, replace_producer: bool = False):
        super().__init__(message)
        self.replace_producer = replace_producer


class ExactlyOnceLoop:
    """Subclasses say what a batch of records becomes (``process``); this runs the loop."""

    name = "loop"

    def __init__(self, config: Config, metrics: Metrics, group_id: str, topics: list[str], transactional_id: str):
        self._config = config
        self._metrics = metrics
        self._group_id = group_id
        self._topics = topics
        self._transactional_id = transactional_id
        self._timeout = config.write_timeout_ms / 1000
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned = threading.Event()
        self._sources_missing = False
        self.failure: BaseException | None = None

    # --- what others ask -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.failure is None and (self._assigned.is_set() or self._sources_missing)

    def status(self) -> str:
        if self.failure is not None:
            return f"{self.name} failed: {self.failure}"
        return f"{self.name} consumer assigned" if self.ready else f"{self.name} consumer joining its group"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- for subclasses ------------------------------------------------------------------------

    def process(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        raise NotImplementedError

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def commit(self, consumer: Consumer, producer: Producer, offsets: dict[tuple[str, int], int], records: list[Produced]) -> dict[tuple[str, int], int]:
        """Produce records and commit the offsets in one transaction; returns the last offset
        written per (topic, partition)."""
        positions: dict[tuple[str, int], int] = {}
        failures: list = []

        def delivered(err, msg):
            if err is not None:
                failures.append(err)
            else:
                where = (msg.topic(), msg.partition())
                positions[where] = max(positions.get(where, -1), msg.offset())

        try:
            producer.begin_transaction()
            for record in records:
                producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers, on_delivery=delivered)
            partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
            producer.send_offsets_to_transaction(partitions, consumer.consumer_group_metadata(), self._timeout)
            producer.commit_transaction(self._timeout)
        except KafkaException as err:
            error = err.args[0]
            self._metrics.produce_errors.labels(reason=self.name).inc()
            if error.fatal():
                raise Restart(f"fatal transaction error: {error}", replace_producer=True) from err
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException as abort_err:
                raise Restart(f"abort failed: {abort_err}", replace_producer=True) from err
            # The consumer read past what is now uncommitted: a new one resumes from the group's offsets.
            raise Restart(f"transaction aborted: {error}") from err
        if failures:
            raise Restart(f"committed with failed deliveries: {failures}", replace_producer=True)
        return positions

    @staticmethod
    def next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is None or msg.error().code() != KafkaError._PARTITION_EOF:
                if msg.offset() is not None and msg.offset() >= 0:
                    offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        return offsets

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        producer = None
        try:
            producer = self._new_producer()
            while not self._stopping.is_set():
                consumer = self._new_consumer()
                try:
                    self._consume(consumer, producer)
                except Restart as restart:
                    log.warning("%s restarts its consumer: %s", self.name, restart)
                    if restart.replace_producer:
                        producer = self._new_producer()
                    time.sleep(0.2)
                finally:
                    consumer.close()
        except BaseException as err:
            log.exception("%s stopped", self.name)
            self.failure = err

    def _new_producer(self) -> Producer:
        producer = Producer(
            self._config.kafka(
                **{
                    "transactional.id": self._transactional_id,
                    "acks": "all",
                    "linger.ms": 5,
                    "partitioner": "murmur2_random",
                    "transaction.timeout.ms": 60_000,
                }
            )
        )
        while True:
            try:
                producer.init_transactions(self._timeout)
                return producer
            except KafkaException as err:
                if self._stopping.is_set() or not err.args[0].retriable():
                    raise
                log.warning("%s waits for the transaction coordinator: %s", self.name, err)

    def _new_consumer(self) -> Consumer:
        consumer = Consumer(
            self._config.kafka(
                **{
                    "group.id": self._group_id,
                    # Static membership: a restarted instance takes its partitions back at once
                    # instead of waiting out its crashed predecessor's session.
                    "group.instance.id": f"{self._transactional_id}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                    "queued.max.messages.kbytes": 16384,
                }
            )
        )

        def assigned(_consumer, partitions):
            self.on_assign(partitions)
            self._assigned.set()

        consumer.subscribe(self._topics, on_assign=assigned)
        return consumer

    def _consume(self, consumer: Consumer, producer: Producer) -> None:
        interval = self._config.commit_interval_ms / 1000
        checked_sources = lag_reported = 0.0
        while not self._stopping.is_set():
            # consume(n, timeout) waits for all n or the whole timeout: wait for the first
            # record, then gather what arrives within the commit interval.
            first = consumer.poll(interval)
            messages = [first] + consumer.consume(BATCH_SIZE - 1, 0) if first is not None else []
            now = time.monotonic()
            if now - lag_reported > LAG_INTERVAL_S:
                lag_reported = now
                report_lag(consumer, self._metrics, consumer.position(consumer.assignment()))
            if not self._assigned.is_set() and now - checked_sources > 5:
                checked_sources = now
                topics = consumer.list_topics(timeout=5).topics
                self._sources_missing = not any(t in topics for t in self._topics)
            real = []
            for msg in messages:
                error = msg.error()
                if error is None:
                    real.append(msg)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s consumer: %s", self.name, error)
            if real:
                try:
                    self.process(consumer, producer, real)
                except RegistryError as err:  # the records may be fine: read them again later
                    time.sleep(1)
                    raise Restart(f"waiting for the schema registry: {err}") from err
