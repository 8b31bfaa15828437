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
for its store between batches. Contact records, one change event per contact record (the
diff of the contact before and after, who and how), replies (status, ids, the contacts-topic
offsets; no bodies), idempotency entries and the writer's position in the commands topic commit
together. The position is a record on the writer-position topic, not the group's offsets
(``send_offsets_to_transaction`` costs two more sequential requests a transaction): a new writer
reads it once ``init_transactions`` fenced its predecessor and seeks there. The group's offsets
follow asynchronously after each commit, for lag tools and for a deployment from before the topic.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams import commands, events, identities, model, topics
from contacts_streams.commands import BadCommand, Command, Idempotency, Remembered, Reply
from contacts_streams.config import Config
from contacts_streams.decisions import ERASED, Change, Decision, LayeredView, Overlay, auto_created_id, decide, error
from contacts_streams.events import EventCodec
from contacts_streams.exactly_once import ExactlyOnceLoop
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.polling import poll_batch
from contacts_streams.publisher import CommandClient, megabytes
from contacts_streams.serialization import ContactCodec, RegistryError
from contacts_streams.store import Store, dismissed_key
from contacts_streams.topics import record_bytes
from contacts_streams.transaction import Produced, Restart, Unprocessable

log = logging.getLogger(__name__)

OPERATION = "operation"
CATCH_UP_TIMEOUT_S = 120.0
WRITER_BATCH_BYTES = 256 * 1024
# After segment.ms, the record that makes an erase's segment roll waits this much more, so the
# broker surely finds the segment older than segment.ms.
ROLL_MARGIN_MS = 500
POSITION_KEY = b"commands"
GROUP_COMMIT_INTERVAL_S = 1.0


def encode_join_state(state: dict) -> bytes:
    """The join-state topic's value: JSON (internal, never read by the platform; readable with
    any console consumer, and new fields need no schema)."""
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def _against_limit(size: int, limit: int) -> str:
    return f"{megabytes(size)} ({size} bytes), over the record limit of {megabytes(limit)} ({limit} bytes) of the contacts topic"


def too_large(command: Command, decision: Decision, change: Change, size: int, limit: int) -> Decision:
    """The 413 of a write with a record over the limit, said the way its request understands."""
    if command.type == commands.CREATE:
        return error(413, f"the contact would be {_against_limit(size, limit)}")
    if command.type == commands.IMPORT:
        # The element that made the contact (an upsert may touch one contact from several).
        index = decision.ids.index(change.contact_id)
        return error(413, f"[{index}]: the contact would be {_against_limit(size, limit)}", f"[{index}]")
    if command.type == commands.MERGE:
        p = command.payload
        return error(
            413,
            f"merging {p['source_id']} into {p['destination_id']} would push contact {p['destination_id']} to "
            f"{_against_limit(size, limit)} (the merged contact holds the source's values and, in merge_history, "
            "the source as it was)",
            "source_id",
        )
    return error(413, f"contact {change.contact_id} would be {_against_limit(size, limit)}")


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

    def holders(self, kind: str, value: str) -> list[str]:
        return self._store.holders(kind, value)

    @property
    def phone_region(self) -> str | None:
        return self._store.phone_region

    def conversation_metadata(self, conversation_id: str) -> dict:
        """The conversation's join state as committed (a store from before the join-state topic
        may still hold some of it only locally)."""
        join = self._store.join_state
        return {**join.legacy(conversation_id), **join.get(conversation_id)}

    def dismissed_with(self, contact_ids) -> list[bytes]:
        return self._store.dismissed.groups_with(contact_ids)


def _names_any(entry: Remembered, ids: set[str]) -> bool:
    """Whether an idempotency entry's answer names one of these contacts (ids, or an error
    such as a 404 naming the id or where it was merged)."""
    if ids & set(entry.ids):
        return True
    error_ = entry.error or {}
    text = f"{error_.get('message', '')} {error_.get('merged_into', '')}"
    return any(contact_id in text for contact_id in ids)


