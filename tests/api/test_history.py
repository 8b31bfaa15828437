"""Change events on the real broker: one event per contact record in the same transaction (a
read_committed consumer of both topics sees them together), replaying the events topic equals
the contacts topic's state, and contacts.history serves them newest first, for live,
merged-away and deleted ids, after a restart and after a rebuild from the topic."""

from __future__ import annotations

import shutil
import time
import uuid

import jwt
from confluent_kafka import Consumer, KafkaError

from api.app import create_app
from contacts_streams.config import Config
from contacts_streams.events import EventCodec, replay
from contacts_streams.serialization import ContactCodec
from support import post

JWT_SECRET = "a-jwt-secret-long-enough-for-hs256-keys"


def read_committed(config, topic: str, deadline_s: float = 30.0) -> list:
    """Every committed record of a topic, up to its end now (every write here was answered, so
    committed, before this is called)."""
    consumer = Consumer({
        "bootstrap.servers": config.kafka_brokers, "group.id": f"read-{uuid.uuid4()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.partition.eof": True,
    })  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.subscribe([topic])
        done, records = set(), []
        deadline = time.monotonic() + deadline_s
        while len(done) < len(partitions):
            assert time.monotonic() < deadline, f"{topic}: only {sorted(done)} of {len(partitions)} partitions read to the end"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            done.discard(msg.partition())
            records.append(msg)
        return records
    finally:
        consumer.close()


def history(client, contact_id, **extra):
    return post(client, "/contacts.history", {"id": contact_id, **extra}, 200)


