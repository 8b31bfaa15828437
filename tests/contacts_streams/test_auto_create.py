"""Auto-create on the real broker: one contact per new conversation, exactly once."""

from __future__ import annotations

import json
import shutil
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from streamkit import group_done, wait_for

from contacts_streams import model
from contacts_streams.serialization import ContactCodec
from contacts_streams.topics import commands_topic, conversations_topic, dead_letter_topic, ensure_topics, max_record_bytes, record_bytes

SOURCES = ["facebook", "twilio.sms", "google", "chatplugin"]


def conversations(n: int) -> list[tuple[str, str]]:
    return [(str(uuid.uuid4()), SOURCES[i % len(SOURCES)]) for i in range(n)]


def interleaved(convs, per_conversation: int):
    """Messages of all conversations mixed, several per conversation."""
    return [c for _ in range(per_conversation) for c in convs]


def test_every_new_conversation_gets_exactly_one_contact(airy, start_service):
    convs = conversations(40)
    for conversation_id, source in interleaved(convs, 5):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 40, what="40 contacts")
    for conversation_id, source in convs:
        contact = service.contacts.info_by_conversation(conversation_id)
        assert contact["id"] == model.contact_id_for_conversation(conversation_id)
        assert contact["conversations"] == {conversation_id: source}
        assert contact["display_name"] == model.default_display_name(conversation_id, source)
    created = [cid for cid, op in airy.contact_records() if op == "auto_created"]
    assert sorted(created) == sorted(model.contact_id_for_conversation(c) for c, _ in convs)
    # the writer counts its batch after the commit the store applied: wait for the count, then
    # for no more than the 40
    wait_for(lambda: "contacts_auto_created_total 40.0" in _metrics(service), what="40 auto-creations counted")


def _metrics(service) -> str:
    from prometheus_client import generate_latest

    return generate_latest(service.metrics.registry).decode()


def test_replay_restart_and_a_second_instance_create_nothing_twice(airy, make_config, start_service, tmp_path):
    first, second, third = conversations(20), conversations(20), conversations(20)
    for conversation_id, source in interleaved(first, 3):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 20, what="first 20")
    service.close()  # restart mid-stream

    for conversation_id, source in interleaved(first + second, 2):
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 40, what="40 after restart")

    # A second instance joins the group (a rebalance) while messages keep coming. Messages are
    # keyed by message id, so one new conversation's first messages reach both instances at once.
    other = start_service(
        make_config(auto_create_enabled=True, instance_id="other", state_dir=str(tmp_path / "other"))
    )
    for conversation_id, source in interleaved(first + second + third, 3):
        airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: service.store.count() == 60 and other.store.count() == 60, what="60 on both instances")
    other.close()
    service.close()

    # A replay from the start under a new group: every conversation has its contact already.
    replay_config = make_config(auto_create_enabled=True, application_id=airy.config.application_id + "-replay", instance_id="replay")
    replay = start_service(replay_config)
    # The absence below means something only once the replay has decided about every message:
    # its router committed past all of them, and auto-create past all the router passed on.
    wait_for(
        lambda: group_done(airy.kafka, f"{replay_config.application_id}-router", [airy.config.messages_topic, airy.config.metadata_topic]),
        what="the replaying router to commit past every message",
    )
    wait_for(lambda: group_done(airy.kafka, f"{replay_config.application_id}-writer", [commands_topic(replay_config)]), what="the replaying writer to commit past every routed command")
    assert replay.store.count() == 60
    created = [cid for cid, op in airy.contact_records() if op == "auto_created"]
    assert len(created) == len(set(created)) == 60


