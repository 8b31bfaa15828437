"""A consume-transform-produce loop with Kafka transactions: what a batch produces and the
group's offsets for it commit together (``send_offsets_to_transaction``), one transaction per
poll batch, so a replay, a restart or a rebalance never applies a record twice.

The one transaction helper of the service: the writer and the conversation routers are both
subclasses. A failed transaction is aborted and the batch read again from the group's committed
offsets (a seek, the group membership stays); a producer that cannot abort is replaced; a fenced
one means another member took over, so the consumer rejoins.

A record a stage can never process never holds its partition up: the stage sends it, as
received, to the dead-letter topic with the error in headers, in the transaction that commits
its offset (the writer also answers the command). Records a stage recognises as bad go there
within their batch; when a batch fails in a way that names no record (a produce the broker
refuses, an error while deciding), the loop splits the batch and commits its halves on their own
until the record that fails alone is found.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from contacts_streams.config import Config
from contacts_streams.liveness import Progress
from contacts_streams.metrics import Metrics, report_lag
from contacts_streams.serialization import RegistryError
from contacts_streams.topics import PRODUCER_MAX_BYTES, RECORD_OVERHEAD, dead_letter_topic, record_bytes

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
LAG_INTERVAL_S = 1.0

# Headers of a dead letter: where the record came from and why no stage could process it.
DL_TOPIC, DL_PARTITION, DL_OFFSET = "dead_letter.topic", "dead_letter.partition", "dead_letter.offset"
DL_STAGE, DL_ERROR_CLASS, DL_ERROR_MESSAGE = "dead_letter.stage", "dead_letter.error_class", "dead_letter.error_message"
DL_VALUE_DROPPED = "dead_letter.value_dropped"
MAX_ERROR_MESSAGE = 1000
DEAD_LETTER_MAX_BYTES = PRODUCER_MAX_BYTES - RECORD_OVERHEAD - 4096
# Errors of one record, not of the broker: producing it again can never succeed.
RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG})


@dataclass(frozen=True)
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # a dead letter keeps the headers it received, values None included


# What Producer.produce's stubs take: a list invariant in its values' type (str | bytes | None).
_KafkaHeaders = list[tuple[str, str | bytes | None]]


class Restart(Exception):
    """Abort the batch and read it again from the group's committed offsets; replace_producer:
    the producer is unusable; rejoin: drop the consumer too (another member owns the work)."""

    def __init__(self, message: str, replace_producer: bool = False, rejoin: bool = False):
        super().__init__(message)
        self.replace_producer = replace_producer
        self.rejoin = rejoin


class Unprocessable(Exception):
    """A record (or a batch holding one) this stage can never process: the loop isolates the
    record and dead-letters it. Transient trouble (the broker, the store catching up) is a
    ``Restart`` instead."""


# What ``process`` may raise about a record's content: bad shapes and values of its input.
RECORD_FAULTS = (Unprocessable, ValueError, KeyError, TypeError)


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
        self._dead_letter_topic = dead_letter_topic(config)
        self.progress = Progress(self.name)
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

    def _flush(self, producer: Producer, failures: list) -> int:
        """Flush, but stop waiting at the first failed delivery: a record the broker refused
        leaves the transaction abortable (librdkafka wants an epoch bump), and what is still
        queued may then wait out the whole timeout while the writes behind it time out too."""
        deadline = time.monotonic() + self._timeout
        while True:
            left = producer.flush(min(0.05, max(0.0, deadline - time.monotonic())))
            if left == 0 or failures or time.monotonic() >= deadline:
                return left

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
            # The offsets first: the coordinator refuses any request of a transaction while
            # another one of it is in flight, or while the previous transaction's markers are
            # still being written (CONCURRENT_TRANSACTIONS). librdkafka retries a refused
            # AddPartitionsToTxn only after 20 ms, while AddOffsetsToTxn waits retry.backoff.ms
            # (kept short in new_producer); a produce before it would put the partitions'
            # registration in flight beside it (measured: 110 ms a transaction, against 5-10).
            partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
            if partitions:  # a transaction of the writer's own (no commands consumed) has none
                producer.send_offsets_to_transaction(partitions, consumer.consumer_group_metadata(), self._timeout)
            for index, record in enumerate(records):
                producer.produce(record.topic, key=record.key, value=record.value, headers=cast(_KafkaHeaders, record.headers), on_delivery=delivered_at(index))
            if then is not None:
                if records and self._flush(producer, failures) > 0 and not failures:
                    raise Restart("the broker did not take the batch in time")
                if failures:
                    raise Restart(f"records not delivered: {failures[:3]}")
                more = then(placed)
                records = list(records) + more
                for record in more:
                    report = delivered_at(None) if self.reported(record) else None
                    producer.produce(record.topic, key=record.key, value=record.value, headers=cast(_KafkaHeaders, record.headers), on_delivery=report)
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
            refused = [e for e in [error, *failures] if isinstance(e, KafkaError) and e.code() in RECORD_ERRORS]
            if refused:  # the broker (or the client) will never take one of these records
                raise Unprocessable(f"a record was refused: {refused[0].str()}") from err
            raise Restart(f"transaction aborted: {err}") from err
        if failures:
            raise Restart(f"committed with failed deliveries: {failures}", replace_producer=True)
        for record in records:
            if record.topic == self._dead_letter_topic:
                source = (dict(record.headers).get(DL_TOPIC) or b"").decode("utf-8", "replace")
                self._metrics.dead_letters.labels(stage=self.name, topic=source).inc()
        return positions

    def reported(self, record: Produced) -> bool:
        """Whether ``commit`` needs the delivery report of a record that ``then`` returned: where
        it landed, or why the broker refused it. Each report takes the GIL once in the loop's
        thread, a wait when HTTP threads hold it; a record produced without one that fails
        still fails the transaction (librdkafka refuses to commit after a failed delivery)."""
        return True

    def dead_letter(self, msg: Message, err: BaseException) -> Produced:
        """The dead letter of a record: key and value as received, the error in headers. Give it
        to ``commit`` with the record's offset."""
        text = str(err) or type(err).__name__
        log.error(
            "%s sends %s[%d]@%d to %s: %s: %s",
            self.name, msg.topic(), msg.partition(), msg.offset(), self._dead_letter_topic, type(err).__name__, text[:MAX_ERROR_MESSAGE],
        )
        # A consumed record's headers are (name, bytes or None) pairs; the stubs allow str and dicts too.
        received = cast(list[tuple[str, bytes | None]], msg.headers() or [])
        headers = received + [
            (DL_TOPIC, (msg.topic() or "").encode()),
            (DL_PARTITION, str(msg.partition()).encode()),
            (DL_OFFSET, str(msg.offset()).encode()),
            (DL_STAGE, self.name.encode()),
            (DL_ERROR_CLASS, type(err).__name__.encode()),
            (DL_ERROR_MESSAGE, text[:MAX_ERROR_MESSAGE].encode("utf-8", "replace")),
        ]
        value = msg.value()
        if record_bytes(msg.key(), value, headers) > DEAD_LETTER_MAX_BYTES:
            # Never stuck on the dead letter itself: where it came from says where to find it.
            headers.append((DL_VALUE_DROPPED, f"{len(value or b'')} bytes, too large to keep".encode()))
            value = b""
        return Produced(self._dead_letter_topic, msg.key(), value, headers)

    def unprocessable(self, consumer: Consumer, msg: Message, err: BaseException) -> list[Produced]:
        """What a record that fails alone becomes (committed with its offset): its dead letter.
        The writer adds the answer to the command."""
        return [self.dead_letter(msg, err)]

    @staticmethod
    def next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            error, topic, partition, offset = msg.error(), msg.topic(), msg.partition(), msg.offset()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                continue
            if topic is not None and partition is not None and offset is not None and offset >= 0:
                offsets[(topic, partition)] = offset + 1
        return offsets

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set() and not self.joinable():
                time.sleep(0.1)
            while not self._stopping.is_set():
                consumer = self._new_consumer()
                try:
                    self._consume(consumer)
                except Restart as restart:
                    log.warning("%s rejoins its group: %s", self.name, restart)
                    self.progress.problem(str(restart))
                    self._replace_producer_if(restart)
                    time.sleep(0.2)
                except KafkaException as err:
                    # The broker is away (an outage, a moving coordinator): a call outside the
                    # transaction failed. Start over with a new consumer and producer once it
                    # answers; only the broker's return ends this, never the loop.
                    log.warning("%s rejoins its group after a broker error: %s", self.name, err)
                    self.progress.problem(f"broker error: {err}")
                    self._replace_producer_if(Restart(str(err), replace_producer=True, rejoin=True))
                    time.sleep(1.0)
                finally:
                    self._assigned.clear()
                    try:
                        consumer.close()
                    except KafkaException as err:  # leaving the group without a broker: it drops us anyway
                        log.warning("%s consumer close: %s", self.name, err)
        except BaseException as err:
            log.exception("%s stopped", self.name)
            self.failure = err

    def _replace_producer_if(self, restart: Restart) -> None:
        if restart.replace_producer or restart.rejoin:
            # Dropped: a successor's init_transactions ends what it left open. The loop opens the
            # successor when it next needs one (routers) or at the next takeover (the writer).
            self._producer = None

    def new_producer(self) -> Producer:
        producer = Producer(
            self._config.kafka(
                **{
                    "transactional.id": self._transactional_id,
                    "acks": "all",
                    "partitioner": "murmur2_random",
                    # A transaction's first request meets the previous one's markers still
                    # being written now and then: ask again soon, not after librdkafka's 100 ms.
                    "retry.backoff.ms": 5,
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
            self.progress.only((tp.topic, tp.partition) for tp in consumer.assignment() + list(partitions))
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
            if self._producer is None and self.producer_at_start:
                self._producer = self.new_producer()  # a broker error here rejoins (in _run)
            # consume(n, timeout) waits for all n or the whole timeout: wait for the first
            # record, then take what is already fetched.
            first = consumer.poll(interval)
            messages = [first] + consumer.consume(BATCH_SIZE - 1, 0) if first is not None else []
            now = time.monotonic()
            if now - lag_reported > LAG_INTERVAL_S:
                lag_reported = now
                self._note_lag(consumer, now)
            if not self._assigned.is_set() and now - checked_sources > 5:
                checked_sources = now
                try:
                    topics = consumer.list_topics(timeout=5).topics
                    self._sources_missing = not any(t in topics for t in self._topics)
                except KafkaException as err:  # no broker now: the group is not joined either
                    log.debug("%s cannot list topics: %s", self.name, err)
            real = []
            for msg in messages:
                error = msg.error()
                if error is None:
                    real.append(msg)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s consumer: %s", self.name, error)
            partitions = {(msg.topic(), msg.partition()) for msg in real}
            if partitions:
                self.progress.waiting(partitions, now)
            try:
                try:
                    self._process_isolating(consumer, real)
                except RegistryError as err:  # the records may be fine: read them again later
                    time.sleep(1)
                    raise Restart(f"waiting for the schema registry: {err}") from err
                if partitions:
                    self.progress.advanced(partitions)
            except Restart as restart:
                if restart.rejoin:
                    raise
                log.warning("%s reads its batch again: %s", self.name, restart)
                self._replace_producer_if(restart)
                try:
                    self._rewind(consumer)
                except KafkaException as err:
                    raise Restart(f"cannot rewind: {err}", rejoin=True) from err
                time.sleep(0.1)

    def _note_lag(self, consumer: Consumer, now: float) -> None:
        # The position (not the committed offset) counts: it steps over the marker that ends
        # each transaction, so a stage that read everything shows no lag.
        positions = consumer.position(consumer.assignment())
        report_lag(consumer, self._metrics, positions)
        behind: list[tuple[str, int]] = []
        level: list[tuple[str, int]] = []
        for tp in positions:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset == OFFSET_INVALID or tp.offset < 0 or high < 0:
                continue  # not fetched yet: nothing known
            (behind if high > tp.offset else level).append((tp.topic, tp.partition))
        self.progress.waiting(behind, now)
        self.progress.advanced(level)

    def _process_isolating(self, consumer: Consumer, messages: list[Message]) -> None:
        """Process a batch; when it fails on a record, process its halves on their own (each
        half its own transaction, in order) down to the record that fails alone, which goes to
        the dead-letter topic with its offset."""
        try:
            self.process(consumer, messages)
            return
        except RECORD_FAULTS as err:
            if len(messages) == 1:
                records = self.unprocessable(consumer, messages[0], err)
                try:
                    self.commit(consumer, self.next_offsets(messages), records)
                except Unprocessable:  # the broker refuses even the dead letter: keep where it was
                    letter = records[0]
                    headers = letter.headers + [(DL_VALUE_DROPPED, b"refused by the dead-letter topic")]
                    self.commit(consumer, self.next_offsets(messages), [Produced(letter.topic, letter.key, b"", headers)] + records[1:])
                return
            log.warning("%s: a record in a batch of %d cannot be processed (%s): isolating it", self.name, len(messages), err)
        half = len(messages) // 2
        self._process_isolating(consumer, messages[:half])
        self._process_isolating(consumer, messages[half:])
