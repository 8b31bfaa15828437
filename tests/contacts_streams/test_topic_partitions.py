"""The topics one writer writes get one partition unless CONTACTS_PARTITIONS says otherwise."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from contacts_streams.config import Config
from contacts_streams.topics import conversations_topic, ensure_topics


def _config(kafka: str, unique: str, tmp_path, **extra: str) -> Config:
    return Config.from_env(
        {
            "KAFKA_BROKERS": kafka,
            "CONTACTS_TOPIC": f"{unique}.contacts",
            "CONTACT_EVENTS_TOPIC": f"{unique}.contact-events",
            "MESSAGES_TOPIC": f"{unique}.messages",
            "METADATA_TOPIC": f"{unique}.metadata",
            "APPLICATION_ID": unique,
            "STATE_DIR": str(tmp_path),
            **extra,
        }
    )


def _partitions(kafka: str, config: Config) -> list[int]:
    topics = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics
    return [len(topics[t].partitions) for t in (config.contacts_topic, config.events_topic, conversations_topic(config))]


def test_a_new_install_gets_one_partition_for_the_contacts_events_and_join_state_topics(kafka, unique, tmp_path):
    config = _config(kafka, unique, tmp_path)
    ensure_topics(config)
    assert _partitions(kafka, config) == [1, 1, 1]


def test_contacts_partitions_still_sets_them(kafka, unique, tmp_path):
    config = _config(kafka, unique, tmp_path, CONTACTS_PARTITIONS="4")
    ensure_topics(config)
    assert _partitions(kafka, config) == [4, 4, 4]
