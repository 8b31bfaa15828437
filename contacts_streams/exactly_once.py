"""A consume-transform-produce loop with Kafka transactions: what a batch produces and the
group's offsets for it commit together (``send_offsets_to_transaction``; the writer carries its
position in a record of the transaction instead), one transaction per poll batch, so a replay, a
restart or a rebalance never applies a record twice.

The writer and the conversation routers are both subclasses; the transaction itself is
``transaction.Transactions``. A failed transaction is aborted and the batch read again from the
group's committed offsets (a seek, the group membership stays); a producer that cannot abort is
replaced; a fenced one means another member took over, so the consumer rejoins.

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
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from contacts_streams.config import Config
from contacts_streams.liveness import Progress
from contacts_streams.metrics import Metrics, report_lag
from contacts_streams.polling import poll_batch
from contacts_streams.serialization import RegistryError
from contacts_streams.topics import PRODUCER_MAX_BYTES, RECORD_OVERHEAD, dead_letter_topic, record_bytes
from contacts_streams.transaction import Placed, Produced, Restart, Transactions, Unprocessable

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
LAG_INTERVAL_S = 1.0

# Headers of a dead letter: where the record came from and why no stage could process it.
DL_TOPIC, DL_PARTITION, DL_OFFSET = "dead_letter.topic", "dead_letter.partition", "dead_letter.offset"
DL_STAGE, DL_ERROR_CLASS, DL_ERROR_MESSAGE = "dead_letter.stage", "dead_letter.error_class", "dead_letter.error_message"
DL_VALUE_DROPPED = "dead_letter.value_dropped"
MAX_ERROR_MESSAGE = 1000
DEAD_LETTER_MAX_BYTES = PRODUCER_MAX_BYTES - RECORD_OVERHEAD - 4096
# What ``process`` may raise about a record's content: bad shapes and values of its input.
RECORD_FAULTS = (Unprocessable, ValueError, KeyError, TypeError)


class ExactlyOnceLoop:
    """Subclasses say what a batch of records becomes (``process``); this runs the loop."""

    name = "loop"
    # The producer opens with the loop (routers: a per-instance transactional id) or only once
    # the subclass knows it owns the work (the writer: one id for all replicas).
    producer_at_start = True
    # The most input bytes one transaction takes (at least one record). None: BATCH_SIZE records.
    # The writer sets it: its commands carry up to a thousand contacts each, and a transaction
    # of every pending one could outlast the write timeout, abort and be read again whole, for ever.
    max_batch_bytes: int | None = None

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        group_id: str,
        topics: list[str],
        transactional_id: str,
        unreported: frozenset[str] = frozenset(),
    ):
        self._config = config
        self._metrics = metrics
        self._group_id = group_id
        self._topics = topics
        self._timeout = config.write_timeout_ms / 1000
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned = threading.Event()
        self._sources_missing = False
        self._txn = Transactions(config, metrics, self.name, transactional_id, self.producer_settings, self._stopping, unreported)
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

    def before_handing_over(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions leave this member in good order (a rebalance, or the consumer's close):
        the last moment this consumer may commit for them."""

    def commit(
        self,
        consumer: Consumer,
        offsets: dict[tuple[str, int], int],
        records: list[Produced],
        then: Callable[[Placed], list[Produced]] | None = None,
        alongside: list[Produced] | None = None,
    ) -> dict[tuple[str, int], int]:
        """``Transactions.commit`` with the consumer's offsets (or the records that carry them,
        see ``position_records``); counts the dead letters it wrote."""
        position = self.position_records(offsets)
        if position is not None:
            alongside = list(alongside or []) + position
        written = list(records) + list(alongside or [])
        more: Callable[[Placed], list[Produced]] | None = None
        if then is not None:
            after = then

            def noted(placed: Placed) -> list[Produced]:
                extra = after(placed)
                written.extend(extra)
                return extra

            more = noted
        if position is None:
            positions = self._txn.commit(consumer, offsets, records, more, alongside)
        else:
            positions = self._txn.commit(None, {}, records, more, alongside)
            self.committed(consumer, offsets)
        for record in written:
            if record.topic == self._dead_letter_topic:
                source = (dict(record.headers).get(DL_TOPIC) or b"").decode("utf-8", "replace")
                self._metrics.dead_letters.labels(stage=self.name, topic=source).inc()
        return positions

    def position_records(self, offsets: dict[tuple[str, int], int]) -> list[Produced] | None:
        """Where a transaction commits the consumer's position: None for the group's offsets
        (``send_offsets_to_transaction``, the routers), or records that carry it inside the
        transaction (the writer); a loop that keeps its position in records seeks there itself
        at its start (``committed_offsets`` says where a rewind goes)."""
        return None

    def committed(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """After a transaction whose ``position_records`` carried these offsets committed."""

    def committed_offsets(self, consumer: Consumer, assignment: list[TopicPartition]) -> list[TopicPartition]:
        """Where a rewind goes: the position the last committed transaction holds."""
        return consumer.committed(assignment, timeout=self._timeout)

    def dead_letter(self, msg: Message, err: BaseException) -> Produced:
        """The dead letter of a record: key and value as received, the error in headers. Give it
        to ``commit`` with the record's offset."""
        text = str(err) or type(err).__name__
        log.error(
            "%s sends %s[%d]@%d to %s: %s: %s",
            self.name,
            msg.topic(),
            msg.partition(),
            msg.offset(),
            self._dead_letter_topic,
            type(err).__name__,
            text[:MAX_ERROR_MESSAGE],
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
            # The loop opens the successor when it next needs one (routers) or at the next
            # takeover (the writer).
            self._txn.drop()

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
            self.before_handing_over(consumer, partitions)
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
        for tp in self.committed_offsets(consumer, assignment):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    def _consume(self, consumer: Consumer) -> None:
        interval = self._config.commit_interval_ms / 1000
        checked_sources = lag_reported = 0.0
        while not self._stopping.is_set():
            if not self._txn.active and self.producer_at_start:
                self._txn.open()  # a broker error here rejoins (in _run)
            messages = poll_batch(consumer, BATCH_SIZE, interval)
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
            if self.max_batch_bytes is not None:
                real = self._bounded(consumer, real, self.max_batch_bytes)
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

    def _bounded(self, consumer: Consumer, messages: list[Message], limit: int) -> list[Message]:
        """The records of this transaction: the first, then as many as fit in ``limit`` bytes.
        The consumer is sought back to the first record left over in each partition, so the
        next transaction reads them again (seek drops what librdkafka had fetched beyond)."""
        size = 0
        for index, msg in enumerate(messages):
            size += len(msg.value() or b"")
            if index and size > limit:
                break
        else:
            return messages
        firsts: dict[tuple[str, int], int] = {}
        for msg in messages[index:]:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is not None and partition is not None and offset is not None:
                firsts.setdefault((topic, partition), offset)
        for (topic, partition), offset in firsts.items():
            consumer.seek(TopicPartition(topic, partition, offset))
        return messages[:index]

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
                    self.commit(
                        consumer, self.next_offsets(messages), [Produced(letter.topic, letter.key, b"", headers)] + records[1:]
                    )
                return
            log.warning("%s: a record in a batch of %d cannot be processed (%s): isolating it", self.name, len(messages), err)
        half = len(messages) // 2
        self._process_isolating(consumer, messages[:half])
        self._process_isolating(consumer, messages[half:])
