"""Auto-create: one contact for every new conversation, exactly once (DESIGN.md, "auto-create").

``ConversationRouter`` reads the messages and metadata topics (one consumer group, partitioned
across replicas; messages are keyed by message id, so one conversation's messages lie in many
partitions) and sends the writer what auto-create needs, by conversation: its source, its
display name and avatar. One ``auto_create`` command carries a batch of conversations; it and
the router's consumer offsets commit in one transaction. The writer (``decisions``) creates the
contact of a conversation no contact references and fills names and avatars, in order with every
HTTP write, so the two never race.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Message

from contacts_streams import commands, model, topics
from contacts_streams.commands import Command
from contacts_streams.config import Config
from contacts_streams.decisions import AVATAR_URL, DISPLAY_NAME, ERASED_AT, SOURCE, TIMES
from contacts_streams.exactly_once import ExactlyOnceLoop
from contacts_streams.metrics import Metrics
from contacts_streams.serialization import DecodeError, message_codec, metadata_codec
from contacts_streams.store import Store
from contacts_streams.transaction import Produced, Unprocessable

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "conversation:"
RECENTLY_ROUTED = 200_000
REROUTE_AFTER_S = 30.0
CONVERSATIONS_PER_COMMAND = 1000


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
        self._target = topics.commands_topic(config)
        self._messages = message_codec(config.schema_registry_url)
        self._metadata = metadata_codec(config.schema_registry_url)
        # Conversations whose source this instance routed lately (monotonic and wall-clock ms):
        # their later messages need no trip while auto-create is still creating their contact.
        # Past the window the store answers; a conversation whose contact was deleted is routed
        # (and gets one) again, at once when its contact was erased since.
        self._routed: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.reroute_after_s = REROUTE_AFTER_S

    def producer_settings(self) -> dict:
        # A router that dies inside a transaction holds back every read_committed reader of the
        # commands topic (the writer) until the transaction times out: keep that short.
        return {"linger.ms": 5, "transaction.timeout.ms": 10_000}

    def process(self, consumer: Consumer, messages: list[Message]) -> None:
        if not messages:
            return
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
        items = list(events.items())
        records = []
        for start in range(0, len(items), CONVERSATIONS_PER_COMMAND):
            command = Command.new(
                commands.AUTO_CREATE,
                {"conversations": dict(items[start : start + CONVERSATIONS_PER_COMMAND])},
                sender=self._config.instance_id,
                actor="auto-create",
                origin=commands.ORIGIN_AUTO_CREATE,
            )
            records.append(Produced(self._target, command.id.encode(), command.encode(), []))
        self.commit(consumer, self.next_offsets(messages), records + letters)
        now = (time.monotonic(), int(time.time() * 1000))
        for conversation_id, event in events.items():
            if SOURCE in event:
                self._routed[conversation_id] = now
                self._routed.move_to_end(conversation_id)
        while len(self._routed) > RECENTLY_ROUTED:
            self._routed.popitem(last=False)

    def _read_message(self, msg: Message, events: dict[str, dict]) -> None:
        value = msg.value()
        if value is None:
            raise DecodeError("a message record without a value")
        message = self._messages.decode(value)
        conversation_id = str(message["conversationId"])
        if not conversation_id:
            return
        _checked_text(conversation_id, "conversationId", model.MAX_KEY_LENGTH)
        source = _checked_text(str(message["source"]), "source")
        routed = self._routed.get(conversation_id)
        if routed is not None and time.monotonic() - routed[0] < self.reroute_after_s:
            erased_at = self._store.join_state.get(conversation_id).get(ERASED_AT)
            if not isinstance(erased_at, int) or erased_at < routed[1]:
                return
        if conversation_id not in events and self._store.contact_id_for_conversation(conversation_id):
            return
        event = events.get(conversation_id, {})
        if SOURCE not in event:
            at = _time_of(msg, message.get("sentAt"))
            if self._before_erase(conversation_id, at):
                return
            event[SOURCE] = source
            event.setdefault(TIMES, {})[SOURCE] = at
            events[conversation_id] = event

    def _read_metadata(self, msg: Message, events: dict[str, dict]) -> None:
        value = msg.value()
        if value is None:
            raise DecodeError("a metadata record without a value")
        metadata = self._metadata.decode(value)
        subject, key, value = metadata["subject"], metadata["key"], metadata["value"]
        if subject.startswith(SUBJECT_PREFIX) and key in (DISPLAY_NAME, AVATAR_URL) and value:
            conversation_id = _checked_text(subject[len(SUBJECT_PREFIX) :], "the subject's conversation id", model.MAX_KEY_LENGTH)
            if conversation_id:
                at = _time_of(msg, metadata.get("timestamp"))
                if self._before_erase(conversation_id, at):
                    return
                event = events.setdefault(conversation_id, {})
                event[key] = _checked_text(value, key)
                event.setdefault(TIMES, {})[key] = at

    def _before_erase(self, conversation_id: str, at: int) -> bool:
        """A record from before its conversation's contact was erased: not even sent on (the
        writer would drop it, but the commands topic would hold it for its retention). The
        writer decides for records whose erase this replica has not applied yet."""
        erased_at = self._store.join_state.get(conversation_id).get(ERASED_AT)
        return isinstance(erased_at, int) and at <= erased_at


def _time_of(msg: Message, fallback) -> int:
    """When a record was written (ms): the writer compares it with a conversation's erase, so
    a record from before the erase never brings back what was erased."""
    kind, timestamp = msg.timestamp()
    if kind != TIMESTAMP_NOT_AVAILABLE and timestamp >= 0:
        return timestamp
    return fallback if isinstance(fallback, int) else 0
