"""Webhook delivery on the real broker to a real local HTTP receiver: signed events, every one at
least once and in order per contact through random failures, a receiver that is down for a while,
dead letters after the last try, and a webhooks process killed with -9 or stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest
from streamkit import read_topic, wait_for
from webhookkit import Events, Receiver, free_port

from contacts_streams.topics import dead_letter_topic
from contacts_streams.webhooks import RetryPolicy, Subscription, Webhooks, WebhooksConfig

pytestmark = pytest.mark.broker
SECRET = "whsec-test-7c1d"
FAST = RetryPolicy(base_ms=20, max_delay_ms=300, max_attempts=0, max_duration_ms=0)


@pytest.fixture
def setup(kafka, make_config, new_topic):
    """A config whose events topic (4 partitions) belongs to this test, and an event producer."""
    topic = new_topic("contact-events", partitions=4)
    config = make_config(events_topic=topic)
    return config, Events(kafka, topic)


@pytest.fixture
def run_webhooks():
    started = []

    def run(config, *subscriptions, **settings):
        webhooks = Webhooks(config, WebhooksConfig(subscriptions=tuple(subscriptions), commit_interval_ms=200, **settings))
        started.append(webhooks)
        return webhooks.start(topic_timeout=30)

    yield run
    for webhooks in started:
        webhooks.stop()


def contacts(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def assert_in_order(receiver: Receiver, events: Events, contact_ids=None) -> None:
    order = receiver.per_contact()
    for contact in contact_ids or events.by_contact:
        assert order[contact] == events.by_contact[contact], f"contact {contact}: events out of order or missing"


def counter(webhooks: Webhooks, name: str, subscription: str) -> float:
    return webhooks.metrics.registry.get_sample_value(f"contacts_webhooks_{name}_total", {"subscription": subscription}) or 0


def test_signed_events_arrive_once_in_order_and_only_the_wanted_operations(setup, run_webhooks):
    config, events = setup
    everything, deletes = Receiver(SECRET).start(), Receiver("other-secret").start()
    try:
        people = contacts(20)
        events.produce(people, per_contact=5)
        deleted = events.produce(people[:3], per_contact=1, operation="deleted")
        webhooks = run_webhooks(
            config,
            Subscription("all", everything.url, SECRET, None, 5000, FAST),
            Subscription("deletes", deletes.url, "other-secret", frozenset({"deleted"}), 5000, FAST),
        )
        wait_for(lambda: len(everything.ids()) == 103 and len(deletes.ids()) == 3, 60, "every event delivered")
        assert all(a["signature_ok"] for a in everything.accepted + deletes.accepted)
        assert all(a["event_id_header"] == a["event"]["event_id"] for a in everything.accepted)
        assert all(a["content_type"] == "application/json" for a in everything.accepted)
        # The body is the event as the writer wrote it.
        assert all(a["event"] == events.events[a["event"]["event_id"]] for a in everything.accepted)
        assert len(everything.accepted) == 103  # nothing failed: nothing twice
        assert_in_order(everything, events)
        assert deletes.ids() == {e["event_id"] for e in deleted}
        # The sender counts a delivery once it has read the answer, which can be after the
        # receiver recorded it: wait for the counts, then for no lag (everything decided), then
        # assert nothing was counted twice.
        wait_for(
            lambda: counter(webhooks, "skipped", "deletes") >= 100
            and counter(webhooks, "delivered", "all") >= 103
            and counter(webhooks, "delivered", "deletes") >= 3,
            10,
            "deliveries and skips counted",
        )
        wait_for(lambda: webhooks.metrics.registry.get_sample_value("contacts_webhooks_lag_events", {"subscription": "all"}) == 0, 15, "no lag")
        assert counter(webhooks, "delivered", "all") == 103 and counter(webhooks, "delivered", "deletes") == 3
        assert counter(webhooks, "skipped", "deletes") == 100
    finally:
        everything.stop()
        deletes.stop()


def test_a_receiver_failing_at_random_gets_every_event_at_least_once_in_order(setup, run_webhooks):
    config, events = setup
    rng, lock = random.Random(11), threading.Lock()

    def flaky(event, n):
        with lock:
            roll = rng.random()
        if roll < 0.15:
            return "500"
        if roll < 0.22:
            return "close"
        if roll < 0.25:
            return "timeout"
        return "ok"

    receiver = Receiver(SECRET, flaky, hang_s=1.0).start()
    try:
        people = contacts(40)
        events.produce(people, per_contact=10)
        webhooks = run_webhooks(config, Subscription("flaky", receiver.url, SECRET, None, 400, FAST))
        wait_for(lambda: len(receiver.ids()) == 400, 120, "every event accepted once")
        assert_in_order(receiver, events)
        assert all(a["signature_ok"] for a in receiver.accepted)
        assert counter(webhooks, "retried", "flaky") > 0
        assert counter(webhooks, "dead_lettered", "flaky") == 0
        # Per contact no event was even tried before the previous one was accepted.
        assert receiver.requests >= 400 + counter(webhooks, "retried", "flaky") * 0.5
    finally:
        receiver.stop()


def test_a_receiver_down_for_a_while_gets_everything_when_it_is_back(setup, run_webhooks):
    config, events = setup
    port = free_port()
    receiver = Receiver(SECRET, port=port)  # not listening yet
    people = contacts(10)
    events.produce(people, per_contact=3)
    webhooks = run_webhooks(config, Subscription("late", f"http://127.0.0.1:{port}/hook", SECRET, None, 1000,
                                                 RetryPolicy(base_ms=100, max_delay_ms=1000, max_duration_ms=600_000)))
    # Every contact's first event has been refused a few times.
    wait_for(lambda: counter(webhooks, "retried", "late") >= 40, 60, "retries against the closed port")
    time.sleep(2)  # down for a while (a period of time, not a wait for a condition)
    receiver.start()
    try:
        events.produce(people, per_contact=1)  # and a new event meanwhile
        wait_for(lambda: len(receiver.ids()) == 40, 60, "everything delivered after the receiver came back")
        assert_in_order(receiver, events)
        assert counter(webhooks, "dead_lettered", "late") == 0
    finally:
        receiver.stop()


def test_after_the_last_try_the_event_is_a_dead_letter_and_the_next_ones_flow(kafka, setup, run_webhooks):
    config, events = setup
    doomed_contact, other = contacts(2)
    events.produce([doomed_contact, other], per_contact=1)
    doomed = events.produce([doomed_contact], per_contact=1)[0]
    events.raw(other, b"\x00not an event")  # undecodable: dead-lettered at once
    events.produce([doomed_contact, other], per_contact=2)
    receiver = Receiver(SECRET, lambda event, n: "500" if event["event_id"] == doomed["event_id"] else "ok").start()
    try:
        webhooks = run_webhooks(config, Subscription("dl", receiver.url, SECRET, None, 1000,
                                                     RetryPolicy(base_ms=10, max_delay_ms=50, max_attempts=3, max_duration_ms=0)))
        wait_for(lambda: len(receiver.ids()) == 6, 60, "the other events delivered")
        assert receiver.tries[doomed["event_id"]] == 3
        wanted = {e for e in events.by_contact[doomed_contact] if e != doomed["event_id"]}
        assert [e for e in receiver.per_contact()[doomed_contact]] == [e for e in events.by_contact[doomed_contact] if e in wanted]
        assert receiver.per_contact()[other] == events.by_contact[other]

        def letters():
            return [(k, v, h) for k, v, h in read_topic(kafka, dead_letter_topic(config)) if h.get("dead_letter.subscription") == b"dl"]

        found = wait_for(lambda: len(letters()) == 2 and letters(), 30, "two dead letters")
        by_class = {h["dead_letter.error_class"]: (k, v, h) for k, v, h in found}
        key, value, headers = by_class[b"WebhookFailed"]
        assert key == doomed_contact.encode() and events.codec.decode(value) == doomed
        assert headers["dead_letter.attempts"] == b"3"
        assert headers["dead_letter.error_message"].startswith(b"HTTP 500: receiver broke")
        assert headers["dead_letter.stage"] == b"webhooks" and headers["dead_letter.topic"] == config.events_topic.encode()
        assert headers["dead_letter.url"] == receiver.url.encode()
        (undecodable,) = [h for c, (_k, _v, h) in by_class.items() if c != b"WebhookFailed"]
        assert undecodable["dead_letter.error_message"].startswith(b"undecodable event")
        # counted in the produce's acknowledgement, which may come after a reader sees the record
        wait_for(lambda: counter(webhooks, "dead_lettered", "dl") >= 2, 10, "the dead letters counted")
        wait_for(lambda: webhooks.metrics.registry.get_sample_value("contacts_webhooks_lag_events", {"subscription": "dl"}) == 0, 15, "no lag")
        assert counter(webhooks, "dead_lettered", "dl") == 2
    finally:
        receiver.stop()


def test_a_second_replica_takes_partitions_over_without_losing_or_reordering(setup, run_webhooks):
    config, events = setup
    # A slow receiver (about 100 events/s from one replica): the second joins well before the end.
    receiver = Receiver(SECRET, lambda event, n: (time.sleep(0.02), "ok")[1]).start()
    try:
        events.produce(contacts(40), per_contact=30)  # 1200 events over 4 partitions
        sub = Subscription("shared", receiver.url, SECRET, None, 5000, FAST)
        first = run_webhooks(config, sub, concurrency=2)
        wait_for(lambda: receiver.count() >= 100, 60, "a part delivered by the first replica")
        second = run_webhooks(config, sub, concurrency=2)
        wait_for(lambda: receiver.count() == 1200, 120, "everything delivered by the two")
        assert_in_order(receiver, events)
        assert counter(second, "delivered", "shared") > 0, "the second replica got no partition"
        assert counter(first, "delivered", "shared") + counter(second, "delivered", "shared") >= 1200
    finally:
        receiver.stop()


# --- the process -----------------------------------------------------------------------------


class Process:
    """`python -m contacts_streams.webhooks` as a deployment runs it."""

    def __init__(self, config, receiver: Receiver, tmp_path, **env):
        self.port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BROKERS": config.kafka_brokers,
            "CONTACT_EVENTS_TOPIC": config.events_topic,
            "APPLICATION_ID": config.application_id,
            "WEBHOOK_NAME": "proc",
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOKS_METRICS_PORT": str(self.port),
            "WEBHOOKS_RETRY_BASE_MS": "20",
            "WEBHOOKS_RETRY_MAX_DELAY_MS": "300",
            "WEBHOOKS_COMMIT_INTERVAL_MS": "200",
            **env,
        }
        self.log = tmp_path / f"webhooks-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.proc = subprocess.Popen([sys.executable, "-m", "contacts_streams.webhooks"], env=self.env,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        status, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(f'{name}{{subscription="proc"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def processes():
    made: list[Process] = []
    yield made
    for p in made:
        p.kill()


def test_kill_9_then_restart_loses_nothing(setup, tmp_path, processes):
    config, events = setup
    receiver = Receiver(SECRET, lambda event, n: (time.sleep(0.002), "ok")[1]).start()
    try:
        people = contacts(50)
        events.produce(people, per_contact=40)  # 2000 events
        first = Process(config, receiver, tmp_path, WEBHOOKS_CONCURRENCY="8").start()
        processes.append(first)
        wait_for(lambda: len(receiver.ids()) >= 500, 90, "a part delivered")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        got_before = len(receiver.ids())
        assert got_before < 2000, "everything went before the kill: the test proves nothing"
        second = Process(config, receiver, tmp_path).start()
        processes.append(second)
        wait_for(lambda: len(receiver.ids()) == 2000, 120, "every event after the restart")
        assert_in_order(receiver, events)
        status, body = second.get("/actuator/health")
        assert status == 200 and json.loads(body)["status"] == "UP"
        wait_for(lambda: second.metric("contacts_webhooks_lag_events") == 0, 20, "lag 0 in /metrics")
        assert second.metric("contacts_webhooks_delivered_total") >= 2000 - got_before
    finally:
        receiver.stop()


def test_sigterm_stops_promptly_and_a_restart_resumes(setup, tmp_path, processes):
    config, events = setup
    receiver = Receiver(SECRET, lambda event, n: (time.sleep(0.005), "ok")[1]).start()
    try:
        people = contacts(20)
        events.produce(people, per_contact=50)  # 1000 events
        first = Process(config, receiver, tmp_path, WEBHOOKS_CONCURRENCY="4").start()
        processes.append(first)
        wait_for(lambda: len(receiver.ids()) >= 200, 90, "a part delivered")
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0
        stopped_at = len(receiver.accepted)
        second = Process(config, receiver, tmp_path).start()
        processes.append(second)
        wait_for(lambda: len(receiver.ids()) == 1000, 120, "the rest after the restart")
        assert_in_order(receiver, events)
        # What the first process delivered was committed: the second resends little of it (only
        # other contacts' events done past an unfinished one of the same partition).
        duplicates = len(receiver.accepted) - 1000
        assert duplicates < stopped_at / 2, f"{duplicates} re-sent of {stopped_at} delivered before SIGTERM"
        assert b"stopped" in first.log.read_bytes()
    finally:
        receiver.stop()
