"""Liveness that notices a stream stage which no longer moves (LIVENESS_STALL_MS), on the real
broker: a stage with input waiting and no progress fails /actuator/health/liveness naming itself;
an idle stage never does; a stage that moves again is alive again."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Producer
from streamkit import wait_for

from api.app import create_app
from contacts_streams import model
from contacts_streams.config import Config, ConfigError
from contacts_streams.serialization import ContactCodec

STALL_MS = 1500


def liveness(client) -> tuple[int, str]:
    answer = client.get("/actuator/health/liveness")
    return answer.status_code, answer.get_json()["reason"]


class StuckView:
    """The writer's view of the store, stuck on one conversation until released: a decision that
    never returns (a store read that hangs, a bug that loops)."""

    def __init__(self, view, conversation_id: str):
        self._view = view
        self._conversation_id = conversation_id
        self.release, self.reached = threading.Event(), threading.Event()

    def owner_of_conversation(self, conversation_id: str):
        if conversation_id == self._conversation_id:
            self.reached.set()
            self.release.wait(60)
        return self._view.owner_of_conversation(conversation_id)

    def __getattr__(self, name):
        return getattr(self._view, name)


def test_the_writer_stuck_on_a_command_fails_liveness_naming_it_and_recovers(airy, make_config, start_service):
    """Auto-create decides in the writer (its commands come from the conversation router): a
    writer that cannot get past one command fails liveness as the writer, not the router that
    sent it nor the materializer."""
    config = make_config(auto_create_enabled=True, liveness_stall_ms=STALL_MS, write_timeout_ms=2000)
    service = start_service(config)
    client = create_app(config, service).test_client()
    (moving, source), (stuck, stuck_source) = [(str(uuid.uuid4()), "facebook") for _ in range(2)]
    airy.message(moving, source)
    airy.flush()
    wait_for(lambda: service.store.contact_id_for_conversation(moving), what="a first contact")
    assert liveness(client)[0] == 200

    view = StuckView(service.writer._base, stuck)
    service.writer._base = view
    try:
        airy.message(stuck, stuck_source)
        airy.flush()
        assert view.reached.wait(30), "the writer never decided about the conversation"
        status, reason = wait_for(lambda: (answer := liveness(client))[0] == 503 and answer, timeout=30, what="liveness to fail")
        assert reason.startswith("writer has made no progress"), reason
        assert "materializer" not in reason and "router" not in reason, reason
        assert service.writer.failure is None  # the thread lives: only progress tells
    finally:
        view.release.set()
    wait_for(lambda: service.store.contact_id_for_conversation(stuck), what="the contact once the writer goes on")
    wait_for(lambda: liveness(client)[0] == 200, what="liveness to recover")


def test_a_store_that_takes_no_writes_fails_liveness_naming_the_materializer(make_config, start_service, kafka):
    config = make_config(liveness_stall_ms=STALL_MS)
    service = start_service(config)
    client = create_app(config, service).test_client()
    contact = model.new_contact({"display_name": "Stuck"}, str(uuid.uuid4()), model.now_ms())
    producer = Producer({"bootstrap.servers": kafka, "partitioner": "murmur2_random"})
    with service.store._write_lock:  # every store write of the materializer takes it
        producer.produce(config.contacts_topic, key=contact["id"].encode(), value=ContactCodec().encode_contact(contact), headers=[("operation", b"created")])
        assert producer.flush(20) == 0
        status, reason = wait_for(lambda: (answer := liveness(client))[0] == 503 and answer, timeout=30, what="liveness to fail")
        assert reason.startswith("materializer has made no progress"), reason
    wait_for(lambda: service.store.get_bytes(contact["id"]), what="the record applied once the store takes writes")
    wait_for(lambda: liveness(client)[0] == 200, what="liveness to recover")


def test_idle_stages_stay_alive(airy, make_config, start_service):
    """After work (transactions leave a marker after their last record, so committed offsets
    stay one short of the end) every stage idles: well past the stall time, still alive."""
    config = make_config(auto_create_enabled=True, liveness_stall_ms=1000)
    service = start_service(config)
    client = create_app(config, service).test_client()
    for _ in range(5):
        conversation_id = str(uuid.uuid4())
        airy.message(conversation_id, "google")
        airy.meta(conversation_id, "contact.display_name", "Idle")
    airy.flush()
    wait_for(lambda: service.store.count() == 5, what="5 contacts")
    start = time.monotonic()
    seen = set()
    # Until the watchdog has judged the stages three stall times after the last work.
    while service.liveness_checked_at < start + 3 * config.liveness_stall_ms / 1000:
        assert time.monotonic() < start + 30, "the watchdog does not run"
        seen.add(liveness(client))
        time.sleep(0.1)
    assert seen == {(200, "alive")}, seen


def test_the_stall_time_and_the_erase_bound_are_validated():
    assert Config.from_env({}).liveness_stall_ms == 300_000
    assert Config.from_env({}).erase_within_ms == 7 * 24 * 3600 * 1000
    for env, name in [({"LIVENESS_STALL_MS": "0"}, "LIVENESS_STALL_MS"), ({"ERASE_WITHIN_MS": "a week"}, "ERASE_WITHIN_MS")]:
        with pytest.raises(ConfigError, match=name):
            Config.from_env(env)