def test_metadata_name_replaces_the_default_but_never_a_name_a_person_set(airy, start_service):
    (named_later, src1), (edited, src2), (avatar_only, src3) = conversations(3)
    for conversation_id, source in [(named_later, src1), (edited, src2), (avatar_only, src3)]:
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 3, what="3 contacts")
    edited_id = model.contact_id_for_conversation(edited)
    service.contacts.update(edited_id, {"display_name": "Set By A Person"})

    airy.meta(named_later, "contact.display_name", "Real Name")
    airy.meta(named_later, "contact.avatar_url", "https://example.org/a.png")
    airy.meta(edited, "contact.display_name", "Name From The Channel")
    airy.meta(avatar_only, "contact.avatar_url", "https://example.org/b.png")
    airy.flush()
    wait_for(lambda: service.contacts.info_by_conversation(avatar_only).get("avatar_url"), what="avatar")
    wait_for(lambda: service.contacts.info_by_conversation(named_later).get("display_name") == "Real Name", what="real name")
    wait_for(lambda: service.contacts.info_by_conversation(named_later).get("avatar_url"), what="avatar with the name")
    assert service.contacts.info_by_conversation(named_later)["avatar_url"] == "https://example.org/a.png"
    assert service.contacts.info_by_conversation(edited)["display_name"] == "Set By A Person"
    assert service.contacts.info_by_conversation(avatar_only)["display_name"] == model.default_display_name(avatar_only, src3)

    # Metadata that arrives before the first message names the contact right away: the
    # message is sent once the name is in the join state, and the contact is created with it
    # (one record, no default name filled later).
    early, source = conversations(1)[0]
    airy.meta(early, "contact.display_name", "Known Early")
    airy.flush()
    wait_for(lambda: service.store.join_state.get(early).get("display_name") == "Known Early", what="the early name in the join state")
    airy.message(early, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(early), what="early contact")
    assert service.contacts.info_by_conversation(early)["display_name"] == "Known Early"
    early_id = model.contact_id_for_conversation(early)
    assert [op for cid, op in airy.contact_records() if cid == early_id] == ["auto_created"]


def test_a_merged_away_contacts_conversation_gets_no_new_contact(airy, start_service):
    (a, src_a), (b, src_b) = conversations(2)
    airy.message(a, src_a)
    airy.message(b, src_b)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 2, what="2 contacts")
    id_a, id_b = model.contact_id_for_conversation(a), model.contact_id_for_conversation(b)
    service.contacts.merge(id_a, id_b)
    for _ in range(3):
        airy.message(a, src_a)
    airy.meta(a, "contact.avatar_url", "https://example.org/merged.png")
    airy.flush()
    wait_for(lambda: service.contacts.info(id_b).get("avatar_url"), what="metadata reaching the destination")
    assert service.store.count() == 1
    assert service.contacts.info_by_conversation(a)["id"] == id_b
    assert service.store.get(id_a) is None


def test_records_no_stage_can_process_go_to_the_dead_letter_topic_and_their_neighbours_are_kept(airy, start_service):
    config = airy.config
    ensure_topics(config)  # the commands topic, to hold poison records of its own
    convs = conversations(6)
    for i, (conversation_id, source) in enumerate(convs):
        airy.message(conversation_id, source)
        if i in (1, 4):
            airy.raw(config.messages_topic, b"\xc3\x01not avro at all")
    airy.raw(config.metadata_topic, b"\x00\x00\x00\x00\x07garbage")
    airy.meta(convs[3][0], "contact.display_name", "x" * (model.MAX_STRING_LENGTH + 1))  # no contact may hold it
    airy.raw(commands_topic(config), b"{not json", key=convs[0][0].encode())
    airy.raw(commands_topic(config), json.dumps({"source": 42}).encode(), key=convs[2][0].encode())
    airy.flush()
    service = start_service(config)
    wait_for(lambda: service.store.count() == 6, what="6 contacts around the poison")
    letters = wait_for(lambda: (found := airy.read(dead_letter_topic(config))) and len(found) >= 6 and found, what="6 dead letters")
    assert len(letters) == 6

    by_value = {value: (key, headers) for key, value, headers in letters}
    key, headers = by_value[b"\xc3\x01not avro at all"]
    assert key == b"poison"
    assert headers["dead_letter.topic"].decode() == config.messages_topic
    assert headers["dead_letter.stage"] == b"conversation-router"
    assert headers["dead_letter.error_class"] == b"DecodeError"
    assert int(headers["dead_letter.offset"]) >= 0 and int(headers["dead_letter.partition"]) in range(4)
    assert headers["dead_letter.error_message"]
    key, headers = by_value[b"{not json"]
    assert key == convs[0][0].encode()
    assert headers["dead_letter.topic"].decode() == commands_topic(config)
    assert headers["dead_letter.stage"] == b"writer"
    assert headers["dead_letter.error_class"] == b"BadCommand"
    assert by_value[json.dumps({"source": 42}).encode()][1]["dead_letter.error_class"] == b"BadCommand"
    too_long = [h for _k, _v, h in letters if h["dead_letter.topic"].decode() == config.metadata_topic and h["dead_letter.error_class"] == b"Unprocessable"]
    assert len(too_long) == 1 and b"longer than" in too_long[0]["dead_letter.error_message"]

    text = _metrics(service)
    dead = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("contacts_dead_letters_total{")}
    assert sum(dead.values()) == 6
    assert dead[f'stage="writer",topic="{commands_topic(config)}"'] == 2
    poisoned = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("contacts_poison_records_total{"))
    assert poisoned == 5  # the undecodable ones (messages, metadata, commands)
    assert service.contacts.info_by_conversation(convs[3][0])["display_name"] == model.default_display_name(*convs[3])
    assert service.writer.failure is None and service.router.failure is None
    assert service.alive()[0]


