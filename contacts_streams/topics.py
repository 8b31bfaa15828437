"""Creates the topics the service writes when they are missing."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from contacts_streams.config import Config
from contacts_streams.kafka_security import BrokerRefused, StartupErrors

log = logging.getLogger(__name__)


REPARTITION_RETENTION_MS = 7 * 24 * 3600 * 1000


def ensure_topics(config: Config, timeout: float = 30.0, errors: StartupErrors | None = None) -> None:
    """The compacted contacts topic and, with auto-create on, its repartition topic.

    This is the service's first call to the broker. With `errors`, what librdkafka reports
    meanwhile is judged: refused credentials or certificates raise BrokerRefused within about a
    second instead of being retried (a metadata call only ever says "transport failure")."""
    from contacts_streams.auto_create import repartition_topic

    wanted = [
        NewTopic(
            config.contacts_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,  # the broker's default.replication.factor
            config={"cleanup.policy": "compact"},
        )
    ]
    if config.auto_create_enabled:
        wanted.append(
            NewTopic(
                repartition_topic(config),
                num_partitions=config.contacts_partitions,
                replication_factor=-1,
                config={"cleanup.policy": "delete", "retention.ms": str(REPARTITION_RETENTION_MS)},
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
