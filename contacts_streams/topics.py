"""Creates the topics the service writes when they are missing."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from contacts_streams.config import Config

log = logging.getLogger(__name__)


def ensure_contacts_topic(config: Config, timeout: float = 30.0) -> None:
    admin = AdminClient(config.kafka())
    existing = admin.list_topics(timeout=timeout).topics
    if config.contacts_topic in existing:
        return
    topic = NewTopic(
        config.contacts_topic,
        num_partitions=config.contacts_partitions,
        replication_factor=-1,  # the broker's default.replication.factor
        config={"cleanup.policy": "compact"},
    )
    try:
        admin.create_topics([topic], operation_timeout=timeout)[config.contacts_topic].result(timeout)
        log.info("created %s with %d partitions", config.contacts_topic, config.contacts_partitions)
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
