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

The join state (what is known of each conversation: source, display name, avatar) is durable in
the compacted ``<APPLICATION_ID>-conversations`` topic. AutoCreate writes it, because it owns
the conversation: the router reads messages keyed by message id, so two routers could write one
conversation's whole value at once and lose a field. Every replica materializes that topic into
its store (``store.join_state``); a new owner of a repartition partition first waits until its
store holds the committed end of the join-state and contacts topics, so it decides with what the
previous owner knew, whatever disk it has lost.

Each stage commits its output (contacts, join state, dead letters) and its consumer offsets in
one transaction per poll batch. A record a stage can never process goes to the dead-letter topic
in that transaction; so does a metadata record whose fill would push a contact past the broker's
record limit (the contact stays as it was).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams import identities, model
from contacts_streams.config import Config
from contacts_streams.contacts import conversation_lock_key
from contacts_streams.exactly_once import ExactlyOnceLoop, Produced, Restart, Unprocessable
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import OPERATION, Publisher, Unavailable
from contacts_streams.serialization import ContactCodec, DecodeError, message_codec, metadata_codec
from contacts_streams.store import Store
from contacts_streams.topics import conversations_topic, max_record_bytes, record_bytes, repartition_topic

log = logging.getLogger(__name__)

# Keys of the repartition topic's JSON events (kept as they were: records in flight stay readable).
DISPLAY_NAME, AVATAR_URL = "contact.display_name", "contact.avatar_url"
SUBJECT_PREFIX = "conversation:"
SOURCE = "source"
# The join state's fields, by the event keys that carry them.
JOINED = {DISPLAY_NAME: "display_name", AVATAR_URL: "avatar_url"}
LOCK_ATTEMPTS = 5
RECENTLY_ROUTED = 200_000
REROUTE_AFTER_S = 30.0

__all__ = ["AutoCreate", "ConversationRouter", "conversations_topic", "repartition_topic"]