def test_a_fill_that_would_push_a_contact_past_the_record_limit_is_dead_lettered_and_the_rest_goes_on(airy, start_service):
    """A contact just under the broker's record limit (many conversations, as an import or
    merges make them) gets a 2048-character name from metadata: that record would be refused.
    The metadata record goes to the dead-letter topic, the contact stays as it was, and the
    other conversations' records around it are applied."""
    config = airy.config
    ensure_topics(config)
    limit = max_record_bytes(config, config.contacts_topic)
    codec = ContactCodec()
    (big, _), (neighbour, neighbour_source), (after, after_source) = conversations(3)
    contact_id = str(uuid.uuid4())
    filler = {str(uuid.uuid4()): "s" * 2000 for _ in range(limit // 2100)}
    last = str(uuid.uuid4())

    def sized(pad: int) -> tuple[dict, bytes]:
        contact = model.new_contact({"conversations": {big: "facebook", **filler, last: "p" * pad}}, contact_id, model.now_ms())
        return contact, codec.encode_contact(contact)

    contact, value = sized(10)
    contact, value = sized(10 + (limit - 1200) - record_bytes(contact_id.encode(), value, [("operation", b"imported")]))
    size = record_bytes(contact_id.encode(), value, [("operation", b"imported")])
    assert limit - 1500 < size <= limit - 1000, (size, limit)
    producer = Producer({"bootstrap.servers": airy.kafka, "partitioner": "murmur2_random"})
    producer.produce(config.contacts_topic, key=contact_id.encode(), value=value, headers=[("operation", b"imported")])
    assert producer.flush(20) == 0

    airy.message(neighbour, neighbour_source)
    airy.flush()
    service = start_service(config)
    wait_for(lambda: service.store.count() == 2, what="the big contact and the neighbour's")
    airy.meta(big, "contact.display_name", "é" * model.MAX_STRING_LENGTH)  # 4096 bytes as UTF-8
    airy.meta(neighbour, "contact.display_name", "Neighbour")
    airy.flush()
    airy.meta(after, "contact.display_name", "After")
    airy.message(after, after_source)
    airy.flush()
    wait_for(lambda: service.contacts.info_by_conversation(neighbour)["display_name"] == "Neighbour", what="the neighbour's name")
    wait_for(
        lambda: service.store.contact_id_for_conversation(after) and service.contacts.info_by_conversation(after)["display_name"] == "After",
        what="the next conversation's contact with its name",
    )
    (letter,) = wait_for(lambda: airy.read(dead_letter_topic(config)), what="the dead letter")
    key, dead_value, headers = letter
    assert headers["dead_letter.stage"] == b"writer"  # the router's command that carried the fill
    assert headers["dead_letter.topic"].decode() == commands_topic(config)
    assert b"limit" in headers["dead_letter.error_message"]
    assert json.loads(dead_value)["payload"]["conversations"][big]["contact.display_name"] == "é" * model.MAX_STRING_LENGTH
    assert service.store.get_bytes(contact_id) == value  # as it was: never a half-applied fill
    assert "display_name" not in service.store.join_state.get(big)
    assert service.writer.failure is None and service.alive()[0]


def test_the_switch_off_creates_nothing(airy, make_config, start_service):
    convs = conversations(5)
    for conversation_id, source in convs:
        airy.message(conversation_id, source)
    airy.flush()
    off = start_service(make_config(auto_create_enabled=False))
    assert off.router is None
    # Nothing reads the conversation topics at all (no waiting for something not to happen):
    # no router group holds offsets. (The join-state topic exists: an erase writes markers.)
    reader = Consumer({"bootstrap.servers": airy.kafka, "group.id": f"{airy.config.application_id}-router"})
    committed = reader.committed([TopicPartition(airy.config.messages_topic, p) for p in range(4)], timeout=10)
    reader.close()
    assert all(tp.offset < 0 for tp in committed), committed
    assert off.store.count() == 0
    assert airy.contact_records() == []
    off.close()
    # The same records do create contacts once the switch is on: they were valid all along.
    on = start_service(airy.config)
    wait_for(lambda: on.store.count() == 5, what="5 contacts with the switch on")


def test_auto_create_and_http_edits_never_lose_each_other(airy, start_service):
    convs = conversations(30)
    for conversation_id, source in convs:
        airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 30, what="30 contacts")
    # HTTP edits and metadata fills race on the same contacts: both kinds of change must land.
    for conversation_id, _ in convs:
        airy.meta(conversation_id, "contact.avatar_url", f"https://example.org/{conversation_id}.png")
    airy.flush()
    for conversation_id, _ in convs:
        service.contacts.update(model.contact_id_for_conversation(conversation_id), {"title": "Customer"})
    for conversation_id, _ in convs:
        wait_for(lambda c=conversation_id: service.contacts.info_by_conversation(c).get("avatar_url"), what="avatars")
        contact = service.contacts.info_by_conversation(conversation_id)
        assert contact["title"] == "Customer"
        assert contact["avatar_url"] == f"https://example.org/{conversation_id}.png"


def test_a_deleted_contacts_conversation_gets_a_new_contact_with_its_next_message(airy, start_service):
    (conversation_id, source), = conversations(1)
    airy.message(conversation_id, source)
    airy.flush()
    service = start_service(airy.config)
    wait_for(lambda: service.store.count() == 1, what="the first contact")
    first = service.contacts.info_by_conversation(conversation_id)
    service.router.reroute_after_s = 0.0  # the window in which the router trusts its own memory
    service.contacts.delete(first["id"])
    airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(conversation_id), what="a new contact")
    again = service.contacts.info_by_conversation(conversation_id)
    assert again["id"] == first["id"] and again["created_at"] > first["created_at"]
    assert service.store.count() == 1


