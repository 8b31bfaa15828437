"""The topics' erase settings: what bound each kind of topic gives (pure), and that existing
topics with other settings are altered to them on the real broker, with the bound read back."""

from __future__ import annotations

import dataclasses

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from contacts_streams import topics
from contacts_streams.config import Config

CADENCE = {topics.CLEANER_BACKOFF: 15_000, topics.RETENTION_CHECK: 300_000}


def test_every_topic_the_service_writes_keeps_data_about_erase_within_ms_at_most():
    for within in (1000, 8000, 3_600_000, 7 * 24 * 3_600_000):
        config = Config(erase_within_ms=within)
        settings = topics.erase_settings(config)
        assert set(settings) == {
            config.contacts_topic, config.events_topic, topics.commands_topic(config), topics.replies_topic(config),
            topics.idempotency_topic(config), topics.dismissed_topic(config), topics.conversations_topic(config),
            topics.dead_letter_topic(config), topics.writer_position_topic(config),
        }  # fmt: skip
        for topic, wanted in settings.items():
            policy = "compact" if "max.compaction.lag.ms" in wanted else "delete"
            bound = topics._bound_of({"cleanup.policy": policy, **wanted}, {topics.CLEANER_BACKOFF: 0, topics.RETENTION_CHECK: 0}, True)
            # the broker's cadence and the writer's roll margin come on top
            assert bound is not None and bound <= within + 500, (within, topic, wanted, bound)


def test_a_topic_without_a_time_limit_has_no_bound():
    assert topics._bound_of({"cleanup.policy": "compact", "segment.ms": "604800000", "max.compaction.lag.ms": str(topics.NEVER)}, CADENCE, True) is None
    assert topics._bound_of({"cleanup.policy": "delete", "retention.ms": "-1", "segment.ms": "1000"}, CADENCE, False) is None
    assert topics._bound_of({"cleanup.policy": "delete", "retention.ms": "1000", "segment.ms": "500", "file.delete.delay.ms": "100"}, CADENCE, False) == 1000 + 500 + 300_000 + 100


def test_existing_topics_are_altered_to_the_erase_settings_and_the_bound_says_so(kafka, unique):
    config = Config(kafka_brokers=kafka, contacts_topic=f"{unique}.contacts", application_id=unique, erase_within_ms=60_000)
    admin = AdminClient({"bootstrap.servers": kafka})
    # as an older version created them: compacted, delete with a day's retention
    made = [
        NewTopic(config.contacts_topic, 2, 1, config={"cleanup.policy": "compact"}),
        NewTopic(topics.commands_topic(config), 1, 1, config={"cleanup.policy": "delete", "retention.ms": "86400000"}),
    ]
    for future in admin.create_topics(made).values():
        future.result(30)
    before = topics.apply_erase_settings(dataclasses.replace(config, erase_within_ms=10 * 365 * 24 * 3600 * 1000))
    bound = topics.apply_erase_settings(config)
    assert bound.bound_ms is not None and bound.bound_ms < before.bound_ms
    assert set(bound.topics) == {config.contacts_topic, topics.commands_topic(config)}  # the others do not exist here
    resources = [ConfigResource(ResourceType.TOPIC, t.topic) for t in made]
    described = {r.name: f.result(30) for r, f in admin.describe_configs(resources).items()}
    contacts = described[config.contacts_topic]
    assert contacts["segment.ms"].value == "30000" and contacts["max.compaction.lag.ms"].value == "30000"
    assert contacts["cleanup.policy"].value == "compact"  # what it was otherwise stays
    assert described[topics.commands_topic(config)]["retention.ms"].value == "48000"
    # the broker's cadence is part of the bound (the test broker cleans every second)
    assert bound.topics[config.contacts_topic] == 30_000 + 500 + 1000 + 6000
    for future in admin.delete_topics([t.topic for t in made]).values():
        future.result(30)
