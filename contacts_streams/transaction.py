"""The service's transactions: one transactional producer and the one way to use it, for the
writer and the conversation routers alike (``exactly_once.ExactlyOnceLoop`` holds one).

``commit`` runs one transaction: begin, the consumer offsets, the records (with delivery reports
where someone needs them), optionally a flush and more records that name where the first ones
landed, commit. A failure aborts; what the failure says decides what the caller does next
(``Restart``: read the batch again, with a new producer or a rejoin; ``Unprocessable``: a record
the broker will never take). The transactional id is fixed by the caller: a new producer's
``init_transactions`` fences whoever used the id before and ends what it left open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from contacts_streams.config import Config
from contacts_streams.metrics import Metrics

log = logging.getLogger(__name__)

# Errors of one record, not of the broker: producing it again can never succeed.
RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
    }
)

# Where each record of a transaction landed, in record order (None: not reported).
Placed = list[tuple[str, int, int] | None]


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


def fenced(error: KafkaError) -> bool:
    return error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class Transactions:
    """A transactional producer (opened with ``open``, dropped with ``drop``) and ``commit``.

    ``settings`` is asked at each ``open`` (the writer's depend on limits read at start).
    Records that ``then`` returns for an ``unreported`` topic are produced without a delivery
    report: each report takes the GIL once in the committing thread, a wait when HTTP threads
    hold it, and nothing waits for where such a record landed (the first records always get
    one: ``then`` is told where each landed). One that fails still fails the transaction:
    librdkafka refuses to commit after a failed delivery.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        name: str,
        transactional_id: str,
        settings: Callable[[], dict],
        stopping: threading.Event,
        unreported: frozenset[str] = frozenset(),
    ):
        self._config = config
        self._metrics = metrics
        self._name = name
        self._transactional_id = transactional_id
        self._settings = settings
        self._stopping = stopping
        self._unreported = unreported
        self._timeout = config.write_timeout_ms / 1000
        self._producer: Producer | None = None

    @property
    def active(self) -> bool:
        return self._producer is not None

    def open(self) -> None:
        """A new producer under the transactional id; its ``init_transactions`` fences the
        previous one (of this process or another) and ends its open transaction. Waits for the
        coordinator while it is only not there yet; raises KafkaException otherwise."""
        producer = Producer(
            self._config.producer(
                **{
                    "transactional.id": self._transactional_id,
                    # A transaction's first request meets the previous one's markers still
                    # being written now and then: ask again soon, not after librdkafka's 100 ms.
                    "retry.backoff.ms": 5,
                    **self._settings(),
                }
            )
        )
        while True:
            try:
                producer.init_transactions(self._timeout)
                self._producer = producer
                return
            except KafkaException as err:
                if self._stopping.is_set() or not err.args[0].retriable():
                    raise
                log.warning("%s waits for the transaction coordinator: %s", self._name, err)

    def drop(self) -> None:
        """Forget the producer without closing its transaction: the next ``open`` fences it and
        ends what it left open."""
        self._producer = None

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
        consumer: Consumer | None,
        offsets: dict[tuple[str, int], int],
        records: list[Produced],
        then: Callable[[Placed], list[Produced]] | None = None,
        alongside: list[Produced] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Produce records and commit the consumer's offsets in one transaction; returns the
        last offset written per (topic, partition). With `then`, the records are flushed first
        and `then` gets where each landed ((topic, partition, offset) in record order) and
        returns more records for the same transaction (the writer's replies name the offsets).
        `alongside`: records whose place nobody asks for, produced with the first ones, before
        the flush: their partitions join the transaction in the same AddPartitionsToTxn request
        as the first records' (librdkafka registers the partitions added before its request goes
        out together), instead of one more request after the flush."""
        producer = self._producer
        if producer is None:
            raise Restart("no transactional producer", replace_producer=True)
        positions: dict[tuple[str, int], int] = {}
        failures: list = []
        placed: Placed = [None] * len(records)

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

        def produce(record: Produced, index: int | None) -> None:
            report = None if index is None and record.topic in self._unreported else delivered_at(index)
            producer.produce(
                record.topic, key=record.key, value=record.value, headers=cast(_KafkaHeaders, record.headers), on_delivery=report
            )

        try:
            producer.begin_transaction()
            # The offsets first: the coordinator refuses any request of a transaction while
            # another one of it is in flight, or while the previous transaction's markers are
            # still being written (CONCURRENT_TRANSACTIONS). librdkafka retries a refused
            # AddPartitionsToTxn only after 20 ms, while AddOffsetsToTxn waits retry.backoff.ms
            # (kept short in open); a produce before it would put the partitions'
            # registration in flight beside it (measured: 110 ms a transaction, against 5-10).
            partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
            if partitions and consumer is not None:  # a transaction of the writer's own (no commands consumed) has none
                producer.send_offsets_to_transaction(partitions, consumer.consumer_group_metadata(), self._timeout)
            for index, record in enumerate(records):
                produce(record, index)
            for record in alongside or ():
                produce(record, None)
            if then is not None:
                if records and self._flush(producer, failures) > 0 and not failures:
                    raise Restart("the broker did not take the batch in time")
                if failures:
                    raise Restart(f"records not delivered: {failures[:3]}")
                for record in then(placed):
                    produce(record, None)
            producer.commit_transaction(self._timeout)
        except (KafkaException, BufferError, Restart) as err:
            self._metrics.produce_errors.labels(reason=self._name).inc()
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
        return positions
