"""Auto-create: one contact for every new conversation, exactly once (DESIGN.md, "auto-create").

A consumer group reads the messages and metadata topics; each poll batch becomes one Kafka
transaction holding the contacts it creates or fills and the group's offsets
(``send_offsets_to_transaction``), so replays, restarts and rebalances create nothing twice.
Decisions are taken against the store plus the batch's own pending records, under the same
per-contact locks as HTTP writes, and the next batch starts only once the store has applied
this one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams import model
from contacts_streams.config import Config
from contacts_streams.contacts import conversation_lock_key
from contacts_streams.materializer import LAG_INTERVAL_S, Materializer, report_lag
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import Outgoing, Publisher, Unavailable
from contacts_streams.serialization import ContactCodec, DecodeError, message_codec, metadata_codec
from contacts_streams.store import Store

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
DISPLAY_NAME, AVATAR_URL = "contact.display_name", "contact.avatar_url"
SUBJECT_PREFIX = "conversation:"
LOCK_ATTEMPTS = 5


@dataclass
class _Batch:
    """What one poll batch asks for, after decoding."""

    new_conversations: dict[str, str] = field(default_factory=dict)  # conversation -> source
    metadata: dict[str, dict] = field(default_factory=dict)  # conversation -> {name?, avatar?}
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next


class AutoCreate:
    def __init__(self, config: Config, store: Store, publisher: Publisher, materializer: Materializer, metrics: Metrics, codec: ContactCodec):
        self._config = config
        self._store = store
        self._publisher = publisher
        self._materializer = materializer
        self._metrics = metrics
        self._codec = codec
        self._messages = message_codec(config.schema_registry_url)
        self._metadata = metadata_codec(config.schema_registry_url)
        self._timeout = config.write_timeout_ms / 1000
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned = threading.Event()
        self._sync_needed = threading.Event()
        self._sources_missing = False
        self.failure: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self.failure is None and (self._assigned.is_set() or self._sources_missing)

    def status(self) -> str:
        if self.failure is not None:
            return f"auto-create failed: {self.failure}"
        return "auto-create consumer assigned" if self.ready else "auto-create consumer joining its group"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="auto-create", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the consume-transform-produce loop --------------------------------------------------

    def _run(self) -> None:
        producer = None
        try:
            producer = self._new_producer()
            while not self._stopping.is_set():
                consumer = self._new_consumer()
                try:
                    self._consume(consumer, producer)
                except _Restart as restart:
                    log.warning("auto-create restarts its consumer: %s", restart)
                    if restart.replace_producer:
                        producer = self._new_producer()
                    time.sleep(0.2)
                finally:
                    consumer.close()
        except BaseException as err:
            log.exception("auto-create stopped")
            self.failure = err

    def _new_producer(self) -> Producer:
        producer = Producer(
            self._config.kafka(
                **{
                    "transactional.id": f"{self._config.application_id}-{self._config.instance_id}-auto-create",
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
                log.warning("auto-create waits for the transaction coordinator: %s", err)

    def _new_consumer(self) -> Consumer:
        consumer = Consumer(
            self._config.kafka(
                **{
                    "group.id": self._config.application_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                }
            )
        )

        def assigned(_consumer, partitions):
            self._sync_needed.set()
            self._assigned.set()

        consumer.subscribe([self._config.messages_topic, self._config.metadata_topic], on_assign=assigned)
        return consumer

    def _consume(self, consumer: Consumer, producer: Producer) -> None:
        interval = self._config.commit_interval_ms / 1000
        checked_sources = lag_reported = 0.0
        while not self._stopping.is_set():
            messages = consumer.consume(BATCH_SIZE, interval)
            if time.monotonic() - lag_reported > LAG_INTERVAL_S:
                lag_reported = time.monotonic()
                report_lag(consumer, self._metrics, consumer.position(consumer.assignment()))
            if not self._assigned.is_set() and time.monotonic() - checked_sources > 5:
                checked_sources = time.monotonic()
                self._sources_missing = self._sources_are_missing(consumer)
            if messages:
                try:
                    self._process(consumer, producer, messages)
                except Unavailable as err:  # HTTP writes held the locks too long: retry the batch
                    raise _Restart(str(err)) from err

    def _sources_are_missing(self, consumer: Consumer) -> bool:
        topics = consumer.list_topics(timeout=5).topics
        return self._config.messages_topic not in topics and self._config.metadata_topic not in topics

    def _sync_with_topic(self) -> None:
        """After an assignment, catch the store up with the contacts topic's current end first:
        the partitions may come from an instance whose last contacts this store has not read."""
        admin = AdminClient(self._config.kafka())
        topic = admin.list_topics(self._config.contacts_topic, timeout=self._timeout).topics[self._config.contacts_topic]
        request = {TopicPartition(self._config.contacts_topic, p): OffsetSpec.latest() for p in topic.partitions}
        futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout)
        ends = {tp.partition: future.result().offset for tp, future in futures.items()}
        if not self._materializer.wait_reached(ends, self._timeout * 3):
            raise _Restart("the store did not catch up with the contacts topic in time")

    def _process(self, consumer: Consumer, producer: Producer, messages: list) -> None:
        batch = self._decode(messages)
        if not batch.offsets:
            return
        if self._sync_needed.is_set():
            self._sync_needed.clear()
            self._sync_with_topic()
        if batch.metadata:
            # Kept before the offsets commit, so no committed metadata record is ever lost.
            merged = {c: {**self._store.conversation_metadata(c), **values} for c, values in batch.metadata.items()}
            self._store.put_conversation_metadata(merged)
        for attempt in range(LOCK_ATTEMPTS):
            owners = self._owners(batch)
            keys = [conversation_lock_key(c) for c in owners] + [o for o in owners.values() if o]
            keys += [model.contact_id_for_conversation(c) for c in batch.new_conversations]
            with self._publisher.locks.hold(keys, self._timeout):
                if self._owners(batch) != owners:  # a merge or update moved a conversation meanwhile
                    continue
                outgoing = self._decide(batch, owners)
                self._commit(consumer, producer, batch, outgoing)
            created = sum(1 for record in outgoing if record.operation == "auto_created")
            self._metrics.auto_created.inc(created)
            self._metrics.auto_updated.inc(len(outgoing) - created)
            return
        raise _Restart("conversations kept moving while auto-create tried to lock them")

    def _decode(self, messages: list) -> _Batch:
        batch = _Batch()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("auto-create consumer: %s", error)
                continue
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            try:
                if msg.topic() == self._config.messages_topic:
                    self._read_message(msg, batch)
                else:
                    self._read_metadata(msg, batch)
            except (DecodeError, ValueError, KeyError, TypeError) as err:
                log.error("skipping undecodable record %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), err)
                self._metrics.poison_records.labels(topic=msg.topic()).inc()
        return batch

    def _read_message(self, msg, batch: _Batch) -> None:
        if msg.value() is None:
            return
        message = self._messages.decode(msg.value())
        conversation_id = str(message["conversationId"])
        if conversation_id and conversation_id not in batch.new_conversations:
            batch.new_conversations[conversation_id] = str(message["source"])

    def _read_metadata(self, msg, batch: _Batch) -> None:
        if msg.value() is None:
            return
        metadata = self._metadata.decode(msg.value())
        subject, key, value = metadata["subject"], metadata["key"], metadata["value"]
        if not subject.startswith(SUBJECT_PREFIX) or key not in (DISPLAY_NAME, AVATAR_URL) or not value:
            return
        batch.metadata.setdefault(subject[len(SUBJECT_PREFIX) :], {})[key] = value

    def _owners(self, batch: _Batch) -> dict[str, str | None]:
        conversations = set(batch.new_conversations) | set(batch.metadata)
        owners = {}
        for conversation_id in conversations:
            owner = self._store.contact_id_for_conversation(conversation_id)
            owners[conversation_id] = owner if owner and self._store.get_bytes(owner) is not None else None
        return owners

    def _decide(self, batch: _Batch, owners: dict[str, str | None]) -> list[Outgoing]:
        now = model.now_ms()
        changed: dict[str, tuple[dict, str]] = {}  # contact id -> (state, operation)
        for conversation_id, source in batch.new_conversations.items():
            if owners[conversation_id] is not None:
                continue
            contact_id = model.contact_id_for_conversation(conversation_id)
            if contact_id in changed or self._store.get_bytes(contact_id) is not None:
                # The derived id exists without this conversation: a person removed it on purpose.
                continue
            known = self._store.conversation_metadata(conversation_id)
            fields = {
                "display_name": known.get(DISPLAY_NAME) or model.default_display_name(conversation_id, source),
                "conversations": {conversation_id: source},
            }
            if known.get(AVATAR_URL):
                fields["avatar_url"] = known[AVATAR_URL]
            changed[contact_id] = (model.new_contact(fields, contact_id, now), "auto_created")
            owners[conversation_id] = contact_id
        for conversation_id, values in batch.metadata.items():
            owner = owners.get(conversation_id)
            if owner is None:
                continue
            contact, operation = changed.get(owner) or (self._store.get(owner), "updated")
            if contact is None:
                continue
            filled = _fill(contact, conversation_id, values, now)
            if filled is not contact:
                changed[owner] = (filled, operation)
        return [Outgoing(cid, self._codec.encode_contact(c), op) for cid, (c, op) in changed.items()]

    def _commit(self, consumer: Consumer, producer: Producer, batch: _Batch, outgoing: list[Outgoing]) -> None:
        positions: dict[int, int] = {}
        failures: list = []

        def delivered(err, msg):
            if err is not None:
                failures.append(err)
            else:
                positions[msg.partition()] = max(positions.get(msg.partition(), -1), msg.offset())

        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in batch.offsets.items()]
        try:
            producer.begin_transaction()
            for record in outgoing:
                producer.produce(
                    self._config.contacts_topic,
                    key=record.contact_id.encode(),
                    value=record.value,
                    headers=record.headers(),
                    on_delivery=delivered,
                )
                producer.poll(0)
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), self._timeout)
            producer.commit_transaction(self._timeout)
        except KafkaException as err:
            error = err.args[0]
            self._metrics.produce_errors.labels(reason="auto_create").inc()
            if error.fatal():
                raise _Restart(f"fatal transaction error: {error}", replace_producer=True) from err
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException as abort_err:
                raise _Restart(f"abort failed: {abort_err}", replace_producer=True) from err
            # The consumer read past what is now uncommitted: a new one resumes from the group's offsets.
            raise _Restart(f"transaction aborted: {error}") from err
        if failures:
            raise _Restart(f"committed with failed deliveries: {failures}", replace_producer=True)
        # The next batch decides against the store: it must hold this batch's contacts first.
        while positions and not self._materializer.wait_applied(positions, self._timeout):
            if self._stopping.is_set() or self._materializer.failure is not None:
                raise _Restart("stopped before the store applied the committed batch")
            log.warning("auto-create waits for the store to apply its last batch")


class _Restart(Exception):
    def __init__(self, message: str, replace_producer: bool = False):
        super().__init__(message)
        self.replace_producer = replace_producer


def _fill(contact: dict, conversation_id: str, values: dict, now: int) -> dict:
    """A real name replaces the default name and an avatar fills an empty one; a value a person
    set is never overwritten. Returns the contact itself when nothing changes."""
    changes = {}
    name = values.get(DISPLAY_NAME)
    source = contact.get("conversations", {}).get(conversation_id)
    current = contact.get("display_name")
    if name and name != current and source is not None:
        if current is None or current == model.default_display_name(conversation_id, source):
            changes["display_name"] = name
    avatar = values.get(AVATAR_URL)
    if avatar and not contact.get("avatar_url"):
        changes["avatar_url"] = avatar
    if not changes:
        return contact
    return model.apply_update(contact, changes, now)