def test_every_contact_record_has_its_event_and_the_events_replay_to_the_contacts(service, client):
    guarded = create_app(Config(**{**service.config.__dict__, "jwt_secret": JWT_SECRET}), service).test_client()
    token = jwt.encode({"sub": "agent-7"}, JWT_SECRET, algorithm="HS256")
    conversation = str(uuid.uuid4())
    ada = post(client, "/contacts.create", {"display_name": "Ada", "via": {"email": "ada@example.org"}, "metadata": {"crm": {"id": 1}}}, 201)
    bob = post(client, "/contacts.create", {"display_name": "Bob", "title": "Dr", "conversations": {conversation: "facebook"}}, 201)
    response = guarded.post("/contacts.update", json={"id": ada["id"], "via": {"phone": "+49 170 1234567", "email": ""}, "title": "Countess"},
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert response.status_code == 202
    post(client, "/contacts.merge", {"source_id": bob["id"], "destination_id": ada["id"]}, 200)
    post(client, "/contacts.unmerge", {"destination_id": ada["id"], "source_id": bob["id"]}, 200)
    post(client, "/contacts.merge", {"source_id": bob["id"], "destination_id": ada["id"]}, 200)
    imported = post(client, "/contacts.import", [{"display_name": "Cleo"}, {"display_name": "Dan"}], 201)["data"]
    post(client, "/contacts.delete", {"id": imported[1]["id"]}, 202)
    cli = client.post("/contacts.update", json={"id": imported[0]["id"], "title": "CLI"}, headers={"X-Contacts-Origin": "cli"})
    assert cli.status_code == 202

    config = service.config
    contact_records = read_committed(config, config.contacts_topic)
    event_records = read_committed(config, config.events_topic)
    codec, contact_codec = EventCodec(subject=None), ContactCodec(subject=None)
    by_contact: dict[str, list] = {}
    for msg in event_records:
        event = codec.decode(msg.value())
        assert msg.key().decode() == event["contact_id"]
        by_contact.setdefault(event["contact_id"], []).append(event)
    # exactly one event per contact record, same key, same operation, in the same order
    operations: dict[str, list[str]] = {}
    last: dict[str, dict | None] = {}
    for msg in contact_records:
        contact_id = msg.key().decode()
        operations.setdefault(contact_id, []).append(dict(msg.headers())["operation"].decode())
        last[contact_id] = contact_codec.decode_contact(msg.value()) if msg.value() is not None else None
    assert {c: [e["operation"] for e in events] for c, events in by_contact.items()} == operations
    assert operations[ada["id"]] == ["created", "updated", "merged", "unmerged", "merged"]
    assert operations[bob["id"]] == ["created", "merged_away", "restored", "merged_away"]
    # replaying each contact's events gives the contact topic's latest record
    for contact_id, events in by_contact.items():
        assert replay(events) == last[contact_id], contact_id

    # who and how
    ada_events = {e["operation"]: e for e in by_contact[ada["id"]]}
    assert (ada_events["created"]["actor"], ada_events["created"]["origin"]) == ("anonymous", "http")
    assert (ada_events["updated"]["actor"], ada_events["updated"]["origin"]) == ("agent-7", "http")
    assert {c["path"]: (c["before"], c["after"]) for c in ada_events["updated"]["changes"] if c["path"] != "updated_at"} == {
        "title": (None, '"Countess"'), "via.email": ('"ada@example.org"', None), "via.phone": (None, '"+49 170 1234567"'),
    }  # fmt: skip
    assert ada_events["merged"]["other_contact_id"] == bob["id"]
    assert [(e["operation"], e["origin"]) for e in by_contact[imported[1]["id"]]] == [("imported", "import"), ("deleted", "http")]
    assert by_contact[imported[0]["id"]][-1]["origin"] == "cli"

    # contacts.history: newest first, with the other contact named, paged by cursor
    page = history(client, ada["id"], page_size=2)
    assert [e["operation"] for e in page["data"]] == ["merged", "unmerged"]
    older = history(client, ada["id"], page_size=2, cursor=page["pagination_data"]["next_cursor"])
    assert [e["operation"] for e in older["data"]] == ["merged", "updated"]
    whole = history(client, ada["id"], page_size=100)
    assert [e["event_id"] for e in whole["data"]] == [e["event_id"] for e in reversed(by_contact[ada["id"]])]
    assert whole["pagination_data"]["next_cursor"] is None
    # merged-away and deleted ids are known: their events still show
    assert history(client, bob["id"])["data"][0]["other_contact_id"] == ada["id"]
    assert [e["operation"] for e in history(client, imported[1]["id"])["data"]] == ["deleted", "imported"]
    assert post(client, "/contacts.history", {"id": str(uuid.uuid4())}, 404)["message"]
    assert post(client, "/contacts.history", {"id": "nope"}, 400)["field"] == "id"
    assert post(client, "/contacts.history", {"id": ada["id"], "cursor": "bm9wZQ"}, 400)["field"] == "cursor"


def test_history_is_there_right_after_a_write_and_survives_a_restart_and_a_rebuild(make_config, start_service):
    config = make_config()
    service = start_service(config)
    client = create_app(config, service).test_client()
    contact = post(client, "/contacts.create", {"display_name": "Eve"}, 201)
    for n in range(3):
        post(client, "/contacts.update", {"id": contact["id"], "title": f"t{n}"}, 202)
        # read-your-writes: the write's event is in the history at once
        assert history(client, contact["id"])["data"][0]["changes"][0] == {"path": "title", "before": f'"t{n - 1}"' if n else None, "after": f'"t{n}"'}
    expected = history(client, contact["id"])
    assert len(expected["data"]) == 4
    service.close()

    again = start_service(config)
    assert history(create_app(config, again).test_client(), contact["id"]) == expected
    again.close()
    shutil.rmtree(config.state_dir)  # a lost disk: everything comes back from the topics
    rebuilt = start_service(config)
    client = create_app(config, rebuilt).test_client()
    deadline = time.monotonic() + 30
    while (answer := client.post("/contacts.history", json={"id": contact["id"]})).status_code == 503:
        assert time.monotonic() < deadline, answer.get_json()
        time.sleep(0.1)
    assert answer.get_json() == expected
