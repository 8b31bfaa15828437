"""The writer: applies every command in order, one transaction per batch (DESIGN.md, "Writes:
commands and the writer").

Every replica runs one; it joins the writer group only once its store is ready, and the member
that holds the commands topic's single partition is the writer. On that assignment it (a) opens
the transactional producer with the id every replica shares, whose ``init_transactions`` fences
the previous writer and aborts its open transaction, (b) waits until its store has applied the
contacts topic's committed end and reads the idempotency topic, and only then (c) applies.

A batch is decided command by command against the store under a stack of overlays: the batch's
own changes and those of earlier batches that are committed but not yet materialized, so no
decision ever sees a state older than the writer's own last commit and the writer never waits
for its store between batches. Contact records, replies (status, ids, the contacts-topic
offsets; no bodies), idempotency entries and the commands' offsets commit together.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, IsolationLevel, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams import commands, model, topics
from contacts_streams.commands import BadCommand, Command, Remembered, Reply
from contacts_streams.config import Config
from contacts_streams.decisions import Decision, LayeredView, Overlay, decide, error
from contacts_streams.exactly_once import ExactlyOnceLoop, Produced, Restart
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Store

log = logging.getLogger(__name__)

OPERATION = "operation"
# The broker's default max.message.bytes (1 MiB) less room for the key, headers and batch framing.
MAX_RECORD_BYTES = 1_048_588 - 4096
CATCH_UP_TIMEOUT_S = 120.0


class StoreView:
    """The store as the decisions ask it."""

    def __init__(self, store: Store):
        self._store = store

    def get(self, contact_id: str) -> dict | None:
        return self._store.get(contact_id)

    def owner_of_conversation(self, conversation_id: str) -> str | None:
        return self._store.contact_id_for_conversation(conversation_id)

    def merged_into(self, contact_id: str) -> str | None:
        return self._store.merged_into(contact_id)

    def conversation_metadata(self, conversation_id: str) -> dict:
        return self._store.conversation_metadata(conversation_id)


class _Outcome:
    """One command's result within a batch; its offsets are known once the batch is flushed."""

    __slots__ = ("command", "command_id", "decision", "records", "offsets", "same_as", "remember")

    def __init__(self, command: Command | None, command_id: str | None, decision: Decision, records: range = range(0)):
        self.command = command
        self.command_id = command_id
        self.decision = decision
        self.records = records
        self.offsets: dict[int, int] | None = None
        self.same_as: _Outcome | None = None
        self.remember = False


