"""A consume-transform-produce loop with Kafka transactions: what a batch produces and the
group's offsets for it commit together (``send_offsets_to_transaction``), one transaction per
poll batch, so a replay, a restart or a rebalance never applies a record twice.

The one transaction helper of the service: the writer and the conversation routers are both
subclasses. A failed transaction is aborted and the batch read again from the group's committed
offsets (a seek, the group membership stays); a producer that cannot abort is replaced; a fenced
one means another member took over, so the consumer rejoins.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from contacts_streams.config import Config
from contacts_streams.metrics import Metrics, report_lag

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
    """Abort the batch and read it again from the group's committed offsets; replace_producer:
    the producer is unusable; rejoin: drop the consumer too (another member owns the work)."""

    def __init__(self, message: str, replace_producer: bool = False, rejoin: bool = False):
        super().__init__(message)
        self.replace_producer = replace_producer
        self.rejoin = rejoin


def fenced(error: KafkaError) -> bool:
    return error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class ExactlyOnceLoop:
    """Subclasses say what a batch of records becomes (``process``); this runs the loop."""

    name = "loop"
    # The producer opens with the loop (routers: a per-instance transactional id) or only once
    # the subclass knows it owns the work (the writer: one id for all replicas).
    producer_at_start = True

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
        self._producer: Producer | None = None
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

    def process(self, consumer: Consumer, messages: list[Message]) -> None:
        raise NotImplementedError

    def joinable(self) -> bool:
        """Whether the loop may join its group now (the writer waits for a ready store)."""
        return True

    def consumer_settings(self) -> dict:
        return {
            # No static membership: a crashed member's partitions move on after its session
            # timeout (seconds), and a rejoin under cooperative-sticky moves nothing else.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1000,
        }

    def producer_settings(self) -> dict:
        return {"linger.ms": 5, "transaction.timeout.ms": 60_000}

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        pass

    def commit(
        self,
        consumer: Consumer,
        offsets: dict[tuple[str, int], int],
        records: list[Produced],
        then: Callable[[list[tuple[str, int, int] | None]], list[Produced]] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Produce records and commit the offsets in one transaction; returns the last offset
        written per (topic, partition). With `then`, the records are flushed first and `then`
        gets where each landed ((topic, partition, offset) in record order) and returns more
        records for the same transaction (the writer's replies name the offsets)."""
        producer = self._producer
        if producer is None:
            raise Restart("no transactional producer", replace_producer=True)
        positions: dict[tuple[str, int], int] = {}
        failures: list = []
        placed: list[tuple[str, int, int] | None] = [None] * len(records)

        def delivered_at(index: int | None):
            def delivered(err, msg):
                if err is not None:
                    failures.append(err)
                    return
                where = (msg.topic(), msg.partition())
                positions[where] = max(positions.get(where, -1), msg.offset())
                if index is not None:
                    placed[index] = (msg.topic(), msg.partition(), msg.offset())

            return delivered

        try:
            producer.begin_transaction()
            for index, record in enumerate(records):
                producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers, on_delivery=delivered_at(index))
            if then is not None:
                if records and producer.flush(self._timeout) > 0:
                    raise Restart("the broker did not take the batch in time")
                if failures:
                    raise Restart(f"records not delivered: {failures[:3]}")
                for record in then(placed):
                    producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers, on_delivery=delivered_at(None))
            partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
            producer.send_offsets_to_transaction(partitions, consumer.consumer_group_metadata(), self._timeout)
            producer.commit_transaction(self._timeout)
        except (KafkaException, BufferError, Restart) as err:
            self._metrics.produce_errors.labels(reason=self.name).inc()
            error = err.args[0] if isinstance(err, KafkaException) and err.args else None
            if error is not None and fenced(error):
                raise Restart(f"fenced: another member took over ({error})", replace_producer=True, rejoin=True) from err
            if error is not None and error.fatal():
                raise Restart(f"fatal transaction error: {error}", replace_producer=True) from err
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException as abort_err:
                raise Restart(f"abort failed: {abort_err}", replace_producer=True) from err
            raise Restart(f"transaction aborted: {err}") from err
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
        try:
            while not self._stopping.is_set() and not self.joinable():
                time.sleep(0.1)
            if self.producer_at_start and not self._stopping.is_set():
                self._producer = self.new_producer()
            while not self._stopping.is_set():
                consumer = self._new_consumer()
                try:
                    self._consume(consumer)
                except Restart as restart:
                    log.warning("%s rejoins its group: %s", self.name, restart)
                    self._replace_producer_if(restart)
                    time.sleep(0.2)
                finally:
                    self._assigned.clear()
                    consumer.close()
        except BaseException as err:
            log.exception("%s stopped", self.name)
            self.failure = err

    def _replace_producer_if(self, restart: Restart) -> None:
        if restart.replace_producer or restart.rejoin:
            self._producer = None  # dropped: a successor's init_transactions ends what it left open
            if self.producer_at_start and not restart.rejoin:
                self._producer = self.new_producer()
            elif self.producer_at_start:
                self._producer = self.new_producer()

    def new_producer(self) -> Producer:
        producer = Producer(
            self._config.kafka(
                **{
                    "transactional.id": self._transactional_id,
                    "acks": "all",
                    "partitioner": "murmur2_random",
                    **self.producer_settings(),
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
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                    "queued.max.messages.kbytes": 16384,
                    **self.consumer_settings(),
                }
            )
        )

        def assigned(_consumer, partitions):
            self.on_assign(partitions)
            self._assigned.set()

        def revoked(_consumer, partitions):
            self.on_revoke(partitions, lost=False)

        def lost(_consumer, partitions):
            self.on_revoke(partitions, lost=True)

        consumer.subscribe(self._topics, on_assign=assigned, on_revoke=revoked, on_lost=lost)
        return consumer

    def _rewind(self, consumer: Consumer) -> None:
        """Back to the group's committed offsets: what the aborted transaction read is read again."""
        assignment = consumer.assignment()
        if not assignment:
            return
        for tp in consumer.committed(assignment, timeout=self._timeout):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    def _consume(self, consumer: Consumer) -> None:
        interval = self._config.commit_interval_ms / 1000
        checked_sources = lag_reported = 0.0
        while not self._stopping.is_set():
            # consume(n, timeout) waits for all n or the whole timeout: wait for the first
            # record, then take what is already fetched.
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
            try:
                self.process(consumer, real)
            except Restart as restart:
                if restart.rejoin:
                    raise
                log.warning("%s reads its batch again: %s", self.name, restart)
                if restart.replace_producer:
                    self._producer = None
                    if self.producer_at_start:
                        self._producer = self.new_producer()
                try:
                    self._rewind(consumer)
                except KafkaException as err:
                    raise Restart(f"cannot rewind: {err}", rejoin=True) from err
                time.sleep(0.1)
