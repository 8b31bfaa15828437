"""Where a new writer starts in the commands topic: the position its predecessor committed in its
last transaction (the writer-position topic), not the writer group's offsets, which the writer
commits after its transactions, without waiting, and which may lag behind (a writer killed
between the two)."""

from __future__ import annotations

import json

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from streamkit import read_records, read_topic, wait_for

from contacts_streams.topics import commands_topic, writer_position_topic

TITLES = [f"Title {i}" for i in range(12)]


def _operations(kafka: str, config, contact_id: str) -> list[bytes]:
    return [
        dict(h)["operation"] for _p, _o, key, _v, h in read_records(kafka, config.contacts_topic) if key.decode() == contact_id
    ]


def _group_offset(kafka: str, config) -> int:
    admin = AdminClient({"bootstrap.servers": kafka})
    group = f"{config.application_id}-writer"
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(commands_topic(config), 0)])]
    return admin.list_consumer_group_offsets(request, request_timeout=10)[group].result().topic_partitions[0].offset


def _first_writer(make_config, start_service, kafka, tmp_path):
    # Commands stay applicable for two minutes: a writer that read them again would apply them.
    config = make_config(state_dir=str(tmp_path / "first"), write_timeout_ms=120_000)
    first = start_service(config)
    contact_id = first.contacts.create({"display_name": "Ada"})["id"]
    # Enough transactions that the new writer reads the position topic from its tail, not whole.
    for title in TITLES:
        first.contacts.update(contact_id, {"title": title})
    first.close()  # the writer leaves its group
    sent = len(read_records(kafka, commands_topic(config)))
    return config, contact_id, sent


def test_a_new_writer_starts_where_the_last_transaction_left_off_even_when_the_group_lags(
    make_config, start_service, kafka, tmp_path
):
    config, contact_id, sent = _first_writer(make_config, start_service, kafka, tmp_path)
    commands = commands_topic(config)
    [(_key, value, _headers)] = [r for r in read_topic(kafka, writer_position_topic(config)) if r[0] == b"commands"][-1:]
    assert json.loads(value) == {f"{commands}:0": sent}
    wait_for(lambda: _group_offset(kafka, config) == sent, what="the group's offsets to follow the position")

    # The group's offsets back at the start, as after a kill between a transaction and the
    # group commit that follows it: a writer that trusted them would apply the updates again.
    admin = AdminClient({"bootstrap.servers": kafka})
    group = f"{config.application_id}-writer"
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(commands, 0, 0)])])[group].result(30)

    second = start_service(make_config(state_dir=str(tmp_path / "second"), write_timeout_ms=120_000))
    wait_for(lambda: second.writer.holding, what="the second service to become the writer")
    # The new writer brings the group level with the position (lag tools, wait-until-settled).
    wait_for(lambda: _group_offset(kafka, config) == sent, what="the takeover to commit the position to the group")
    second.contacts.update(contact_id, {"title": "Chair"})
    assert _operations(kafka, config, contact_id) == [b"created"] + [b"updated"] * (len(TITLES) + 1)
    assert second.contacts.info(contact_id)["title"] == "Chair"


def test_group_offsets_further_than_the_position_win(make_config, start_service, kafka, tmp_path):
    """A writer of a version before the position topic (a rolling upgrade, or a rollback and
    forward again) commits only the group's offsets: the position record it left behind is
    older than where that writer stopped."""
    config, contact_id, sent = _first_writer(make_config, start_service, kafka, tmp_path)
    wait_for(lambda: _group_offset(kafka, config) == sent, what="the group's offsets to follow the position")
    producer = Producer({"bootstrap.servers": kafka})
    producer.produce(
        writer_position_topic(config), key=b"commands", value=json.dumps({f"{commands_topic(config)}:0": 1}).encode()
    )
    assert producer.flush(30) == 0

    second = start_service(make_config(state_dir=str(tmp_path / "second"), write_timeout_ms=120_000))
    wait_for(lambda: second.writer.holding, what="the second service to become the writer")
    second.contacts.update(contact_id, {"title": "Chair"})
    assert _operations(kafka, config, contact_id) == [b"created"] + [b"updated"] * (len(TITLES) + 1)