def test_a_name_known_before_the_state_folder_was_lost_still_names_the_contact(airy, start_service):
    config = airy.config
    (conversation_id, source), = conversations(1)
    service = start_service(config)
    airy.meta(conversation_id, "contact.display_name", "Ada Lovelace")
    airy.meta(conversation_id, "contact.avatar_url", "https://example.org/ada.png")
    airy.flush()
    expected = {"display_name": "Ada Lovelace", "avatar_url": "https://example.org/ada.png"}
    wait_for(lambda: service.store.join_state.get(conversation_id) == expected, what="the join state in the store")
    on_topic = [json.loads(v) for k, v, _ in airy.read(conversations_topic(config)) if k == conversation_id.encode()]
    assert on_topic[-1] == expected
    service.close()

    shutil.rmtree(config.state_dir)  # a lost volume
    service = start_service(config)
    airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(conversation_id), what="the contact")
    contact = service.contacts.info_by_conversation(conversation_id)
    assert contact["display_name"] == "Ada Lovelace"
    assert contact["avatar_url"] == "https://example.org/ada.png"
    # The join state has a materializer of its own: it may land a moment after the contact.
    wait_for(lambda: service.store.join_state.get(conversation_id) == {**expected, "source": source}, what="the join state, restored")


def test_an_instance_taking_over_conversations_knows_their_join_state(airy, make_config, start_service, tmp_path):
    """A second instance (its own empty disk) takes some partitions over; the names the first
    instance learnt for those conversations name their contacts all the same."""
    convs = conversations(24)
    first = start_service(airy.config)
    for conversation_id, _ in convs:
        airy.meta(conversation_id, "contact.display_name", f"Person {conversation_id[:8]}")
    airy.flush()
    wait_for(lambda: all(first.store.join_state.get(c).get("display_name") for c, _ in convs), what="every name in the first store")
    second = start_service(make_config(auto_create_enabled=True, instance_id="second", state_dir=str(tmp_path / "second")))
    wait_for(lambda: second.router.ready, what="the second instance assigned")
    for conversation_id, source in convs:
        airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: first.store.count() == 24 and second.store.count() == 24, what="24 contacts on both instances")
    wrong = [c for c, _ in convs if first.contacts.info_by_conversation(c)["display_name"] != f"Person {c[:8]}"]
    assert not wrong, f"{len(wrong)} contacts got a default name"
    # Whichever replica is the writer creates them all, once.
    assert first.metrics.auto_created._value.get() + second.metrics.auto_created._value.get() == 24