class _Outcome:
    """One command's result within a batch; its offsets are known once the batch is flushed."""

    __slots__ = (
        "command",
        "command_id",
        "decision",
        "records",
        "offsets",
        "dismissed",
        "same_as",
        "remember",
        "refused",
        "letter",
        "forget",
    )

    def __init__(self, command: Command | None, command_id: str | None, decision: Decision, records: range = range(0)):
        self.command = command
        self.command_id = command_id
        self.decision = decision
        self.records = records
        self.offsets: dict[int, int] | None = None
        self.dismissed: dict[int, int] = {}  # the dismissed topic's offsets it produced
        self.same_as: _Outcome | None = None
        self.remember: Idempotency | None = None  # the key its answer is remembered under
        self.refused: list[str] = []  # auto-create fills left out: over the record limit
        self.letter: BaseException | None = None  # why the command goes to the dead-letter topic
        self.forget: list[bytes] = []  # an erase: the idempotency keys whose answers named what it erased


class Writer(ExactlyOnceLoop):
    name = "writer"
    producer_at_start = False
    # About 5 auto-create commands (a thousand conversations each) or one import of a thousand
    # contacts a transaction; single HTTP writes are far smaller, so every pending one still
    # shares one commit. Without a bound, 200 pending auto-create commands (200,000 contacts)
    # made one transaction that outlasted the write timeout, aborted and was read again whole.
    max_batch_bytes = WRITER_BATCH_BYTES

    def __init__(
        self,
        config: Config,
        store: Store,
        materializer: Materializer,
        metrics: Metrics,
        codec: ContactCodec,
        publisher: CommandClient,
        join_state: Materializer | None = None,
        event_codec: EventCodec | None = None,
    ):
        super().__init__(
            config,
            metrics,
            group_id=f"{config.application_id}-writer",
            topics=[topics.commands_topic(config)],
            transactional_id=f"{config.application_id}-writer",
            # Nothing waits for where a reply, an idempotency entry or the position landed, and
            # none is ever too large for its topic: a failed one aborts the batch like any other failure.
            unreported=frozenset(
                {topics.replies_topic(config), topics.idempotency_topic(config), topics.writer_position_topic(config)}
            ),
        )
        self._store = store
        self._base = StoreView(store)
        self._materializer = materializer
        self._join_state = join_state
        self._publisher = publisher  # knows the contacts topic's record limit
        self._codec = codec
        self._event_codec = event_codec or EventCodec(subject=None)
        self._contacts_topic = config.contacts_topic
        self._events_topic = events.events_topic(config)
        # The largest event record the events topic and the writer's producer take (read at
        # each takeover; the topic may have been made by someone else with a smaller limit).
        self._events_limit = topics.EVENTS_MAX_MESSAGE_BYTES - topics.RECORD_OVERHEAD
        self._join_topic = topics.conversations_topic(config)
        self._replies_topic = topics.replies_topic(config)
        self._idempotency_topic = topics.idempotency_topic(config)
        self._dismissed_topic = topics.dismissed_topic(config)
        self._position_topic = topics.writer_position_topic(config)
        # The commands' next offsets as of the last committed transaction (or the takeover).
        self._position: dict[tuple[str, int], int] = {}
        # Committed positions the group's offsets don't have yet, and when they last got some.
        self._group_behind: dict[tuple[str, int], int] = {}
        self._group_committed_at = 0.0
        self._takeover_needed = False
        self.holding = False
        # Committed, not yet materialized: (contacts positions, join-state positions, changes).
        self._layers: list[tuple[dict[int, int], dict[int, int], Overlay]] = []
        self._remembered: dict[bytes, Remembered] = {}
        self._command_counters: dict[tuple[str, int], Any] = {}
        self.takeovers = 0
        # Records an erase wrote to compacted topics, to be written again once segment.ms has
        # passed (a partition with no appends never rolls its active segment, and the cleaner
        # never compacts an active segment): (due ms, topic, key).
        self._rolls: list[tuple[int, str, bytes]] = []
        self._segment_ms = topics.compacted_segment_ms(config)
        self.erase_bound: topics.EraseBound | None = None  # the topics' actual settings (set at start)
        self.rolled = 0

    # --- readiness: the writer is not part of it; a replica that is not the writer still serves

    @property
    def ready(self) -> bool:
        return self.failure is None

    def status(self) -> str:
        if self.failure is not None:
            return f"writer failed: {self.failure}"
        return "writer" if self.holding else "standby writer"

    def joinable(self) -> bool:
        return self._materializer.ready and (self._join_state is None or self._join_state.ready)

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

    def _producer_max_bytes(self) -> int:
        configured = int(self._config.kafka().get("message.max.bytes", topics.PRODUCER_MAX_BYTES))
        return max(configured, topics.EVENTS_MAX_MESSAGE_BYTES)

    def producer_settings(self) -> dict:
        return {
            "linger.ms": 1,
            "transaction.timeout.ms": 60_000,
            # Events may be larger than contact records (see topics.EVENTS_MAX_MESSAGE_BYTES);
            # contact records are held to the contacts topic's limit before they are produced.
            "message.max.bytes": self._producer_max_bytes(),
            # Batches of several contact records must fit the contacts topic's limit too.
            **self._publisher.producer_limits,
        }

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        if any(tp.topic == topics.commands_topic(self._config) for tp in partitions):
            self._takeover_needed = True

    def before_handing_over(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group's offsets level with the last transaction before another member (or none)
        holds the commands partition: a clean stop leaves no lag behind."""
        if self._group_behind and any(tp.topic == topics.commands_topic(self._config) for tp in partitions):
            self._commit_group(consumer, self._group_behind, wait=True)
            self._group_behind = {}

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        if any(tp.topic == topics.commands_topic(self._config) for tp in partitions):
            log.info("writer: the commands partition was %s; standing by", "lost" if lost else "revoked")
            self._stand_down()

    def _stand_down(self) -> None:
        self.holding = False
        self._takeover_needed = False
        self._txn.drop()
        self._layers = []
        self._position = {}
        self._group_behind = {}
        self._metrics.writer.set(0)

    # --- takeover ----------------------------------------------------------------------------

    def _take_over(self, consumer: Consumer) -> None:
        started = time.monotonic()
        self._takeover_needed = False
        self._layers = []
        self._txn.open()  # fences the previous writer, ends its open transaction
        stores = [(self._contacts_topic, self._materializer)]
        if self._join_state is not None:
            stores.append((self._join_topic, self._join_state))
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        for topic, materializer in stores:
            ends = self._committed_ends(topic)
            while not materializer.wait_reached(ends, 0.5):
                if self._stopping.is_set() or materializer.failure is not None or time.monotonic() > deadline:
                    self._stand_down()
                    raise Restart(f"the store did not catch up with {topic}", rejoin=True)
        self._remembered = self._read_idempotency()
        # Read only now that init_transactions fenced the previous writer and ended its open
        # transaction: the last committed position is final.
        self._position = self._read_position(consumer)
        for (topic, partition), offset in self._position.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as err:
                self._stand_down()
                raise Restart(f"cannot seek the commands partition to the writer's position: {err}", rejoin=True) from err
        # The group's offsets may lag the position (a writer killed between its commit and the
        # group commit after it): bring them level now, not only after this writer's first batch.
        self._commit_group(consumer, {where: offset for where, offset in self._position.items() if offset >= 0})
        self._events_limit = topics.max_record_bytes(self._config, self._events_topic, self._timeout, self._producer_max_bytes())
        self._rolls = []
        # Erases of the last while may not have rolled their segments yet; the store knows their
        # contact ids (the join-state, idempotency and dismissed records of an erase are known
        # only to the writer that wrote them: their roll is lost with it, see README "Erase").
        now = model.now_ms()
        for contact_id, at in self._store.erased():
            if at > now - 2 * self._segment_ms:
                self._schedule_roll(at, self._contacts_topic, contact_id.encode())
        self.holding = True
        self.takeovers += 1
        self._metrics.writer.set(1)
        log.info(
            "writer: took over in %.2fs (store at %s, %d idempotency keys, commands from %s)",
            time.monotonic() - started,
            ends,
            len(self._remembered),
            self._position,
        )

    def _committed_ends(self, topic: str) -> dict[int, int]:
        admin = AdminClient(self._config.kafka())
        described = admin.list_topics(topic, timeout=self._timeout).topics[topic]
        request = {TopicPartition(topic, p): OffsetSpec.latest() for p in described.partitions}
        futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def _read_whole(
        self, topic: str, what: str, last: int | None = None, ends: dict[int, int] | None = None
    ) -> dict[bytes, bytes]:
        """A compacted topic of the writer's, read to its committed end: key -> latest value
        (a tombstone removes the key; records without a key are skipped). With ``last``, only
        the last that many offsets of each partition (``ends``: the committed ends, when known)."""
        ends = self._committed_ends(topic) if ends is None else ends
        latest: dict[bytes, bytes] = {}
        wanted = {p: end for p, end in ends.items() if end > 0}
        if not wanted:
            return latest
        consumer = Consumer(
            self._config.kafka(
                **{
                    "group.id": f"{self._config.application_id}-{what}-reader",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            consumer.assign([TopicPartition(topic, p, max(0, end - last) if last else 0) for p, end in wanted.items()])
            done: set[int] = set()
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            while len(done) < len(wanted):
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise Restart(f"could not read the {what} topic", rejoin=True)
                for msg in poll_batch(consumer, 1000, 0.5):
                    error, partition, offset = msg.error(), msg.partition(), msg.offset()
                    if partition is None or offset is None:
                        continue  # an error of no partition: records and their ends have both
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF and offset >= wanted[partition]:
                            done.add(partition)
                        continue
                    key, value = msg.key(), msg.value()
                    if key is not None:  # not a record the writer wrote; the partition's end still ends the wait
                        if value is None:
                            latest.pop(key, None)
                        else:
                            latest[key] = value
                    if offset + 1 >= wanted[partition]:
                        done.add(partition)
        finally:
            consumer.close()
        return latest

    def _read_idempotency(self) -> dict[bytes, Remembered]:
        """The keys earlier writers answered, read whole at takeover (a compacted topic of
        small entries, kept 24 h)."""
        remembered: dict[bytes, Remembered] = {}
        horizon = model.now_ms() - commands.IDEMPOTENCY_TTL_MS
        for key, value in self._read_whole(self._idempotency_topic, "idempotency").items():
            try:
                entry = Remembered.decode(value)
            except BadCommand:
                continue
            if entry.at_ms >= horizon:
                remembered[key] = entry
        return remembered

    def _read_position(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        """Where the last committed writer transaction left the commands topic: its position
        record, or the group's committed offsets where they are further (a deployment from
        before the position topic; a writer of that version in a rolling upgrade). Neither can
        name a position no transaction committed: the writer commits the group's offsets only
        after its transaction did, so the further of the two is the last one committed."""
        commands_topic = topics.commands_topic(self._config)
        assignment = [TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment() if tp.topic == commands_topic]
        position: dict[tuple[str, int], int] = {}
        # One key, written by every transaction: its last record is the one. The log holds many
        # (its segments compact only once rolled), so read back from the end until one shows:
        # transaction markers and aborted records take offsets too.
        ends = self._committed_ends(self._position_topic)
        last, value = 16, None
        while any(ends.values()):
            value = self._read_whole(self._position_topic, "position", last, ends).get(POSITION_KEY)
            if value is not None or last >= max(ends.values()):
                break
            last *= 16
        if value is not None:
            try:
                for name, offset in json.loads(value).items():
                    topic, _, partition = name.rpartition(":")
                    position[(topic, int(partition))] = int(offset)
            except (ValueError, AttributeError) as err:
                raise Restart(f"the writer position topic holds {value!r}: {err}", rejoin=True) from err
        for tp in consumer.committed(assignment, timeout=self._timeout) if assignment else []:
            where = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > position.get(where, -1):
                position[where] = tp.offset
            position.setdefault(where, OFFSET_BEGINNING)
        held = {(tp.topic, tp.partition) for tp in assignment}
        return {where: offset for where, offset in position.items() if where in held}

    # --- the position in the commands topic --------------------------------------------------

    def position_records(self, offsets: dict[tuple[str, int], int]) -> list[Produced]:
        if not offsets:
            return []  # a transaction of the writer's own (an erase's rolls): no commands consumed
        value = json.dumps({f"{t}:{p}": o for (t, p), o in sorted({**self._position, **offsets}.items())}, separators=(",", ":"))
        return [Produced(self._position_topic, POSITION_KEY, value.encode(), [])]

    def committed(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        self._position.update(offsets)
        self._group_behind.update(offsets)
        self._commit_group_when_due(consumer)

    def _commit_group_when_due(self, consumer: Consumer, idle: bool = False) -> None:
        """The group's offsets at most every GROUP_COMMIT_INTERVAL_S, and once more when the
        writer falls idle. Each OffsetCommit is a request and an append to __consumer_offsets for
        the broker (measured: one per transaction was ~5% of the requests of a create at 16
        clients, each ~9 ms of the broker's time); lag tools and a writer of an older version
        (the readers of these offsets) lose nothing a second behind, and the position record in
        each transaction stays the writer's truth."""
        now = time.monotonic()
        if self._group_behind and (idle or now - self._group_committed_at >= GROUP_COMMIT_INTERVAL_S):
            self._commit_group(consumer, self._group_behind)
            self._group_behind = {}
            self._group_committed_at = now

    @staticmethod
    def _commit_group(consumer: Consumer, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        """The group's offsets too, outside the transaction and without waiting (unless `wait`:
        at a hand-over, the last chance): lag tools read them, and they are where a writer of an
        older version would start."""
        if not offsets:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if wait:
                consumer.commit(offsets=partitions, asynchronous=False)
            else:
                consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as err:
            log.log(logging.INFO if wait else logging.DEBUG, "writer: group offsets not committed: %s", err)

    def committed_offsets(self, consumer: Consumer, assignment: list[TopicPartition]) -> list[TopicPartition]:
        known = [
            TopicPartition(tp.topic, tp.partition, self._position[(tp.topic, tp.partition)])
            for tp in assignment
            if (tp.topic, tp.partition) in self._position
        ]
        unknown = [tp for tp in assignment if (tp.topic, tp.partition) not in self._position]
        return known + (super().committed_offsets(consumer, unknown) if unknown else [])

    # --- a batch -----------------------------------------------------------------------------

    def _drop_materialized_layers(self) -> None:
        while self._layers and self._materializer.wait_applied(self._layers[0][0], 0):
            if self._layers[0][1] and self._join_state is not None and not self._join_state.wait_applied(self._layers[0][1], 0):
                return
            self._layers.pop(0)

    def process(self, consumer: Consumer, messages: list[Message]) -> None:
        if self.holding and not self._txn.active:
            # The producer of a failed transaction was dropped (its abort failed): its successor
            # fences it and ends what it left open, and the store catches up with what it may
            # have committed, exactly as at a takeover. The consumer was rewound already.
            self._takeover_needed = True
        if self._takeover_needed:
            self._take_over(consumer)
            return  # what was fetched came from the group's offsets: read again from the position
        self._drop_materialized_layers()
        if self.holding and self._txn.active and self._rolls and self._rolls[0][0] <= model.now_ms():
            self._roll(consumer)
        if not messages:
            self._commit_group_when_due(consumer, idle=True)  # they catch up with the last transaction
            return
        if not self.holding or not self._txn.active:
            return  # records fetched for a partition this member no longer holds
        started = time.perf_counter()
        top = Overlay()
        view = LayeredView(self._base, [layer for _, _, layer in self._layers] + [top])
        now = model.now_ms()
        records: list[Produced] = []
        outcomes: list[_Outcome] = []
        pending_keys: dict[bytes, _Outcome] = {}
        encoded_contacts: list[tuple[bytes, dict]] = []
        encoded_events: list[tuple[bytes, dict]] = []
        letters: list[Produced] = []
        changes: list[Produced] = []  # the events, one per contact record
        for msg in messages:
            outcome = self._decide_one(msg, view, top, now, records, pending_keys, encoded_contacts, changes, encoded_events)
            outcomes.append(outcome)
            if outcome.refused:
                letters.append(self.dead_letter(msg, Unprocessable("; ".join(outcome.refused))))
            elif outcome.letter is not None:
                letters.append(self.dead_letter(msg, outcome.letter))
        # The join state of every conversation the batch taught something, whole.
        joined = [Produced(self._join_topic, c.encode(), encode_join_state(state), []) for c, state in top.metadata.items()]

        def replies(placed: list) -> list[Produced]:
            return self._replies(outcomes, placed, now)

        # Only the replies and idempotency entries name offsets (from the flush); events, join
        # state and dead letters go out with the contact records, so their partitions join the
        # transaction in its first AddPartitionsToTxn, not in a request of their own after the
        # flush. So does the replies partition, by a keyless empty record that every reply
        # listener skips: the replies after the flush then go out at once (measured: ~1 ms of a
        # bare ~11 ms transaction; without it, moving the rest saves nothing, one request remains).
        early = changes + joined + letters
        if any(self._answered(outcome) for outcome in outcomes):
            early.append(Produced(self._replies_topic, None, b"", []))
        positions = self.commit(consumer, self.next_offsets(messages), records, then=replies, alongside=early)
        contact_positions = {p: o for (t, p), o in positions.items() if t == self._contacts_topic}
        join_positions = {p: o for (t, p), o in positions.items() if t == self._join_topic}
        for value, contact in encoded_contacts:
            self._store.remember(value, contact)
        for value, event in encoded_events:
            self._store.history.remember(value, event)
        if top:
            self._layers.append((contact_positions, join_positions, top))
        for outcome in outcomes:
            if outcome.remember:
                key = outcome.remember.record_key
                self._remembered[key] = self._remembered_of(outcome, outcome.remember, now)
            for key in outcome.forget:
                self._remembered.pop(key, None)
            if outcome.decision.erased and outcome.decision.ok and outcome.same_as is None and outcome.offsets is not None:
                for index in outcome.records:
                    record = records[index]
                    if record.key is not None:  # the writer keys every record it writes
                        self._schedule_roll(now, record.topic, record.key)
                for conversation_id in outcome.decision.conversation_metadata:
                    self._schedule_roll(now, self._join_topic, conversation_id.encode())
        self._count(outcomes, time.perf_counter() - started)

    # --- rolling the segments an erase wrote to ------------------------------------------------

    def _schedule_roll(self, erased_at: int, topic: str, key: bytes) -> None:
        # The topic's segment.ms as the broker has it: a topic whose settings could not be
        # changed rolls later (and complete_by says so).
        segment = self.erase_bound.segment_ms.get(topic, self._segment_ms) if self.erase_bound is not None else self._segment_ms
        heapq.heappush(self._rolls, (erased_at + segment + ROLL_MARGIN_MS, topic, key))

    def _roll(self, consumer: Consumer) -> None:
        """Write the due records of past erases again, in a transaction of their own, each only
        while it still says what the erase said: the tombstone of a contact that is still gone
        (a new contact with the id, auto-created since, is left alone), the join state as it is
        now, the tombstone of an idempotency key or dismissed group not written again since.
        The append rolls the partition's segment that holds the erased values (its age is past
        segment.ms), so the cleaner can compact it."""
        now = model.now_ms()
        view = LayeredView(self._base, [layer for _, _, layer in self._layers])
        due: list[tuple[int, str, bytes]] = []
        while self._rolls and self._rolls[0][0] <= now:
            due.append(heapq.heappop(self._rolls))
        records, seen = [], set()
        for _due, topic, key in due:
            if (topic, key) in seen:
                continue
            seen.add((topic, key))
            if topic == self._contacts_topic:
                if view.get(key.decode()) is None:
                    records.append(Produced(topic, key, None, [(OPERATION, ERASED.encode())]))
            elif topic == self._join_topic:
                state = view.conversation_metadata(key.decode())
                if state:
                    records.append(Produced(topic, key, encode_join_state(state), []))
            elif topic == self._idempotency_topic:
                if key not in self._remembered:
                    records.append(Produced(topic, key, None, []))
            elif topic == self._dismissed_topic and key not in view.dismissed_with(key.decode().split(",")):
                records.append(Produced(topic, key, None, []))
        if not records:
            return
        try:
            self.commit(consumer, {}, records)
        except Restart:
            for item in due:  # tried again with the next batch
                heapq.heappush(self._rolls, item)
            raise
        self.rolled += len(records)
        self._metrics.erase_rolls.inc(len(records))
        log.info("writer: wrote %d records of erases again so their segments roll", len(records))

    def _decide_one(
        self,
        msg: Message,
        view: LayeredView,
        top: Overlay,
        now: int,
        records: list,
        pending_keys: dict,
        encoded_contacts: list,
        changes: list,
        encoded_events: list,
    ) -> _Outcome:
        key = msg.key()
        command_id = key.decode("utf-8", "replace") if key else None
        try:
            command = Command.decode(msg.value())
        except BadCommand as err:
            self._metrics.poison_records.labels(topic=msg.topic()).inc()
            outcome = _Outcome(None, command_id, error(500, "the writer could not read this command"))
            outcome.letter = err
            return outcome
        if command.deadline_ms is not None and now > command.deadline_ms:
            return _Outcome(command, command.id, error(503, "the write expired before the writer reached it; it was not applied"))
        idempotency = command.idempotency
        if idempotency is not None:
            earlier = pending_keys.get(idempotency.record_key)
            remembered = self._remembered.get(idempotency.record_key)
            if remembered is not None and remembered.at_ms < now - commands.IDEMPOTENCY_TTL_MS:
                remembered = None
            first_hash = (
                earlier.command.idempotency.body_hash if earlier is not None else remembered.body_hash if remembered else None
            )
            if first_hash is not None and first_hash != idempotency.body_hash:
                return _Outcome(
                    command,
                    command.id,
                    error(422, "Idempotency-Key: this key was used with a different request body", "Idempotency-Key"),
                )
            if earlier is not None:
                outcome = _Outcome(command, command.id, earlier.decision)
                outcome.same_as = earlier
                return outcome
            if remembered is not None:
                outcome = _Outcome(
                    command,
                    command.id,
                    Decision(remembered.status, list(remembered.ids), error=remembered.error, updated=list(remembered.updated)),
                )
                outcome.offsets = dict(remembered.offsets)
                return outcome
        refused: list[str] = []
        try:
            decision = decide(view, command, now)
            limit = self._publisher.record_limit
            produced: list[tuple[Produced, dict | None]] = []
            kept: list[Change] = []
            happened: list[tuple[Produced, dict]] = []  # each event record with the event it encodes
            for change in decision.changes:
                value = self._codec.encode_contact(change.contact) if change.contact is not None else None
                # Identities normalized once, here, and carried to every replica's indexes in a header.
                extra = {**change.headers, **identities.header(change.contact, self._store.phone_region)}
                headers: list[tuple[str, bytes | None]] = [(OPERATION, change.operation.encode())]
                headers += [(k, v.encode()) for k, v in extra.items()]
                size = record_bytes(change.contact_id.encode(), value, headers)
                if size > limit:
                    if command.type == commands.AUTO_CREATE:  # that contact stays as it was; the rest goes on
                        refused.append(f"contact {change.contact_id} would be {_against_limit(size, limit)}")
                        continue
                    decision = too_large(command, decision, change, size, limit)
                    produced, kept, happened = [], [], []
                    break
                event = events.event_for(
                    change.contact_id, change.operation, view.get(change.contact_id), change.contact,
                    actor=command.actor, origin=command.origin, now_ms=now, headers=change.headers,
                )  # fmt: skip
                encoded = self._event_codec.encode(event)
                event_size = record_bytes(change.contact_id.encode(), encoded)
                if event_size > self._events_limit:
                    # Refused whole, like a contact record over its limit: never a contact
                    # record without its event.
                    message = (
                        f"the change event of contact {change.contact_id} would be {megabytes(event_size)} ({event_size} bytes), "
                        f"over the record limit of {megabytes(self._events_limit)} ({self._events_limit} bytes) of the events topic"
                    )
                    if command.type == commands.AUTO_CREATE:
                        refused.append(message)
                        continue
                    decision = error(413, message, "source_id" if command.type == commands.MERGE else None)
                    produced, kept, happened = [], [], []
                    break
                produced.append((Produced(self._contacts_topic, change.contact_id.encode(), value, headers), change.contact))
                happened.append((Produced(self._events_topic, change.contact_id.encode(), encoded, []), event))
                kept.append(change)
            if refused:
                # The refused contacts stay as they were, and their conversations' join state
                # does not learn the values that would not fit.
                kept_ids = {c.contact_id for c in kept}
                learned = {}
                for conversation_id, state in decision.conversation_metadata.items():
                    owner = view.owner_of_conversation(conversation_id) or auto_created_id(
                        conversation_id, view.conversation_metadata(conversation_id)
                    )
                    if owner in kept_ids or not any(owner in r for r in refused):
                        learned[conversation_id] = state
                        continue
                    committed = view.conversation_metadata(conversation_id)
                    only_source = {**committed, **({"source": state["source"]} if "source" in state else {})}
                    if only_source != committed:
                        learned[conversation_id] = only_source
                decision = Decision(decision.status, [c.contact_id for c in kept], kept, conversation_metadata=learned)
        except RegistryError as err:  # the write may be fine: the registry did not answer
            log.warning("writer: command %s waits for nothing, the schema registry failed: %s", command.id, err)
            return _Outcome(command, command.id, error(503, f"the schema registry did not answer: {err}"))
        except Exception:  # a bug must not stall the partition: answer it and go on
            log.exception("writer: command %s (%s) failed", command.id, command.type)
            self._metrics.writer_failed_commands.inc()
            return _Outcome(command, command.id, error(500, "internal error while applying the write"))
        if decision.changes and produced:
            view.record(decision, top)
        elif decision.conversation_metadata:
            top.metadata.update(decision.conversation_metadata)
        for record, event in happened:
            changes.append(record)
            encoded_events.append((record.value, event))
        start = len(records)
        for record, contact in produced:
            records.append(record)
            if record.value is not None:
                encoded_contacts.append((record.value, contact))
        forget: list[bytes] = []
        if decision.ok:
            marker = json.dumps({"v": 1, "at": now}).encode() if decision.dismissed else b""
            for group in decision.dismissed:
                records.append(Produced(self._dismissed_topic, dismissed_key(group), marker, []))
            for key in decision.undismissed:
                records.append(Produced(self._dismissed_topic, key, None, []))
            view.record_dismissed(decision, top)
            if decision.erased:
                forget = self._forget_answers(decision.erased, pending_keys)
                records += [Produced(self._idempotency_topic, key, None, []) for key in forget]
        outcome = _Outcome(command, command.id, decision, range(start, len(records)))
        outcome.refused = refused
        outcome.forget = forget
        if idempotency is not None:
            outcome.remember = idempotency
            pending_keys[idempotency.record_key] = outcome
        return outcome

    def _forget_answers(self, erased: list[str], pending_keys: dict) -> list[bytes]:
        """The idempotency keys whose remembered answer names an erased contact: tombstoned in
        the erase's transaction (a retry of such a request after the erase is a new request).
        The writer holds every entry of the last 24 h, so this finds them all; answers of this
        batch are simply not remembered."""
        ids = set(erased)
        for key, earlier in list(pending_keys.items()):
            d = earlier.decision
            if ids & set(d.ids) or any(i in json.dumps(d.error or {}) for i in ids):
                earlier.remember = None
                del pending_keys[key]
        return [key for key, entry in self._remembered.items() if _names_any(entry, ids)]

    def unprocessable(self, consumer: Consumer, msg: Message, err: BaseException) -> list[Produced]:
        """A command that fails alone (the client library or the broker refused one of its
        records): answered, so its request is not left waiting, and dead-lettered."""
        records = [self.dead_letter(msg, err)]
        refused = isinstance(err, Unprocessable) and str(err).startswith("a record was refused")
        if msg.key():
            if refused:
                answer = error(413, f"the write would make a record over the record limit of the contacts topic ({err})")
            else:
                answer = error(500, "internal error while applying the write")
            reply = Reply(answer.status, [], answer.error, {})
            records.append(Produced(self._replies_topic, msg.key(), reply.encode(), []))
        return records

    def _replies(self, outcomes: list[_Outcome], placed: list, now: int) -> list[Produced]:
        out = []
        for outcome in outcomes:
            if outcome.offsets is None:
                if outcome.same_as is not None:
                    outcome.offsets = outcome.same_as.offsets or {}
                else:
                    offsets: dict[int, int] = {}
                    for index in outcome.records:
                        topic, partition, offset = placed[index]
                        into = (
                            offsets
                            if topic == self._contacts_topic
                            else outcome.dismissed
                            if topic == self._dismissed_topic
                            else None
                        )
                        if into is not None:
                            into[partition] = max(into.get(partition, -1), offset)
                    outcome.offsets = offsets
            if self._answered(outcome) and outcome.command_id:  # the second test narrows the type
                d = outcome.decision
                reply = Reply(d.status, d.ids, d.error, outcome.offsets, outcome.dismissed, d.updated)
                out.append(Produced(self._replies_topic, outcome.command_id.encode(), reply.encode(), []))
            if outcome.remember:
                entry = self._remembered_of(outcome, outcome.remember, now)
                out.append(Produced(self._idempotency_topic, outcome.remember.record_key, entry.encode(), []))
        return out

    @staticmethod
    def _answered(outcome: _Outcome) -> bool:
        """Whether a reply goes out for the command (routers wait for nothing)."""
        command = outcome.command
        return bool(outcome.command_id) and (command is None or command.type != commands.AUTO_CREATE)

    @staticmethod
    def _remembered_of(outcome: _Outcome, idempotency: Idempotency, now: int) -> Remembered:
        d = outcome.decision
        return Remembered(
            d.status, list(d.ids), d.error, dict(outcome.offsets or {}), idempotency.body_hash, now, list(d.updated)
        )

    def _count(self, outcomes: list[_Outcome], seconds: float) -> None:
        self._metrics.writer_batch_seconds.observe(seconds)
        for outcome in outcomes:
            kind = outcome.command.type if outcome.command is not None else "unreadable"
            status = outcome.decision.status
            counter = self._command_counters.get((kind, status))
            if counter is None:  # labels() once a kind and status, not once a command
                counter = self._command_counters[(kind, status)] = self._metrics.commands.labels(type=kind, status=str(status))
            counter.inc()
            if kind == commands.AUTO_CREATE and outcome.same_as is None:
                created = sum(1 for change in outcome.decision.changes if change.operation == "auto_created")
                self._metrics.auto_created.inc(created)
                self._metrics.auto_updated.inc(len(outcome.decision.changes) - created)
