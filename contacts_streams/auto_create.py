"""Auto-create: one contact for every new conversation, exactly once (DESIGN.md, "auto-create").

Two exactly-once stages, as Kafka Streams would build it:

1. ``ConversationRouter`` reads the messages and metadata topics (messages are keyed by message
   id, so one conversation's messages lie in many partitions) and re-keys what auto-create needs
   by conversation id onto a repartition topic: the conversation's source, its display name and
   avatar. Within a batch, and for conversations it recently routed, it routes each once.
2. ``AutoCreate`` reads the repartition topic, where every conversation has exactly one owner in
   the group, so two instances never decide about one conversation at once. It creates the
   contact of a conversation that no contact references and fills a default name or an empty
   avatar from metadata, deciding against the store plus its batch's own pending records, under
   the same per-contact locks as HTTP writes.

Each stage commits its output and its consumer offsets in one transaction per poll batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, IsolationLevel, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams import model
from contacts_streams.config import Config
from contacts_streams.contacts import conversation_lock_key
from contacts_streams.exactly_once import ExactlyOnceLoop, Produced, Restart
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import OPERATION, Publisher, Unavailable
from contacts_streams.serialization import ContactCodec, DecodeError, message_codec, metadata_codec
from contacts_streams.store import Store

log = logging.getLogger(__name__)

DISPLAY_NAME, AVATAR_URL = "contact.display_name", "contact.avatar_url"
SUBJECT_PREFIX = "conversation:"
SOURCE = "source"
LOCK_ATTEMPTS = 5
RECENTLY_ROUTED = 200_000
REROUTE_AFTER_S = 30.0


def repartition_topic(config: Config) -> str:
    return f"{config.application_id}-conversations-repartition"


class ConversationRouter(ExactlyOnceLoop):
    name = "conversation-router"

    def __init__(self, config: Config, store: Store, metrics: Metrics):
        super().__init__(
            config,
            metrics,
            group_id=f"{config.application_id}-router",
            topics=[config.messages_topic, config.metadata_topic],
            transactional_id=f"{config.application_id}-{config.instance_id}-router",
        )
        self._store = store
        self._target = repartition_topic(config)
        self._messages = message_codec(config.schema_registry_url)
        self._metadata = metadata_codec(config.schema_registry_url)
        # Conversations whose source this instance routed lately: their later messages need no
        # trip while auto-create is still creating their contact. Past the window the store
        # answers; a conversation whose contact was deleted is routed (and gets one) again.
        self._routed: OrderedDict[str, float] = OrderedDict()
        self.reroute_after_s = REROUTE_AFTER_S

    def process(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        events: dict[str, dict] = {}
        for msg in messages:
            if msg.value() is None:
                continue
            try:
                if msg.topic() == self._config.messages_topic:
                    self._read_message(msg, events)
                else:
                    self._read_metadata(msg, events)
            except (DecodeError, ValueError, KeyError, TypeError) as err:
                log.error("skipping undecodable record %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), err)
                self._metrics.poison_records.labels(topic=msg.topic()).inc()
        records = [Produced(self._target, c.encode(), json.dumps(e, separators=(",", ":")).encode(), []) for c, e in events.items()]
        self.commit(consumer, producer, self.next_offsets(messages), records)
        now = time.monotonic()
        for conversation_id, event in events.items():
            if SOURCE in event:
                self._routed[conversation_id] = now
                self._routed.move_to_end(conversation_id)
        while len(self._routed) > RECENTLY_ROUTED:
            self._routed.popitem(last=False)

    def _read_message(self, msg: Message, events: dict[str, dict]) -> None:
        message = self._messages.decode(msg.value())
        conversation_id = str(message["conversationId"])
        if not conversation_id:
            return
        routed_at = self._routed.get(conversation_id)
        if routed_at is not None and time.monotonic() - routed_at < self.reroute_after_s:
            return
        if conversation_id not in events and self._store.contact_id_for_conversation(conversation_id):
            return
        events.setdefault(conversation_id, {}).setdefault(SOURCE, str(message["source"]))

    def _read_metadata(self, msg: Message, events: dict[str, dict]) -> None:
        metadata = self._metadata.decode(msg.value())
        subject, key, value = metadata["subject"], metadata["key"], metadata["value"]
        if subject.startswith(SUBJECT_PREFIX) and key in (DISPLAY_NAME, AVATAR_URL) and value:
            events.setdefault(subject[len(SUBJECT_PREFIX) :], {})[key] = value


@dataclass
class _Batch:
    """What one poll batch of the repartition topic asks for."""

    new_conversations: dict[str, str] = field(default_factory=dict)  # conversation -> source
    metadata: dict[str, dict] = field(default_factory=dict)  # conversation -> {name?, avatar?}


class AutoCreate(ExactlyOnceLoop):
    name = "auto-create"

    def __init__(self, config: Config, store: Store, publisher: Publisher, materializer: Materializer, metrics: Metrics, codec: ContactCodec):
        super().__init__(
            config,
            metrics,
            group_id=config.application_id,
            topics=[repartition_topic(config)],
            transactional_id=f"{config.application_id}-{config.instance_id}-auto-create",
        )
        self._store = store
        self._publisher = publisher
        self._materializer = materializer
        self._codec = codec
        self._sync_needed = False

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        self._sync_needed = True

    def _sync_with_topic(self) -> None:
        """After an assignment, catch the store up with the contacts topic's current end first:
        the partitions may come from an instance whose last contacts this store has not read."""
        admin = AdminClient(self._config.kafka())
        topic = admin.list_topics(self._config.contacts_topic, timeout=self._timeout).topics[self._config.contacts_topic]
        request = {TopicPartition(self._config.contacts_topic, p): OffsetSpec.latest() for p in topic.partitions}
        futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout)
        ends = {tp.partition: future.result().offset for tp, future in futures.items()}
        if not self._materializer.wait_reached(ends, self._timeout * 3):
            raise Restart("the store did not catch up with the contacts topic in time")

    def process(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        if self._sync_needed:
            self._sync_needed = False
            self._sync_with_topic()
        batch = _Batch()
        for msg in messages:
            try:
                event = json.loads(msg.value())
                conversation_id = msg.key().decode()
            except (ValueError, AttributeError) as err:
                log.error("skipping undecodable repartition record @%d: %s", msg.offset(), err)
                self._metrics.poison_records.labels(topic=msg.topic()).inc()
                continue
            if SOURCE in event:
                batch.new_conversations.setdefault(conversation_id, str(event[SOURCE]))
            values = {k: v for k, v in event.items() if k in (DISPLAY_NAME, AVATAR_URL) and isinstance(v, str)}
            if values:
                batch.metadata.setdefault(conversation_id, {}).update(values)
        if batch.metadata:
            # Kept before the offsets commit, so no committed metadata record is ever lost.
            merged = {c: {**self._store.conversation_metadata(c), **values} for c, values in batch.metadata.items()}
            self._store.put_conversation_metadata(merged)
        try:
            self._decide_and_commit(consumer, producer, batch, self.next_offsets(messages))
        except Unavailable as err:  # HTTP writes held the locks too long: retry the batch
            raise Restart(str(err)) from err

    def _decide_and_commit(self, consumer: Consumer, producer: Producer, batch: _Batch, offsets: dict) -> None:
        for _attempt in range(LOCK_ATTEMPTS):
            owners = self._owners(batch)
            keys = [conversation_lock_key(c) for c in owners] + [o for o in owners.values() if o]
            keys += [model.contact_id_for_conversation(c) for c in batch.new_conversations]
            with self._publisher.writing(keys):
                if self._owners(batch) != owners:  # a merge or update moved a conversation meanwhile
                    continue
                records = self._decide(batch, owners)
                written = self.commit(consumer, producer, offsets, records)
                self._wait_applied({p: o for (t, p), o in written.items() if t == self._config.contacts_topic})
            created = sum(1 for r in records if dict(r.headers)[OPERATION] == b"auto_created")
            self._metrics.auto_created.inc(created)
            self._metrics.auto_updated.inc(len(records) - created)
            return
        raise Restart("conversations kept moving while auto-create tried to lock them")

    def _wait_applied(self, positions: dict[int, int]) -> None:
        # The next batch decides against the store: it must hold this batch's contacts first.
        while positions and not self._materializer.wait_applied(positions, self._timeout):
            if self._stopping.is_set() or self._materializer.failure is not None:
                raise Restart("stopped before the store applied the committed batch")
            log.warning("auto-create waits for the store to apply its last batch")

    def _owners(self, batch: _Batch) -> dict[str, str | None]:
        conversations = set(batch.new_conversations) | set(batch.metadata)
        return {c: self._store.contact_id_for_conversation(c) for c in conversations}  # live contacts only

    def _decide(self, batch: _Batch, owners: dict[str, str | None]) -> list[Produced]:
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
        records = []
        for contact_id, (contact, operation) in changed.items():
            value = self._codec.encode_contact(contact)
            self._store.remember(value, contact)
            records.append(Produced(self._config.contacts_topic, contact_id.encode(), value, [(OPERATION, operation.encode())]))
        return records


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