def _checked_text(value, what: str, limit: int = model.MAX_STRING_LENGTH) -> str:
    """A value auto-create may put into a contact: what the API would accept there."""
    if not isinstance(value, str):
        raise Unprocessable(f"{what} is not a string")
    if len(value) > limit:
        raise Unprocessable(f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise Unprocessable(f"{what} contains the character U+0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable(f"{what} is not valid Unicode") from None
    return value


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
        letters: list[Produced] = []
        for msg in messages:
            if msg.value() is None:
                continue
            try:
                if msg.topic() == self._config.messages_topic:
                    self._read_message(msg, events)
                else:
                    self._read_metadata(msg, events)
            except (DecodeError, Unprocessable, ValueError, KeyError, TypeError) as err:
                if isinstance(err, DecodeError):
                    self._metrics.poison_records.labels(topic=msg.topic()).inc()
                letters.append(self.dead_letter(msg, err))
        records = [Produced(self._target, c.encode(), json.dumps(e, separators=(",", ":")).encode(), []) for c, e in events.items()]
        self.commit(consumer, producer, self.next_offsets(messages), records + letters)
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
        _checked_text(conversation_id, "conversationId", model.MAX_KEY_LENGTH)
        source = _checked_text(str(message["source"]), "source")
        routed_at = self._routed.get(conversation_id)
        if routed_at is not None and time.monotonic() - routed_at < self.reroute_after_s:
            return
        if conversation_id not in events and self._store.contact_id_for_conversation(conversation_id):
            return
        events.setdefault(conversation_id, {}).setdefault(SOURCE, source)

    def _read_metadata(self, msg: Message, events: dict[str, dict]) -> None:
        metadata = self._metadata.decode(msg.value())
        subject, key, value = metadata["subject"], metadata["key"], metadata["value"]
        if subject.startswith(SUBJECT_PREFIX) and key in (DISPLAY_NAME, AVATAR_URL) and value:
            conversation_id = _checked_text(subject[len(SUBJECT_PREFIX) :], "the subject's conversation id", model.MAX_KEY_LENGTH)
            if conversation_id:
                events.setdefault(conversation_id, {})[key] = _checked_text(value, key)


@dataclass
class _Batch:
    """What one poll batch of the repartition topic asks for."""

    new_conversations: dict[str, str] = field(default_factory=dict)  # conversation -> source
    metadata: dict[str, dict] = field(default_factory=dict)  # conversation -> {display_name?, avatar_url?}
    carriers: dict[str, list[Message]] = field(default_factory=dict)  # conversation -> its records with metadata

    def add(self, conversation_id: str, event: dict, msg: Message) -> None:
        if SOURCE in event:
            self.new_conversations.setdefault(conversation_id, event[SOURCE])
        values = {JOINED[k]: v for k, v in event.items() if k in JOINED}
        if values:
            self.metadata.setdefault(conversation_id, {}).update(values)
            self.carriers.setdefault(conversation_id, []).append(msg)


def _read_event(msg: Message) -> tuple[str, dict]:
    """A repartition record as (conversation id, event); Unprocessable when it is not one."""
    if msg.key() is None:
        raise Unprocessable("record without a key (the conversation id)")
    conversation_id = msg.key().decode("utf-8")
    event = json.loads(msg.value())
    if not isinstance(event, dict):
        raise Unprocessable("the event is not a JSON object")
    for key in (SOURCE, *JOINED):
        if key in event:
            _checked_text(event[key], key)
    return conversation_id, event


def encode_join_state(state: dict) -> bytes:
    """The join-state topic's value: JSON (internal, never read by the platform; readable with
    any console consumer, and new fields need no schema)."""
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


class AutoCreate(ExactlyOnceLoop):
    name = "auto-create"

    def __init__(
        self,
        config: Config,
        store: Store,
        publisher: Publisher,
        materializer: Materializer,
        metrics: Metrics,
        codec: ContactCodec,
        join_state: Materializer,
    ):
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
        self._join_state = join_state
        self._join_topic = conversations_topic(config)
        self._codec = codec
        self._sync_needed = False
        self._record_limit: int | None = None

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        self._sync_needed = True

    def _sync_with_topic(self) -> None:
        """After an assignment, catch the store up with the committed end of the contacts and
        join-state topics first: the partitions may come from an instance whose last contacts
        and join state this store has not read (or from before this store lost its disk)."""
        admin = AdminClient(self._config.kafka())
        try:
            for topic, materializer in ((self._config.contacts_topic, self._materializer), (self._join_topic, self._join_state)):
                described = admin.list_topics(topic, timeout=self._timeout).topics[topic]
                request = {TopicPartition(topic, p): OffsetSpec.latest() for p in described.partitions}
                futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout)
                ends = {tp.partition: future.result().offset for tp, future in futures.items()}
                if not materializer.wait_reached(ends, self._timeout * 3):
                    raise Restart(f"the store did not catch up with {topic} in time")
            if self._record_limit is None:
                self._record_limit = max_record_bytes(self._config, self._config.contacts_topic, self._timeout)
        except KafkaException as err:
            raise Restart(f"cannot read the topics' committed ends: {err}") from err

    def process(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        if self._sync_needed:
            self._sync_needed = False
            try:
                self._sync_with_topic()
            except Restart:
                self._sync_needed = True
                raise
        batch = _Batch()
        letters: list[Produced] = []
        for msg in messages:
            try:
                conversation_id, event = _read_event(msg)
            except (Unprocessable, ValueError, TypeError) as err:
                letters.append(self.dead_letter(msg, err))
                continue
            batch.add(conversation_id, event, msg)
        try:
            self._decide_and_commit(consumer, producer, batch, self.next_offsets(messages), letters)
        except Unavailable as err:  # HTTP writes held the locks too long: retry the batch
            raise Restart(str(err)) from err

    def _decide_and_commit(self, consumer: Consumer, producer: Producer, batch: _Batch, offsets: dict, letters: list[Produced]) -> None:
        for _attempt in range(LOCK_ATTEMPTS):
            owners = self._owners(batch)
            keys = [conversation_lock_key(c) for c in owners] + [o for o in owners.values() if o]
            keys += [model.contact_id_for_conversation(c) for c in batch.new_conversations]
            with self._publisher.writing(keys):
                if self._owners(batch) != owners:  # a merge or update moved a conversation meanwhile
                    continue
                records, refused = self._decide(batch, owners)
                joined = self._join_state_records(batch, refused)
                refused_letters = [self.dead_letter(msg, err) for c, err in refused.items() for msg in batch.carriers[c]]
                written = self.commit(consumer, producer, offsets, records + joined + letters + refused_letters)
                self._wait_applied(self._materializer, {p: o for (t, p), o in written.items() if t == self._config.contacts_topic})
                self._wait_applied(self._join_state, {p: o for (t, p), o in written.items() if t == self._join_topic})
            created = sum(1 for r in records if dict(r.headers)[OPERATION] == b"auto_created")
            self._metrics.auto_created.inc(created)
            self._metrics.auto_updated.inc(len(records) - created)
            return
        raise Restart("conversations kept moving while auto-create tried to lock them")

    def _wait_applied(self, materializer: Materializer, positions: dict[int, int]) -> None:
        # The next batch decides against the store: it must hold this batch's output first.
        while positions and not materializer.wait_applied(positions, self._timeout):
            if self._stopping.is_set() or materializer.failure is not None:
                raise Restart("stopped before the store applied the committed batch")
            log.warning("auto-create waits for the store to apply its last batch (%s)", materializer.name)

    def _owners(self, batch: _Batch) -> dict[str, str | None]:
        conversations = set(batch.new_conversations) | set(batch.metadata)
        return {c: self._store.contact_id_for_conversation(c) for c in conversations}  # live contacts only

    def _known(self, conversation_id: str) -> dict:
        """The conversation's join state as committed (a store from before the join-state topic
        may still hold some of it only locally)."""
        return {**self._store.join_state.legacy(conversation_id), **self._store.join_state.get(conversation_id)}

    def _join_state_records(self, batch: _Batch, refused: dict[str, Exception]) -> list[Produced]:
        """The whole new join state of every conversation this batch taught something."""
        records = []
        for conversation_id in sorted(set(batch.new_conversations) | set(batch.metadata)):
            committed = self._store.join_state.get(conversation_id)
            state = self._known(conversation_id)
            if conversation_id in batch.new_conversations:
                state.setdefault(SOURCE, batch.new_conversations[conversation_id])
            if conversation_id not in refused:
                state.update(batch.metadata.get(conversation_id, {}))
            if state != committed:
                records.append(Produced(self._join_topic, conversation_id.encode(), encode_join_state(state), []))
        return records

    def _fits(self, contact_id: str, value: bytes, operation: str) -> bool:
        limit = self._record_limit if self._record_limit is not None else max_record_bytes(self._config, self._config.contacts_topic)
        self._record_limit = limit
        return record_bytes(contact_id.encode(), value, [(OPERATION, operation.encode())]) <= limit

    def _decide(self, batch: _Batch, owners: dict[str, str | None]) -> tuple[list[Produced], dict[str, Exception]]:
        """The contact records of the batch, and the conversations whose metadata cannot be
        applied (the fill would make the contact a record the broker refuses)."""
        now = model.now_ms()
        changed: dict[str, tuple[dict, str, bytes | None]] = {}  # contact id -> (state, operation, encoded)
        refused: dict[str, Exception] = {}
        for conversation_id, source in batch.new_conversations.items():
            if owners[conversation_id] is not None:
                continue
            contact_id = model.contact_id_for_conversation(conversation_id)
            if contact_id in changed or self._store.get_bytes(contact_id) is not None:
                # The derived id exists without this conversation: a person removed it on purpose.
                continue
            known = self._known(conversation_id)
            fields = {
                "display_name": known.get("display_name") or model.default_display_name(conversation_id, source),
                "conversations": {conversation_id: source},
            }
            if known.get("avatar_url"):
                fields["avatar_url"] = known["avatar_url"]
            changed[contact_id] = (model.new_contact(fields, contact_id, now), "auto_created", None)
            owners[conversation_id] = contact_id
        for conversation_id, values in batch.metadata.items():
            owner = owners.get(conversation_id)
            if owner is None:
                continue
            contact, operation, _ = changed.get(owner) or (self._store.get(owner), "updated", None)
            if contact is None:
                continue
            filled = _fill(contact, conversation_id, values, now)
            if filled is contact:
                continue
            value = self._codec.encode_contact(filled)
            if not self._fits(owner, value, operation):
                refused[conversation_id] = Unprocessable(
                    f"filling conversation {conversation_id}'s metadata into contact {owner} would make it a "
                    f"{len(value)}-byte record, over the {self._record_limit}-byte limit of {self._config.contacts_topic}"
                )
                continue
            changed[owner] = (filled, operation, value)
        records = []
        for contact_id, (contact, operation, value) in changed.items():
            value = value if value is not None else self._codec.encode_contact(contact)
            self._store.remember(value, contact)
            records.append(Produced(self._config.contacts_topic, contact_id.encode(), value, [(OPERATION, operation.encode())] + [(k, v.encode()) for k, v in identities.header(contact, self._store.phone_region).items()]))
        return records, refused


def _fill(contact: dict, conversation_id: str, values: dict, now: int) -> dict:
    """A real name replaces the default name and an avatar fills an empty one; a value a person
    set is never overwritten. Returns the contact itself when nothing changes."""
    changes = {}
    name = values.get("display_name")
    source = contact.get("conversations", {}).get(conversation_id)
    current = contact.get("display_name")
    if name and name != current and source is not None:
        if current is None or current == model.default_display_name(conversation_id, source):
            changes["display_name"] = name
    avatar = values.get("avatar_url")
    if avatar and not contact.get("avatar_url"):
        changes["avatar_url"] = avatar
    if not changes:
        return contact
    return model.apply_update(contact, changes, now)
