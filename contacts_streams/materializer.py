"""Materializes the contacts topic into the store, and tells writers when their record is applied.

The same class materializes auto-create's join-state topic into its part of the store
(``Materializer(..., topic=conversations_topic, target=store.join_state)``).

It reads every partition ``read_committed`` from the offsets stored with the data (no consumer
group: the store is the source of truth for where to resume), so a restart resumes where the last
write batch stopped and never replays the topic. A store whose offsets do not fit the topic (beyond
its end, before its start, another topic, partitions that no longer exist) is rebuilt from the
beginning. Until every partition has been read to its end once, the service is not ready.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from contacts_streams.config import Config
from contacts_streams.liveness import Progress
from contacts_streams.metrics import Metrics, report_lag
from contacts_streams.polling import poll_batch
from contacts_streams.serialization import RegistryError
from contacts_streams.store import Record, Store

log = logging.getLogger(__name__)

BATCH_SIZE = 2000
POLL_TIMEOUT_S = 0.05
LAG_INTERVAL_S = 1.0
_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
)


class Materializer:
    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        topic: str | None = None,
        target=None,
        name: str = "materializer",
        after: Materializer | None = None,
    ):
        self._config = config
        # What it writes: the store's contacts part, or another part with the same methods
        # (topic, offsets, count, reset, apply).
        self._store = target if target is not None else store
        self._counts_contacts = target is None
        self._metrics = metrics
        self._topic = topic or config.contacts_topic
        self.name = name
        # A materializer readiness does not wait for (the events one) applies nothing until
        # this one is ready: in a cold rebuild both would share one interpreter lock, and the
        # store the service needs would take half as long again.
        self._after = after
        self.progress = Progress(name)
        self._applied: dict[int, int] = {}
        self._changed = threading.Condition()
        # wait_applied's waiters: (partition -> offset, the event set once they are applied).
        self._waiters: list[tuple[dict[int, int], threading.Event]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up: set[int] = set()
        # The committed end of each partition when it was assigned: reading up to it is caught
        # up, as Kafka Streams restores to the end offsets it saw at start. The end-of-partition
        # event alone is not enough: a partition written without a pause may never show one.
        self._start_ends: dict[int, int] = {}
        self._partitions: list[int] = []
        self.failure: BaseException | None = None
        self.applied_since_start = 0
        self.rebuild_reason: str | None = None

    # --- what others ask ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._partitions) and self._caught_up.issuperset(self._partitions) and self.failure is None

    def status(self) -> str:
        if self.failure is not None:
            return f"{self.name} failed: {self.failure}"
        if not self._partitions:
            return f"{self.name} connecting to {self._topic}"
        if not self.ready:
            with self._changed:
                behind = {
                    p: (self._applied.get(p, 0), self._start_ends.get(p)) for p in self._partitions if p not in self._caught_up
                }
            where = ", ".join(f"{p}: {applied} of {end}" for p, (applied, end) in sorted(behind.items())[:5])
            return f"{self.name} catching up with {self._topic} ({len(behind)} of {len(self._partitions)} partitions behind: {where})"
        return "up to date"

    def wait_applied(self, positions: dict[int, int], timeout: float) -> bool:
        """Wait until the record at each partition -> offset is in the store; False on time-out.

        Each waiter has an event of its own, set only once its positions are applied (or the
        materializer failed): every write's HTTP thread waits here, and one condition's
        notify_all woke all of them at every applied batch, each to take the interpreter lock,
        find its record not there yet and sleep again (measured: Condition.notify alone was 6%
        of the samples holding the lock at 16 clients)."""
        with self._changed:
            if self._reached(positions):
                return True
            if self.failure is not None:
                return False
            waiter = (positions, threading.Event())
            self._waiters.append(waiter)
        try:
            waiter[1].wait(timeout)
        finally:
            with self._changed:
                self._waiters.remove(waiter)
        with self._changed:
            return self._reached(positions)

    def _reached(self, positions: dict[int, int]) -> bool:
        applied = self._applied
        return all(applied.get(p, 0) > offset for p, offset in positions.items())

    def _notify(self) -> None:
        """What changed reached whom (under self._changed)."""
        self._changed.notify_all()
        failed = self.failure is not None
        for positions, event in self._waiters:
            if failed or self._reached(positions):
                event.set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until ready; False on time-out or failure."""
        return self._wait(lambda: self.ready, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` (asked again at each change); False on time-out or failure."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.failure is not None:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_reached(self, ends: dict[int, int], timeout: float) -> bool:
        """Wait until every partition is read up to its end offset (its next offset) in `ends`."""
        return self.wait_applied({p: end - 1 for p, end in ends.items() if end > 0}, timeout)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        consumer = Consumer(
            self._config.kafka(
                **{
                    # Required by the client, never joined: partitions are assigned by hand.
                    "group.id": f"{self._config.application_id}-materializer-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                    "queued.min.messages": 20000,
                    "queued.max.messages.kbytes": 16384,  # prefetch is memory the store needs more
                }
            )
        )
        try:
            self._assign(consumer)
            while self._after is not None and not self._after.wait_ready(0.2):
                # The consumer prefetches meanwhile (queued.max.messages.kbytes).
                if self._stopping.wait(0.2 if self._after.failure is not None else 0):
                    return
            lag_reported = 0.0
            while not self._stopping.is_set():
                self._poll_once(consumer)
                if time.monotonic() - lag_reported > LAG_INTERVAL_S:
                    lag_reported = time.monotonic()
                    with self._changed:
                        positions = [TopicPartition(self._topic, p, self._applied.get(p, 0)) for p in self._partitions]
                    report_lag(consumer, self._metrics, positions)
                    self._note_lag(consumer, positions)
        except BaseException as err:  # a store that cannot be written is fatal: liveness reports it
            log.exception("%s stopped", self.name)
            self.failure = err
            with self._changed:
                self._notify()
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> None:
        while not self._stopping.is_set():
            metadata = consumer.list_topics(self._topic, timeout=5)
            topic = metadata.topics.get(self._topic)
            if topic is not None and topic.error is None and topic.partitions:
                break
            log.info("%s waits for the topic %s", self.name, self._topic)
            time.sleep(0.5)
        partitions = sorted(topic.partitions)
        watermarks = self._watermarks(consumer, partitions)
        stored = self._store.offsets()
        reason = self._rebuild_reason(stored, watermarks)
        if reason:
            log.warning("rebuilding the store from %s: %s", self._topic, reason)
            self.rebuild_reason = reason
            label = reason.split(":")[0] if self._counts_contacts else f"{self.name}: {reason.split(':')[0]}"
            self._metrics.store_rebuilds.labels(reason=label).inc()
            self._store.reset()
            stored = {}
        with self._changed:
            self._applied = {p: stored.get(p, 0) for p in partitions}
            self._start_ends = {p: high for p, (_low, high) in watermarks.items()}
            self._caught_up.update(p for p in partitions if self._start_ends.get(p, 1) <= self._applied[p])
            self._partitions = partitions
            self._notify()
        consumer.assign([TopicPartition(self._topic, p, stored.get(p, OFFSET_BEGINNING)) for p in partitions])
        if self._counts_contacts:
            self._metrics.store_contacts.set(self._store.count())
        log.info("materializing %s from %s", self._topic, {p: stored.get(p, 0) for p in partitions})

    def _watermarks(self, consumer: Consumer, partitions: list[int]) -> dict[int, tuple[int, int]]:
        # A topic created a moment ago may have no leader yet: wait for it, don't fail.
        while True:
            try:
                return {p: consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10) for p in partitions}
            except KafkaException as err:
                if self._stopping.is_set() or err.args[0].code() not in _NO_LEADER_YET:
                    raise
                log.info("%s waits for the leaders of %s: %s", self.name, self._topic, err)
                time.sleep(0.5)

    def _note_lag(self, consumer: Consumer, positions: list[TopicPartition]) -> None:
        behind: list[int] = []
        level: list[int] = []
        for tp in positions:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                (behind if high > tp.offset else level).append(tp.partition)
        self.progress.waiting(behind)
        self.progress.advanced(level)

    def _rebuild_reason(self, stored: dict[int, int], watermarks: dict[int, tuple[int, int]]) -> str | None:
        built_from = self._store.topic()
        if built_from is not None and built_from != self._topic:
            return f"topic changed: the store was built from {built_from}"
        if not stored and self._store.count():
            return "offsets missing: the store has contacts but no offsets"
        for partition, offset in stored.items():
            if partition not in watermarks:
                return f"partition missing: partition {partition} is no longer in the topic"
            low, high = watermarks[partition]
            if offset > high:
                return f"ahead of the topic: partition {partition} stored {offset}, topic ends at {high}"
            if offset < low:
                return f"behind the topic start: partition {partition} stored {offset}, topic starts at {low}"
        return None

    def _poll_once(self, consumer: Consumer) -> None:
        # As soon as one record is there (a single write is applied at once), what is fetched.
        messages = poll_batch(consumer, BATCH_SIZE, POLL_TIMEOUT_S)
        if not messages:
            return
        records: list[Record] = []
        reached_end: list[tuple[int, int]] = []
        # partition -> the offset after its last record here (one pass, not one per use)
        nexts: dict[int, int] = {}
        for msg in messages:
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("contacts topic: %s", error)
                elif partition is not None and offset is not None:
                    reached_end.append((partition, offset))
                continue
            if partition is None or offset is None:
                continue  # a record read from a partition has both; the stubs allow None
            # A consumed record's headers are (name, bytes or None) pairs; the stubs allow str and dicts too.
            received = cast(list[tuple[str, bytes | None]], msg.headers() or [])
            headers = {k: (v.decode("utf-8", "replace") if v is not None else "") for k, v in received}
            records.append(Record(partition, offset, msg.key(), msg.value(), headers, msg.timestamp()[1]))
            nexts[partition] = offset + 1
        if records:
            # Records in hand: if the store does not take them, the stall clock runs.
            self.progress.waiting(nexts)
            applied = self._apply(records)
            if applied is None:
                return
            self.applied_since_start += applied
            if self._counts_contacts:
                self._metrics.records_applied.inc(applied)
                self._metrics.store_contacts.set(self._store.count())
            self.progress.advanced(nexts)
        if records or reached_end:
            with self._changed:
                self._applied.update(nexts)
                # The end offset lies past transaction markers, which no record reports.
                for partition, end in reached_end:
                    self._applied[partition] = max(self._applied.get(partition, 0), end)
                    self._caught_up.add(partition)
                for partition in nexts:
                    if partition not in self._caught_up and self._applied[partition] >= self._start_ends.get(partition, 0):
                        self._caught_up.add(partition)
                self._notify()

    def _apply(self, records: list[Record]) -> int | None:
        """Apply records; a record whose writer schema the registry cannot give right now is
        retried (not skipped as poison): the store waits for the registry. None when stopping."""
        while True:
            try:
                return self._store.apply(self._topic, records, on_poison=self._poisoned)
            except RegistryError as err:  # nothing of the batch was written
                log.warning("the store waits for the schema registry: %s", err)
                if self._stopping.wait(1.0):
                    return None

    def _poisoned(self, record: Record, _err: Exception) -> None:
        self._metrics.poison_records.labels(topic=self._topic).inc()
