"""The topics the service writes: their names, creation when missing, and record size limits."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from contacts_streams import commands
from contacts_streams.config import Config
from contacts_streams.kafka_security import BrokerRefused, StartupErrors

log = logging.getLogger(__name__)


HOUR_MS = 3600 * 1000
REPLIES_RETENTION_MS = HOUR_MS
IDEMPOTENCY_RETENTION_MS = commands.IDEMPOTENCY_TTL_MS
# Above the largest command (a 16 MiB request body and its envelope).
COMMANDS_MAX_MESSAGE_BYTES = commands.MAX_COMMAND_BYTES + 1024 * 1024
# librdkafka's default message.max.bytes and the broker's default max.message.bytes.
PRODUCER_MAX_BYTES = 1_000_000
TOPIC_MAX_BYTES = 1_048_588
# A record batch's header (61 bytes) and one record's varints and attributes, with room to spare.
RECORD_OVERHEAD = 256
# An event names before and after of every changed path: a merge's carries the destination's
# merge_history twice, so it may be about twice the contact record. Room for that, and the
# writer's producer takes records this large (it checks contact records against the contacts
# topic's own limit itself).
EVENTS_MAX_MESSAGE_BYTES = 4 * TOPIC_MAX_BYTES


def commands_topic(config: Config) -> str:
    """Every write, from HTTP replicas and the conversation routers, to the one writer."""
    return f"{config.application_id}-commands"


def replies_topic(config: Config) -> str:
    return f"{config.application_id}-replies"


def idempotency_topic(config: Config) -> str:
    return f"{config.application_id}-idempotency"


def conversations_topic(config: Config) -> str:
    """Auto-create's join state: conversation id -> {source, display_name, avatar_url} (JSON)."""
    return f"{config.application_id}-conversations"


def dismissed_topic(config: Config) -> str:
    """Groups people said are not duplicates: sorted contact ids joined by "," -> a marker."""
    return f"{config.application_id}-dismissed"


def dead_letter_topic(config: Config) -> str:
    """Records a stream stage can never process, as received, with the error in headers."""
    return f"{config.application_id}-dead-letter"


def ensure_topics(config: Config, timeout: float = 30.0, errors: StartupErrors | None = None) -> None:
    """The compacted contacts topic, the change-events topic, the dead-letter topic, the writer's commands, replies and
    idempotency and dismissed-groups topics and, with auto-create on, the join-state topic.

    This is the service's first call to the broker. With `errors`, what librdkafka reports
    meanwhile is judged: refused credentials or certificates raise BrokerRefused within about a
    second instead of being retried (a metadata call only ever says "transport failure")."""
    wanted = [
        NewTopic(
            config.contacts_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,  # the broker's default.replication.factor
            config={"cleanup.policy": "compact"},
        ),
        NewTopic(
            # Key: the contact id, partitioned like the contacts topic (murmur2), so one
            # contact's events stay in order. Events carry personal data: kept ERASE_WITHIN_MS.
            config.events_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(config.erase_within_ms),
                "max.message.bytes": str(EVENTS_MAX_MESSAGE_BYTES),
            },
        ),
        NewTopic(
            dead_letter_topic(config),
            num_partitions=1,  # a trickle, read by people
            replication_factor=-1,
            # Dead letters hold the records as received, personal data included.
            config={"cleanup.policy": "delete", "retention.ms": str(config.erase_within_ms)},
        ),
    ]
    # The writer's topics: one partition each (one writer applies every command in order).
    # Commands and replies carry personal data for their retention only.
    wanted += [
        NewTopic(
            commands_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(min(HOUR_MS, config.erase_within_ms)),
                "max.message.bytes": str(COMMANDS_MAX_MESSAGE_BYTES),
            },
        ),
        NewTopic(
            replies_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "delete", "retention.ms": str(min(REPLIES_RETENTION_MS, config.erase_within_ms))},
        ),
        NewTopic(
            idempotency_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact,delete", "retention.ms": str(IDEMPOTENCY_RETENTION_MS)},
        ),
        # Contact ids only, nothing personal: kept for good, one record per dismissed group.
        NewTopic(dismissed_topic(config), num_partitions=1, replication_factor=-1, config={"cleanup.policy": "compact"}),
    ]
    if config.auto_create_enabled:
        wanted.append(
            NewTopic(
                conversations_topic(config),
                num_partitions=config.contacts_partitions,
                replication_factor=-1,
                config={"cleanup.policy": "compact"},
            )
        )
    admin = AdminClient(config.kafka(**({"error_cb": errors} if errors is not None else {})))
    existing = _list_topics(admin, timeout, errors)
    missing = [topic for topic in wanted if topic.topic not in existing]
    if not missing:
        return
    deadline = time.monotonic() + timeout
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created %s", name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, missing, deadline)


def _wait_for_leaders(admin: AdminClient, created: list[NewTopic], deadline: float) -> None:
    """A created topic's partitions take their leaders a moment after CreateTopics answers; a
    consumer asking for offsets meanwhile gets NOT_LEADER_FOR_PARTITION (seen on a busy machine,
    where it stopped the materializer). Return once every partition answers an offset request,
    or at the deadline (the caller's retries take over from there)."""
    wanted = {TopicPartition(t.topic, p): OffsetSpec.latest() for t in created for p in range(t.num_partitions)}
    while time.monotonic() < deadline:
        try:
            futures = admin.list_offsets(wanted, request_timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            for future in futures.values():
                future.result()
            return
        except KafkaException:
            time.sleep(0.1)


def _list_topics(admin: AdminClient, timeout: float, errors: StartupErrors | None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic()))).topics
        except KafkaException:
            if errors is None or time.monotonic() >= deadline:
                raise
            admin.poll(0)  # serves error_cb
            if errors.fatal is not None:
                raise BrokerRefused(errors.fatal) from None


def max_record_bytes(config: Config, topic: str, timeout: float = 10.0, producer_max: int | None = None) -> int:
    """The largest record (key + value + headers) this service's producers can write to `topic`:
    the smaller of the topic's max.message.bytes and the producer's message.max.bytes (or
    `producer_max`), less the overhead of a batch that holds only that record."""
    if producer_max is None:
        producer_max = int(config.kafka().get("message.max.bytes", PRODUCER_MAX_BYTES))
    topic_max = TOPIC_MAX_BYTES
    admin = AdminClient(config.kafka())
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
        if "max.message.bytes" in entries and entries["max.message.bytes"].value is not None:
            topic_max = int(entries["max.message.bytes"].value)
    except KafkaException as err:  # not allowed to describe it: assume the broker's default
        log.warning("cannot read max.message.bytes of %s, assuming %d: %s", topic, topic_max, err)
    return min(producer_max, topic_max) - RECORD_OVERHEAD


def record_bytes(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> int:
    """What a record counts against max_record_bytes."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers or [])