class Writer(ExactlyOnceLoop):
    name = "writer"
    producer_at_start = False

    def __init__(self, config: Config, store: Store, materializer: Materializer, metrics: Metrics, codec: ContactCodec):
        super().__init__(
            config,
            metrics,
            group_id=f"{config.application_id}-writer",
            topics=[topics.commands_topic(config)],
            transactional_id=f"{config.application_id}-writer",
        )
        self._store = store
        self._base = StoreView(store)
        self._materializer = materializer
        self._codec = codec
        self._contacts_topic = config.contacts_topic
        self._replies_topic = topics.replies_topic(config)
        self._idempotency_topic = topics.idempotency_topic(config)
        self._takeover_needed = False
        self.holding = False
        self._layers: list[tuple[dict[int, int], Overlay]] = []
        self._remembered: dict[bytes, Remembered] = {}
        self.max_record_bytes = MAX_RECORD_BYTES
        self.takeovers = 0

    # --- readiness: the writer is not part of it; a replica that is not the writer still serves

    @property
    def ready(self) -> bool:
        return self.failure is None

    def status(self) -> str:
        if self.failure is not None:
            return f"writer failed: {self.failure}"
        return "writer" if self.holding else "standby writer"

    def joinable(self) -> bool:
        return self._materializer.ready

    def consumer_settings(self) -> dict:
        return {
            "partition.assignment.strategy": "cooperative-sticky",
            # No group.instance.id: static membership would keep a dead writer's partition for
            # its whole session. A short session bounds failover to a few seconds.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": commands.MAX_COMMAND_BYTES + 1024 * 1024,
            "queued.max.messages.kbytes": 65536,
        }

    def producer_settings(self) -> dict:
        return {
            "linger.ms": 1,
            "transaction.timeout.ms": 60_000,
            "message.max.bytes": commands.MAX_COMMAND_BYTES + 1024 * 1024,
        }

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        if any(tp.topic == topics.commands_topic(self._config) for tp in partitions):
            self._takeover_needed = True

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        if any(tp.topic == topics.commands_topic(self._config) for tp in partitions):
            log.info("writer: the commands partition was %s; standing by", "lost" if lost else "revoked")
            self._stand_down()

    def _stand_down(self) -> None:
        self.holding = False
        self._takeover_needed = False
        self._producer = None
        self._layers = []
        self._metrics.writer.set(0)

    # --- takeover ----------------------------------------------------------------------------

    def _take_over(self) -> None:
        started = time.monotonic()
        self._takeover_needed = False
        self._layers = []
        self._producer = self.new_producer()  # fences the previous writer, ends its open transaction
        ends = self._committed_ends(self._contacts_topic)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not self._materializer.wait_reached(ends, 0.5):
            if self._stopping.is_set() or self._materializer.failure is not None or time.monotonic() > deadline:
                self._stand_down()
                raise Restart("the store did not catch up with the contacts topic", rejoin=True)
        self._remembered = self._read_idempotency()
        self.holding = True
        self.takeovers += 1
        self._metrics.writer.set(1)
        log.info("writer: took over in %.2fs (store at %s, %d idempotency keys)", time.monotonic() - started, ends, len(self._remembered))

    def _committed_ends(self, topic: str) -> dict[int, int]:
        admin = AdminClient(self._config.kafka())
        described = admin.list_topics(topic, timeout=self._timeout).topics[topic]
        request = {TopicPartition(topic, p): OffsetSpec.latest() for p in described.partitions}
        futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def _read_idempotency(self) -> dict[bytes, Remembered]:
        """The keys earlier writers answered, read whole at takeover (a compacted topic of
        small entries, kept 24 h)."""
        ends = self._committed_ends(self._idempotency_topic)
        remembered: dict[bytes, Remembered] = {}
        wanted = {p: end for p, end in ends.items() if end > 0}
        if not wanted:
            return remembered
        consumer = Consumer(
            self._config.kafka(
                **{
                    "group.id": f"{self._config.application_id}-idempotency-reader",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            consumer.assign([TopicPartition(self._idempotency_topic, p, 0) for p in wanted])
            done: set[int] = set()
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            horizon = model.now_ms() - commands.IDEMPOTENCY_TTL_MS
            while len(done) < len(wanted):
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise Restart("could not read the idempotency topic", rejoin=True)
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is not None:
                        if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= wanted[msg.partition()]:
                            done.add(msg.partition())
                        continue
                    if msg.value() is None:
                        remembered.pop(msg.key(), None)
                        continue
                    try:
                        entry = Remembered.decode(msg.value())
                    except BadCommand:
                        continue
                    if entry.at_ms >= horizon:
                        remembered[msg.key()] = entry
                    if msg.offset() + 1 >= wanted[msg.partition()]:
                        done.add(msg.partition())
        finally:
            consumer.close()
        return remembered

    # --- a batch -----------------------------------------------------------------------------

    def _drop_materialized_layers(self) -> None:
        while self._layers and self._materializer.wait_applied(self._layers[0][0], 0):
            self._layers.pop(0)

    def process(self, consumer: Consumer, messages: list[Message]) -> None:
        if self._takeover_needed:
            self._take_over()
        self._drop_materialized_layers()
        if not messages:
            return
        if not self.holding or self._producer is None:
            return  # records fetched for a partition this member no longer holds
        started = time.perf_counter()
        top = Overlay()
        view = LayeredView(self._base, [layer for _, layer in self._layers] + [top])
        now = model.now_ms()
        records: list[Produced] = []
        outcomes: list[_Outcome] = []
        pending_keys: dict[bytes, _Outcome] = {}
        encoded_contacts: list[tuple[bytes, dict]] = []
        for msg in messages:
            outcome = self._decide_one(msg, view, top, now, records, pending_keys, encoded_contacts)
            outcomes.append(outcome)

        def replies(placed: list) -> list[Produced]:
            return self._replies(outcomes, placed, now)

        positions = self.commit(consumer, self.next_offsets(messages), records, then=replies)
        contact_positions = {p: o for (t, p), o in positions.items() if t == self._contacts_topic}
        for value, contact in encoded_contacts:
            self._store.remember(value, contact)
        if top.metadata:
            # TODO(joinstate): the join state goes to the <APPLICATION_ID>-conversations topic in
            # this transaction; until then it is kept in the writer replica's store.
            self._store.put_conversation_metadata(top.metadata)
        if top:
            self._layers.append((contact_positions, top))
        for outcome in outcomes:
            if outcome.remember:
                key = outcome.command.idempotency.record_key
                self._remembered[key] = self._remembered_of(outcome, now)
        self._count(outcomes, time.perf_counter() - started)

    def _decide_one(self, msg: Message, view: LayeredView, top: Overlay, now: int, records: list, pending_keys: dict, encoded_contacts: list) -> _Outcome:
        key = msg.key()
        command_id = key.decode("utf-8", "replace") if key else None
        try:
            command = Command.decode(msg.value())
        except BadCommand as err:
            log.error("writer: unreadable command at offset %d: %s", msg.offset(), err)
            self._metrics.poison_records.labels(topic=msg.topic()).inc()
            return _Outcome(None, command_id, error(500, "the writer could not read this command"))
        if command.deadline_ms is not None and now > command.deadline_ms:
            return _Outcome(command, command.id, error(503, "the write expired before the writer reached it; it was not applied"))
        idempotency = command.idempotency
        if idempotency is not None:
            earlier = pending_keys.get(idempotency.record_key)
            remembered = self._remembered.get(idempotency.record_key)
            if remembered is not None and remembered.at_ms < now - commands.IDEMPOTENCY_TTL_MS:
                remembered = None
            first_hash = earlier.command.idempotency.body_hash if earlier is not None else remembered.body_hash if remembered else None
            if first_hash is not None and first_hash != idempotency.body_hash:
                return _Outcome(command, command.id, error(422, "Idempotency-Key: this key was used with a different request body", "Idempotency-Key"))
            if earlier is not None:
                outcome = _Outcome(command, command.id, earlier.decision)
                outcome.same_as = earlier
                return outcome
            if remembered is not None:
                outcome = _Outcome(command, command.id, Decision(remembered.status, list(remembered.ids), error=remembered.error))
                outcome.offsets = dict(remembered.offsets)
                return outcome
        try:
            decision = decide(view, command, now)
            produced = []
            for change in decision.changes:
                value = self._codec.encode_contact(change.contact) if change.contact is not None else None
                headers = [(OPERATION, change.operation.encode())] + [(k, v.encode()) for k, v in change.headers.items()]
                size = len(value or b"") + len(change.contact_id) + sum(len(k) + len(v) for k, v in headers)
                if size > self.max_record_bytes:
                    decision = error(
                        413,
                        f"contact {change.contact_id} would be {size} bytes, more than the {self.max_record_bytes} bytes a contact record may have",
                    )
                    produced = []
                    break
                produced.append((Produced(self._contacts_topic, change.contact_id.encode(), value, headers), change.contact))
        except Exception:  # a bug must not stall the partition: answer it and go on
            log.exception("writer: command %s (%s) failed", command.id, command.type)
            self._metrics.writer_failed_commands.inc()
            return _Outcome(command, command.id, error(500, "internal error while applying the write"))
        if decision.changes and produced:
            view.record(decision, top)
        elif decision.conversation_metadata:
            top.metadata.update(decision.conversation_metadata)
        start = len(records)
        for record, contact in produced:
            records.append(record)
            if record.value is not None:
                encoded_contacts.append((record.value, contact))
        outcome = _Outcome(command, command.id, decision, range(start, len(records)))
        if idempotency is not None:
            outcome.remember = True
            pending_keys[idempotency.record_key] = outcome
        return outcome

    def _replies(self, outcomes: list[_Outcome], placed: list, now: int) -> list[Produced]:
        out = []
        for outcome in outcomes:
            if outcome.offsets is None:
                if outcome.same_as is not None:
                    outcome.offsets = outcome.same_as.offsets or {}
                else:
                    offsets: dict[int, int] = {}
                    for index in outcome.records:
                        _topic, partition, offset = placed[index]
                        offsets[partition] = max(offsets.get(partition, -1), offset)
                    outcome.offsets = offsets
            command = outcome.command
            wants_reply = command is None or command.type != commands.AUTO_CREATE  # routers wait for nothing
            if wants_reply and outcome.command_id:
                d = outcome.decision
                reply = Reply(d.status, d.ids, d.error, outcome.offsets)
                out.append(Produced(self._replies_topic, outcome.command_id.encode(), reply.encode(), []))
            if outcome.remember:
                entry = self._remembered_of(outcome, now)
                out.append(Produced(self._idempotency_topic, command.idempotency.record_key, entry.encode(), []))
        return out

    @staticmethod
    def _remembered_of(outcome: _Outcome, now: int) -> Remembered:
        d = outcome.decision
        return Remembered(d.status, list(d.ids), d.error, dict(outcome.offsets or {}), outcome.command.idempotency.body_hash, now)

    def _count(self, outcomes: list[_Outcome], seconds: float) -> None:
        self._metrics.writer_batch_seconds.observe(seconds)
        for outcome in outcomes:
            kind = outcome.command.type if outcome.command is not None else "unreadable"
            self._metrics.commands.labels(type=kind, status=str(outcome.decision.status)).inc()
            if kind == commands.AUTO_CREATE and outcome.same_as is None:
                created = sum(1 for change in outcome.decision.changes if change.operation == "auto_created")
                self._metrics.auto_created.inc(created)
                self._metrics.auto_updated.inc(len(outcome.decision.changes) - created)
