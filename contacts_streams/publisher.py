"""Publishes contact records and returns once they are acknowledged and applied to the own store.

``Publisher`` is the one interface writers use (DESIGN.md, "Scaling out"): swapping it for a
commands topic applied by a transactional consumer group is a local change.

It is also where a record's size is checked, once for every write path: a record the broker
would refuse (over the contacts topic's ``max.message.bytes``, read at start) is refused here
with :class:`RecordTooLarge` (413) before anything of its write is produced, so a too-large
contact is bad input, never a 503 for ever and never half of a transaction.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from contacts_streams import model
from contacts_streams.config import Config
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics

log = logging.getLogger(__name__)

OPERATION, MERGED_INTO, MERGED_FROM = "operation", "merged_into", "merged_from"
TRANSACTIONAL_PRODUCERS = 2
ABORT_TIMEOUT_S = 1.0  # past it the producer is replaced, and its successor's init aborts for it

# librdkafka's message.max.bytes default, below the broker's default max.message.bytes (1048588).
DEFAULT_RECORD_LIMIT = 1_000_000
DEFAULT_BATCH_BYTES = 1_000_000  # librdkafka's batch.size default
# Room for what the broker counts beyond key, value and headers: the record batch header
# (61 bytes), the record's own framing (varints, at most ~25 bytes) and each header's framing.
RECORD_FRAMING_BYTES = 512
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
# A topic just created may not be known to every broker yet: asked again, it is.
_TRANSIENT = (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.UNKNOWN_TOPIC_OR_PART)


class Unavailable(RuntimeError):
    """The broker did not acknowledge the write in time: nothing is promised, the client may retry."""


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.2f} MB"


class RecordTooLarge(model.TooLarge):
    """A record over the contacts topic's record limit; nothing of its write was produced."""

    def __init__(self, contact_id: str, size: int, limit: int, field: str | None = None, message: str | None = None):
        super().__init__(
            message or f"contact {contact_id} would be {megabytes(size)} ({size} bytes), over the record limit of "
            f"{megabytes(limit)} ({limit} bytes) of the contacts topic",
            field,
        )
        self.contact_id, self.size, self.limit = contact_id, size, limit

    def reworded(self, message: str, field: str | None = None) -> "RecordTooLarge":
        """The same refusal, said the way the caller's request would understand it."""
        return RecordTooLarge(self.contact_id, self.size, self.limit, field, message)


@dataclass(frozen=True)
class Outgoing:
    """One record for the contacts topic: key = contact id, value None = tombstone."""

    contact_id: str
    value: bytes | None
    operation: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[tuple[str, bytes]]:
        return [(OPERATION, self.operation.encode())] + [(k, v.encode()) for k, v in self.extra_headers.items()]

    def size(self) -> int:
        """The bytes the broker counts for this record, framing aside."""
        return record_size(self.contact_id.encode(), self.value, self.headers())


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] = ()) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k.encode()) + len(v or b"") for k, v in headers)


class Write:
    """One request's write: publish() shares the deadline its locks were taken under."""

    def __init__(self, publisher: "Publisher", deadline: float):
        self._publisher = publisher
        self.deadline = deadline

    def publish(self, records: Sequence[Outgoing]) -> None:
        """Write records; several are one transaction (all or nothing). Returns once applied locally."""
        self._publisher._publish(records, self.deadline)


class KeyLocks:
    """Striped locks: writes to one contact (or conversation) are serialized, others run in parallel."""

    def __init__(self, stripes: int = 1024):
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def hold(self, keys: Sequence[str], deadline: float) -> Iterator[None]:
        # Sorted stripe order: two writers that need overlapping stripes cannot deadlock.
        stripes = sorted({hash(k) % len(self._locks) for k in keys})
        held = []
        try:
            for stripe in stripes:
                if not self._locks[stripe].acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise Unavailable("another write to the same contact is taking too long")
                held.append(stripe)
            yield
        finally:
            for stripe in reversed(held):
                self._locks[stripe].release()


