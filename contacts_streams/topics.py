"""The topics the service writes: names, and their creation when they are missing."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from contacts_streams import commands
from contacts_streams.config import Config

log = logging.getLogger(__name__)

HOUR_MS = 3600 * 1000
COMMANDS_RETENTION_MS = HOUR_MS
REPLIES_RETENTION_MS = HOUR_MS
IDEMPOTENCY_RETENTION_MS = commands.IDEMPOTENCY_TTL_MS
# Above the largest command (a 16 MiB request body and its envelope).
COMMANDS_MAX_MESSAGE_BYTES = commands.MAX_COMMAND_BYTES + 1024 * 1024


def commands_topic(config: Config) -> str:
    return f"{config.application_id}-commands"


def replies_topic(config: Config) -> str:
    return f"{config.application_id}-replies"


def idempotency_topic(config: Config) -> str:
    return f"{config.application_id}-idempotency"


def wanted_topics(config: Config) -> list[NewTopic]:
    """The compacted contacts topic, and the writer's topics: commands and replies (one
    partition each: one writer applies all commands in order) and the idempotency keys."""
    return [
        NewTopic(
            config.contacts_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,  # the broker's default.replication.factor
            config={"cleanup.policy": "compact"},
        ),
        NewTopic(
            commands_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(COMMANDS_RETENTION_MS),
                "max.message.bytes": str(COMMANDS_MAX_MESSAGE_BYTES),
            },
        ),
        NewTopic(
            replies_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "delete", "retention.ms": str(REPLIES_RETENTION_MS)},
        ),
        NewTopic(
            idempotency_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact,delete", "retention.ms": str(IDEMPOTENCY_RETENTION_MS)},
        ),
    ]


def ensure_topics(config: Config, timeout: float = 30.0) -> None:
    admin = AdminClient(config.kafka())
    existing = admin.list_topics(timeout=timeout).topics
    missing = [topic for topic in wanted_topics(config) if topic.topic not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created %s", name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