class Publisher:
    def __init__(self, config: Config, materializer: Materializer, metrics: Metrics):
        self._config = config
        self._topic = config.contacts_topic
        self._materializer = materializer
        self._metrics = metrics
        self._timeout = config.write_timeout_ms / 1000
        self.locks = KeyLocks()
        # Made at start, once the contacts topic's record limit is known (batch.size follows it).
        self._producer: Producer | None = None
        self.record_limit = DEFAULT_RECORD_LIMIT - RECORD_FRAMING_BYTES
        self._producer_limits: dict[str, int] = {}
        self._transactional: queue.Queue[Producer] = queue.Queue()
        self._transactional_lock = threading.Lock()
        # Slot numbers name transactional ids: a replaced producer's slot is reused, never shared.
        self._free_slots = list(range(TRANSACTIONAL_PRODUCERS))
        self._slot_of: dict[int, int] = {}
        self._fence_lock = threading.Lock()
        self._unapplied: dict[int, int] = {}
        self._in_flight = 0
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    # --- the record limit ------------------------------------------------------------------

    def _read_record_limit(self) -> None:
        """The largest record every producer of the service can write to the contacts topic:
        the topic's max.message.bytes (the broker's message.max.bytes unless the topic overrides
        it) or the producers' message.max.bytes (librdkafka's 1,000,000 unless set with
        KAFKA_CONFIG_MESSAGE_MAX_BYTES), whichever is smaller, less framing. Batches of several
        records are kept under it too (batch.size)."""
        topic_limit = None
        admin = AdminClient(self._config.kafka())
        resource = ConfigResource(ResourceType.TOPIC, self._topic)
        try:
            described = admin.describe_configs([resource], request_timeout=self._timeout)[resource].result(self._timeout)
            topic_limit = int(described["max.message.bytes"].value)
        except (KafkaException, concurrent.futures.TimeoutError) as err:
            error = err.args[0] if isinstance(err, KafkaException) and err.args else None
            if not isinstance(error, KafkaError) or error.retriable() or error.code() in _TRANSIENT:
                raise Unavailable(f"cannot read max.message.bytes of {self._topic} yet: {err}") from err
            # no DescribeConfigs permission, an old broker: the default holds
            log.warning("cannot read max.message.bytes of %s, assuming the producers' limit: %s", self._topic, err)
        producer_limit = int(self._config.kafka().get("message.max.bytes", DEFAULT_RECORD_LIMIT))
        limit = min(topic_limit or DEFAULT_RECORD_LIMIT, producer_limit)
        self._producer_limits = {"batch.size": max(1, min(DEFAULT_BATCH_BYTES, limit))}
        self.record_limit = limit - RECORD_FRAMING_BYTES
        log.info(
            "records of %s may be up to %d bytes (topic max.message.bytes %s, producer message.max.bytes %d)",
            self._topic, self.record_limit, topic_limit, producer_limit,
        )

    def check_size(self, records: Sequence[Outgoing]) -> None:
        """Refuse the write (RecordTooLarge) if any of its records is over the record limit.
        Every write through publish() is checked; a stage that produces contact records itself
        (auto-create's transaction) calls this first."""
        for record in records:
            size = record.size()
            if size > self.record_limit:
                raise RecordTooLarge(record.contact_id, size, self.record_limit)

    @contextmanager
    def writing(self, keys: Sequence[str]) -> Iterator["Write"]:
        """Hold the locks of `keys` and give a Write whose every step shares one deadline, so a
        request answers within WRITE_TIMEOUT_MS (plus an abort's margin) whatever goes wrong."""
        deadline = time.monotonic() + self._timeout
        with self.locks.hold(keys, deadline):
            self._wait_fence(deadline)
            yield Write(self, deadline)

    def _wait_fence(self, deadline: float) -> None:
        """A write the broker took but the store has not shown yet (its request answered 503) may
        still land: no writer reads the store before it has, or it would undo that write."""
        while True:
            with self._fence_lock:
                unapplied, in_flight = dict(self._unapplied), self._in_flight
            if not unapplied and not in_flight:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("an earlier write is still not applied to the store")
            if unapplied and self._materializer.wait_applied(unapplied, min(remaining, 0.1)):
                with self._fence_lock:
                    for partition, offset in unapplied.items():
                        if self._unapplied.get(partition) == offset:
                            del self._unapplied[partition]
            elif not unapplied:
                time.sleep(min(remaining, 0.01))

    def _fence(self, positions: dict[int, int]) -> None:
        with self._fence_lock:
            for partition, offset in positions.items():
                self._unapplied[partition] = max(self._unapplied.get(partition, -1), offset)

    def _publish(self, records: Sequence[Outgoing], deadline: float) -> None:
        self.check_size(records)
        if len(records) == 1:
            positions = self._produce_one(records[0], deadline)
        else:
            positions = self._produce_transaction(records, deadline)
        if not self._materializer.wait_applied(positions, max(0.0, deadline - time.monotonic())):
            self._fence(positions)
            self._metrics.produce_errors.labels(reason="apply_timeout").inc()
            raise Unavailable("the write was acknowledged but the store did not apply it in time")

    def _produce_one(self, record: Outgoing, deadline: float) -> dict[int, int]:
        done = threading.Event()
        outcome: list = []
        abandoned = threading.Event()

        def delivered(err, msg):
            outcome.append((err, msg.partition(), msg.offset()))
            done.set()
            if abandoned.is_set():  # its request already answered 503: fence what landed
                if err is None:
                    self._fence({msg.partition(): msg.offset()})
                with self._fence_lock:
                    self._in_flight -= 1

        try:
            self._producer.produce(
                self._topic, key=record.contact_id.encode(), value=record.value, headers=record.headers(), on_delivery=delivered
            )
        except (BufferError, KafkaException) as err:
            if _too_large(err):  # the check's framing allowance fell short: still bad input
                self._metrics.produce_errors.labels(reason="too_large").inc()
                raise RecordTooLarge(record.contact_id, record.size(), self.record_limit) from err
            self._metrics.produce_errors.labels(reason="enqueue").inc()
            raise Unavailable(f"the broker cannot take writes now: {err}") from err
        if not done.wait(max(0.0, deadline - time.monotonic())):
            with self._fence_lock:
                if not done.is_set():
                    self._in_flight += 1
                    abandoned.set()
            if abandoned.is_set():
                self._metrics.produce_errors.labels(reason="timeout").inc()
                raise Unavailable("the broker did not acknowledge the write in time")
        err, partition, offset = outcome[0]
        if err is not None and err.code() in _TOO_LARGE:
            self._metrics.produce_errors.labels(reason="too_large").inc()
            raise RecordTooLarge(record.contact_id, record.size(), self.record_limit)
        if err is not None:
            self._metrics.produce_errors.labels(reason="delivery").inc()
            raise Unavailable(f"the broker did not acknowledge the write: {err.str()}")
        return {partition: offset}

    def _produce_transaction(self, records: Sequence[Outgoing], deadline: float) -> dict[int, int]:
        producer = self._take_transactional(deadline)
        positions: dict[int, int] = {}
        failures: list = []

        def delivered(err, msg):
            if err is not None:
                failures.append(err)
            else:
                positions[msg.partition()] = max(positions.get(msg.partition(), -1), msg.offset())

        healthy = True
        try:
            producer.begin_transaction()
            for record in records:
                producer.produce(
                    self._topic, key=record.contact_id.encode(), value=record.value, headers=record.headers(), on_delivery=delivered
                )
            # commit_transaction flushes, which serves every delivery report.
            producer.commit_transaction(max(0.1, deadline - time.monotonic()))
            if failures or not positions:
                raise Unavailable(f"the transaction committed without every acknowledgement: {failures}")
            return positions
        except (KafkaException, BufferError) as err:
            self._metrics.produce_errors.labels(reason="transaction").inc()
            healthy = self._abort(producer, err)
            self._fence(positions)  # if the commit did land after all, the store must show it first
            if _too_large(err) or any(f.code() in _TOO_LARGE for f in failures):
                largest = max(records, key=Outgoing.size)
                raise RecordTooLarge(largest.contact_id, largest.size(), self.record_limit) from err
            raise Unavailable(f"the broker did not commit the write: {err}") from err
        finally:
            if healthy:
                self._transactional.put(producer)
            else:
                self._release_slot(producer)
                threading.Thread(target=self._replace_transactional, name="producer-replace", daemon=True).start()

    def _abort(self, producer: Producer, err: Exception) -> bool:
        """Abort after a failure; False when the producer is unusable and must be replaced."""
        kafka_error = err.args[0] if isinstance(err, KafkaException) and err.args else None
        if kafka_error is not None and kafka_error.fatal():
            return False
        try:
            producer.abort_transaction(ABORT_TIMEOUT_S)
            return True
        except KafkaException as abort_err:
            log.warning("abort failed, replacing the transactional producer: %s", abort_err)
            return False

    def start(self) -> None:
        """Read the record limit and make the producers; open the transactional ones now: their
        init fences transactions a crashed predecessor left open, which would otherwise hold
        back every read_committed reader."""
        if self._producer is None:
            self._read_record_limit()
            self._producer = Producer(
                self._config.kafka(
                    **{
                        "enable.idempotence": True,
                        "acks": "all",
                        "linger.ms": 0,  # a single write waits for nothing; concurrent ones still batch
                        # Java's partitioner, so JVM services of the platform agree on partitions.
                        "partitioner": "murmur2_random",
                        "message.timeout.ms": self._config.write_timeout_ms,
                        **self._producer_limits,
                    }
                )
            )
            self._poller.start()
        opened = []
        while (slot := self._reserve_slot()) is not None:
            opened.append(self._new_transactional(slot))
        for producer in opened:
            self._transactional.put(producer)

    def _replace_transactional(self) -> None:
        """Open a successor for a dropped producer right away: its init_transactions aborts what
        the dropped one left open, which would otherwise hold every read_committed reader of its
        partitions (this store included) back until the transaction times out."""
        while not self._stopping.is_set():
            slot = self._reserve_slot()
            if slot is None:
                return
            try:
                self._transactional.put(self._new_transactional(slot))
                return
            except Unavailable as err:
                log.warning("cannot replace a transactional producer yet: %s", err)
                time.sleep(1)

    def _reserve_slot(self) -> int | None:
        with self._transactional_lock:
            return self._free_slots.pop() if self._free_slots else None

    def _release_slot(self, producer: Producer) -> None:
        with self._transactional_lock:
            self._free_slots.append(self._slot_of[id(producer)])

    def _take_transactional(self, deadline: float) -> Producer:
        try:
            return self._transactional.get_nowait()
        except queue.Empty:
            pass
        slot = self._reserve_slot()
        if slot is not None:
            return self._new_transactional(slot, max(0.1, deadline - time.monotonic()))
        try:
            return self._transactional.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise Unavailable("all transactional producers are busy") from None

    def _new_transactional(self, slot: int, timeout: float | None = None) -> Producer:
        producer = Producer(
            self._config.kafka(
                **{
                    # A stable id per instance and slot: a restarted instance fences the
                    # transactions its crashed predecessor left open.
                    "transactional.id": f"{self._config.application_id}-{self._config.instance_id}-writer-{slot}",
                    "acks": "all",
                    "linger.ms": 1,
                    "partitioner": "murmur2_random",
                    "transaction.timeout.ms": max(60_000, self._config.write_timeout_ms * 2),
                    "message.timeout.ms": self._config.write_timeout_ms,
                    # A batch of several records must fit the topic's limit too.
                    **self._producer_limits,
                }
            )
        )
        self._slot_of[id(producer)] = slot
        try:
            producer.init_transactions(timeout or self._timeout)
        except KafkaException as err:
            self._release_slot(producer)
            self._metrics.produce_errors.labels(reason="init_transactions").inc()
            raise Unavailable(f"the broker cannot start transactions now: {err}") from err
        return producer

    def close(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._producer is None:
            return
        self._poller.join(timeout)
        self._producer.flush(timeout)
        while True:
            try:
                self._transactional.get_nowait()
            except queue.Empty:
                break


def _too_large(err: BaseException) -> bool:
    error = err.args[0] if isinstance(err, KafkaException) and err.args else None
    return isinstance(error, KafkaError) and error.code() in _TOO_LARGE
