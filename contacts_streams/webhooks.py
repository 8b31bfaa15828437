"""Webhook delivery: `python -m contacts_streams.webhooks` POSTs every change event to the
configured URLs, signed, retried with backoff, in order per contact, at least once.

One consumer group per subscription (`<APPLICATION_ID>-webhooks-<name>`) reads the contact-events
topic `read_committed`. Events of one contact share a partition and a key; they are delivered one
after the other (a chain per contact), while different contacts are delivered in parallel: up to
`WEBHOOKS_CONCURRENCY` requests at once, all driven by one delivery thread through libcurl's multi
interface. An event is done when the receiver answered 2xx, when its operation is not one the
subscription wants, or once its dead letter is acknowledged by the broker; the offset committed
per partition is the first event that is not done yet, so a crash at any moment re-delivers (at
least once, receivers dedupe on the event id) and never skips.

`--help` lists the settings; the README's "Webhooks" section has the receiver side.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import queue
import random
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pycurl
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contacts_streams import kafka_security, logs, model
from contacts_streams.config import Config, ConfigError, bounded_int
from contacts_streams.events import EventCodec, events_topic
from contacts_streams.serialization import DecodeError, RegistryError
from contacts_streams.topics import dead_letter_topic

log = logging.getLogger("contacts_streams.webhooks")

OPERATIONS = frozenset(
    {"created", "imported", "auto_created", "updated", "merged", "unmerged", "restored", "deleted", "merged_away", "erased"}
)
SIGNATURE_HEADER = "X-Contacts-Signature"
EVENT_ID_HEADER = "X-Contacts-Event-Id"
USER_AGENT = "contacts-streams-webhooks/1"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Headers of a webhook dead letter, beside the dead-letter topic's own (exactly_once.py).
DL_SUBSCRIPTION, DL_ATTEMPTS, DL_URL = "dead_letter.subscription", "dead_letter.attempts", "dead_letter.url"
MAX_ERROR = 1000


# --- signature -------------------------------------------------------------------------------


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Contacts-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
    The timestamp is signed too, so a receiver can refuse old deliveries replayed at it."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does (the README shows the same in a few lines): the header's v1 matches
    the body and the header's time, and that time is within `tolerance_s` of now."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def signer(secret: str) -> Callable[[bytes, int], str]:
    """`signature` with the key's HMAC set-up done once (copied per event, not redone)."""
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def sign(body: bytes, timestamp: int) -> str:
        mac = keyed.copy()
        mac.update(b"%d." % timestamp)
        mac.update(body)
        return f"t={timestamp},v1={mac.hexdigest()}"

    return sign


def body_of(event: Mapping[str, Any]) -> bytes:
    """The POST body: the event as compact JSON, UTF-8 (signed byte for byte as sent)."""
    return model.compact_json(event).encode()


# --- retry policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: before try n+1 wait uniform(0, min(max_delay,
    base * 2**(n-1))). Give up (dead letter) after `max_attempts` tries or once `max_duration_ms`
    has passed since the first try, whichever comes first; 0 turns a limit off. The default
    keeps trying for an hour (DESIGN: at least an hour before dead-lettering)."""

    base_ms: int = 1000
    max_delay_ms: int = 300_000
    max_attempts: int = 0
    max_duration_ms: int = 3_600_000

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed try (1, 2, ...)."""
        exponent = min(max(failures - 1, 0), 62)
        cap = min(self.max_delay_ms, self.base_ms * (2**exponent))
        return (rng or random).uniform(0, cap) / 1000.0

    def gives_up(self, attempts: int, elapsed_s: float) -> bool:
        if self.max_attempts and attempts >= self.max_attempts:
            return True
        # A millisecond's slack: the last wait ends exactly at the mark, give or take rounding.
        return bool(self.max_duration_ms) and elapsed_s >= self.max_duration_ms / 1000 - 0.001

    def next_delay(self, attempts: int, elapsed_s: float, rng: random.Random | None = None) -> float | None:
        """After `attempts` failed tries, `elapsed_s` after the first: the wait before the next
        try, or None to give up. The last wait ends at the duration limit, so the final try is
        made then rather than given up early."""
        if self.gives_up(attempts, elapsed_s):
            return None
        wait = self.delay(attempts, rng)
        if self.max_duration_ms:
            wait = min(wait, max(0.0, self.max_duration_ms / 1000 - elapsed_s))
        return wait


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    secret: str = field(repr=False)
    operations: frozenset[str] | None = None  # None: every operation
    timeout_ms: int = 10_000
    retry: RetryPolicy = RetryPolicy()
    start_from: str = "earliest"

    def wants(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


@dataclass(frozen=True)
class WebhooksConfig:
    subscriptions: tuple[Subscription, ...]
    metrics_port: int = 8081
    concurrency: int = 32
    max_in_flight: int = 10_000
    commit_interval_ms: int = 1000
    shutdown_grace_ms: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhooksConfig:
        env = os.environ if environ is None else environ

        def integer(name: str, default: int, low: int, high: int) -> int:
            return bounded_int(name, env.get(name, "").strip() or str(default), low, high)

        retry = RetryPolicy(
            base_ms=integer("WEBHOOKS_RETRY_BASE_MS", RetryPolicy.base_ms, 1, 3_600_000),
            max_delay_ms=integer("WEBHOOKS_RETRY_MAX_DELAY_MS", RetryPolicy.max_delay_ms, 1, 86_400_000),
            max_attempts=integer("WEBHOOKS_RETRY_MAX_ATTEMPTS", RetryPolicy.max_attempts, 0, 1_000_000),
            max_duration_ms=integer("WEBHOOKS_RETRY_MAX_DURATION_MS", RetryPolicy.max_duration_ms, 0, 30 * 86_400_000),
        )
        path = env.get("WEBHOOKS_CONFIG", "").strip()
        if path:
            if env.get("WEBHOOK_URL", "").strip():
                raise ConfigError("set WEBHOOKS_CONFIG or WEBHOOK_URL, not both")
            subscriptions = _subscriptions_from_file(path, env, retry)
        elif env.get("WEBHOOK_URL", "").strip():
            item = {
                "name": env.get("WEBHOOK_NAME", "").strip() or "default",
                "url": env["WEBHOOK_URL"].strip(),
                "secret": env.get("WEBHOOK_SECRET", ""),
                "operations": env.get("WEBHOOK_OPERATIONS", "").strip() or "all",
            }
            if env.get("WEBHOOK_TIMEOUT_MS", "").strip():
                item["timeout_ms"] = env["WEBHOOK_TIMEOUT_MS"].strip()
            if env.get("WEBHOOK_START_FROM", "").strip():
                item["start_from"] = env["WEBHOOK_START_FROM"].strip()
            subscriptions = (_subscription(item, "WEBHOOK_*", env, retry),)
        else:
            raise ConfigError("no subscription: set WEBHOOKS_CONFIG (a YAML or JSON file) or WEBHOOK_URL and WEBHOOK_SECRET")
        return cls(
            subscriptions=subscriptions,
            metrics_port=integer("WEBHOOKS_METRICS_PORT", cls.metrics_port, 0, 65535),
            concurrency=integer("WEBHOOKS_CONCURRENCY", cls.concurrency, 1, 1024),
            max_in_flight=integer("WEBHOOKS_MAX_IN_FLIGHT", cls.max_in_flight, 1, 1_000_000),
            commit_interval_ms=integer("WEBHOOKS_COMMIT_INTERVAL_MS", cls.commit_interval_ms, 10, 600_000),
            shutdown_grace_ms=integer("WEBHOOKS_SHUTDOWN_GRACE_MS", cls.shutdown_grace_ms, 0, 600_000),
        )


SETTINGS = [
    (
        "WEBHOOKS_CONFIG",
        "",
        "a YAML or JSON file: a list of {name, url, secret or secret_env, operations, timeout_ms, retry, start_from}",
    ),
    ("WEBHOOK_URL", "", "without WEBHOOKS_CONFIG: the one subscription's URL"),
    ("WEBHOOK_SECRET", "", "its signing secret"),
    ("WEBHOOK_OPERATIONS", "all", "its operations, comma-separated, or all"),
    ("WEBHOOK_NAME", "default", "its name (consumer group <APPLICATION_ID>-webhooks-<name>)"),
    ("WEBHOOK_TIMEOUT_MS", "10000", "its request timeout"),
    ("WEBHOOK_START_FROM", "earliest", "where a new subscription starts: earliest (every retained event) or latest"),
    ("WEBHOOKS_RETRY_BASE_MS", "1000", "first retry waits up to this long (full jitter), doubling per try"),
    ("WEBHOOKS_RETRY_MAX_DELAY_MS", "300000", "longest wait between two tries"),
    ("WEBHOOKS_RETRY_MAX_ATTEMPTS", "0", "tries before the dead letter (0: no limit)"),
    ("WEBHOOKS_RETRY_MAX_DURATION_MS", "3600000", "time from the first try to the dead letter (0: no limit)"),
    ("WEBHOOKS_CONCURRENCY", "32", "parallel requests per subscription (different contacts)"),
    ("WEBHOOKS_MAX_IN_FLIGHT", "10000", "events read ahead per subscription before the consumer pauses"),
    ("WEBHOOKS_COMMIT_INTERVAL_MS", "1000", "how often delivered offsets are committed"),
    ("WEBHOOKS_SHUTDOWN_GRACE_MS", "10000", "on SIGTERM, how long requests in flight may finish"),
    ("WEBHOOKS_METRICS_PORT", "8081", "port of /metrics, /actuator/prometheus and /actuator/health"),
]


def _subscriptions_from_file(path: str, env: Mapping[str, str], retry: RetryPolicy) -> tuple[Subscription, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"WEBHOOKS_CONFIG: cannot read {path}: {err.strerror}") from None
    try:
        import yaml  # JSON is YAML too

        data = yaml.safe_load(text)
    except Exception as err:
        raise ConfigError(f"WEBHOOKS_CONFIG: {path} is neither YAML nor JSON: {err}") from None
    if isinstance(data, dict) and "subscriptions" in data:
        data = data["subscriptions"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"WEBHOOKS_CONFIG: {path} must hold a non-empty list of subscriptions")
    subscriptions = tuple(_subscription(item, f"WEBHOOKS_CONFIG[{i}]", env, retry) for i, item in enumerate(data))
    names = [s.name for s in subscriptions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"WEBHOOKS_CONFIG: subscription names must be unique, {', '.join(duplicates)} repeats")
    return subscriptions


def _subscription(item: Any, where: str, env: Mapping[str, str], retry: RetryPolicy) -> Subscription:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a mapping with name, url and secret")
    known = {"name", "url", "secret", "secret_env", "operations", "timeout_ms", "retry", "start_from"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    name = str(item.get("name") or "")
    if not NAME.match(name):
        raise ConfigError(f"{where}.name must be letters, digits, '.', '_' or '-' (it names a consumer group), got {name!r}")
    where = f"{where} ({name})"
    url = str(item.get("url") or "")
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{where}.url must be an http(s) URL, got {url!r}")
    if "secret_env" in item:
        var = str(item["secret_env"])
        secret = env.get(var, "")
        if not secret:
            raise ConfigError(f"{where}.secret_env names {var}, which is not set or empty")
    else:
        secret = str(item.get("secret") or "")
    if not secret:
        raise ConfigError(f"{where}: a secret is required (secret, or secret_env naming the variable that holds it)")
    operations = item.get("operations", "all")
    if isinstance(operations, str):
        operations = [o.strip() for o in operations.split(",") if o.strip()]
    if not isinstance(operations, list) or not operations or not all(isinstance(o, str) for o in operations):
        raise ConfigError(f"{where}.operations must be `all` or a list of operations")
    if operations == ["all"]:
        wanted = None
    else:
        bad = sorted(set(operations) - OPERATIONS)
        if bad:
            raise ConfigError(f"{where}.operations: unknown {', '.join(bad)} (known: all, {', '.join(sorted(OPERATIONS))})")
        wanted = frozenset(operations)
    timeout_ms = _int(item.get("timeout_ms", 10_000), f"{where}.timeout_ms", 1, 600_000)
    overrides = item.get("retry") or {}
    if not isinstance(overrides, dict) or set(overrides) - {"base_ms", "max_delay_ms", "max_attempts", "max_duration_ms"}:
        raise ConfigError(f"{where}.retry must be a mapping of base_ms, max_delay_ms, max_attempts, max_duration_ms")
    policy = RetryPolicy(
        base_ms=_int(overrides.get("base_ms", retry.base_ms), f"{where}.retry.base_ms", 1, 3_600_000),
        max_delay_ms=_int(overrides.get("max_delay_ms", retry.max_delay_ms), f"{where}.retry.max_delay_ms", 1, 86_400_000),
        max_attempts=_int(overrides.get("max_attempts", retry.max_attempts), f"{where}.retry.max_attempts", 0, 1_000_000),
        max_duration_ms=_int(
            overrides.get("max_duration_ms", retry.max_duration_ms), f"{where}.retry.max_duration_ms", 0, 30 * 86_400_000
        ),
    )
    start_from = str(item.get("start_from", "earliest"))
    if start_from not in ("earliest", "latest"):
        raise ConfigError(f"{where}.start_from must be earliest or latest, got {start_from!r}")
    return Subscription(name, url, secret, wanted, timeout_ms, policy, start_from)


def _int(raw: Any, where: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, got {raw!r}") from None
    if isinstance(raw, bool) or not low <= value <= high:
        raise ConfigError(f"{where} must be between {low} and {high}, got {raw!r}")
    return value


# --- metrics ---------------------------------------------------------------------------------


class WebhookMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.delivered = Counter(
            "contacts_webhooks_delivered", "Events a receiver answered with a 2xx", ["subscription"], registry=r
        )
        self.retried = Counter("contacts_webhooks_retried", "Failed tries that will be tried again", ["subscription"], registry=r)
        self.dead_lettered = Counter(
            "contacts_webhooks_dead_lettered",
            "Events given up on and sent to the dead-letter topic",
            ["subscription"],
            registry=r,
        )
        self.skipped = Counter(
            "contacts_webhooks_skipped", "Events of operations the subscription does not want", ["subscription"], registry=r
        )
        self.lag = Gauge(
            "contacts_webhooks_lag_events", "Events on the topic not yet delivered or dead-lettered", ["subscription"], registry=r
        )
        self.in_flight = Gauge("contacts_webhooks_in_flight_events", "Events read and not yet done", ["subscription"], registry=r)
        self.latency = Histogram(
            "contacts_webhooks_request_seconds",
            "Time of one POST to the receiver, any outcome",
            ["subscription"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )


# --- delivery --------------------------------------------------------------------------------


class Scheduler:
    """Runs callbacks after a delay on one thread (the retries' timers): a waiting retry holds no
    worker thread, and a stop drops every wait at once."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="webhooks-retry-timer", daemon=True)
        self._thread.start()

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                _due, _seq, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a timer never dies of one callback
                log.exception("retry callback failed")


class Tracker:
    """One owned partition: the offsets read and not yet done, in order. What may be committed
    is the first one not done (everything before it is delivered or dead-lettered)."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.committed = -1

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())

    def commit_point(self, position: int) -> int:
        """The offset to commit: the oldest undone offset, or the consumer's position when
        everything read is done (that also steps over transaction markers)."""
        return self.pending[0] if self.pending else position


@dataclass(eq=False)
class Item:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list
    tracker: Tracker
    chain: deque
    event: dict | None = None
    attempts: int = 0
    first_try: float = 0.0
    body: bytes = b""
    last_error: str = ""
    error_class: str = ""


class Attempt(Exception):
    """One failed try: `message` says what (status and the start of the body, or the error)."""


class SubscriptionRunner:
    """Delivers one subscription: its consumer thread reads, dispatches chains per contact to
    the pool, commits the done prefix and pauses reading when too much is in flight."""

    def __init__(
        self,
        config: Config,
        settings: WebhooksConfig,
        sub: Subscription,
        codec: EventCodec,
        producer: Producer,
        metrics: WebhookMetrics,
        scheduler: Scheduler,
    ):
        self.config, self.settings, self.sub = config, settings, sub
        self.codec, self.producer, self.metrics, self.scheduler = codec, producer, metrics, scheduler
        self.topic = events_topic(config)
        self.dead_letters = dead_letter_topic(config)
        self.group = f"{config.application_id}-webhooks-{sub.name}"
        # Events ready to go (the head of their contact's chain). One delivery thread drives every
        # request of the subscription through libcurl's multi interface: with a thread per request
        # half the process's CPU went to the kernel (GIL hand-offs, thread wake-ups) and most of
        # the rest to http.client's request building and header parsing.
        self.ready: queue.SimpleQueue[list[Item]] = queue.SimpleQueue()  # from other threads
        self.queued: deque[Item] = deque()  # the delivery thread's own, waiting for a free slot
        self.http = Requests(sub.url, sub.timeout_ms, settings.concurrency, self._answered)
        self.sender = threading.Thread(target=self._deliver, name=f"webhook-{sub.name}", daemon=True)
        self.closed = False
        self.sign = signer(sub.secret)
        self.lock = threading.Lock()
        self.owned: dict[int, Tracker] = {}
        self.chains: dict[tuple[int, bytes | None], deque] = {}
        self.running: set[Item] = set()  # items whose POST is under way
        self.revoking: set[int] = set()  # partitions being handed over: start nothing new there
        self.buffered = 0
        self.paused = False
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        self.consumer: Consumer | None = None
        self.thread = threading.Thread(target=self._run, name=f"webhooks-{sub.name}", daemon=True)
        self.labels = {"subscription": sub.name}
        self._rng = random.Random()
        # prometheus_client's labels() costs more than the increment: look the children up once.
        m, name = metrics, sub.name
        self.m_delivered, self.m_retried, self.m_skipped = (
            m.delivered.labels(name),
            m.retried.labels(name),
            m.skipped.labels(name),
        )
        self.m_dead_lettered, self.m_latency = m.dead_lettered.labels(name), m.latency.labels(name)
        self.m_in_flight, self.m_lag = m.in_flight.labels(name), m.lag.labels(name)

    # --- consumer thread -------------------------------------------------------------------

    def start(self) -> SubscriptionRunner:
        self.sender.start()
        self.thread.start()
        return self

    def _consumer(self) -> Consumer:
        settings = {
            # A restarted process gets its partitions back within seconds, not the default 45 s.
            "session.timeout.ms": 10_000,
            **self.config.kafka(
                **{
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": self.sub.start_from,
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            ),
        }
        return Consumer(settings)

    def _run(self) -> None:
        try:
            self.consumer = consumer = self._consumer()
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            last_commit = last_lag = time.monotonic()
            interval = self.settings.commit_interval_ms / 1000
            while not self.stopping.is_set():
                fresh: list[Item] = []
                for msg in consumer.consume(1000, 0.1):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("webhook %s: %s", self.sub.name, err)
                        continue
                    item = self._dispatch(msg)
                    if item is not None:
                        fresh.append(item)
                if fresh:  # one hand-over (and one wake-up of the delivery thread) per batch
                    self._submit_all(fresh)
                self.producer.poll(0)
                self._backpressure(consumer)
                now = time.monotonic()
                if now - last_commit >= interval:
                    self._commit(consumer)
                    last_commit = now
                if now - last_lag >= 1.0:
                    self._report_lag(consumer)
                    last_lag = now
        except BaseException as err:  # noqa: BLE001 - liveness reports it
            self.failed = err
            log.exception("webhook %s stopped", self.sub.name)

    def _dispatch(self, msg) -> Item | None:
        """Tracks the record; the item to start when it heads its contact's chain."""
        partition = msg.partition()
        with self.lock:
            tracker = self.owned.get(partition)
            if tracker is None:  # a record of a partition revoked meanwhile: its new owner reads it
                return None
            tracker.add(msg.offset())
            self.buffered += 1
            key = (partition, msg.key())
            chain = self.chains.get(key)
            fresh = chain is None
            if chain is None:
                chain = self.chains[key] = deque()
            item = Item(partition, msg.offset(), msg.key(), msg.value(), msg.headers() or [], tracker, chain)
            if not fresh:
                chain.append(item)
                return None
        return item

    def _backpressure(self, consumer: Consumer) -> None:
        with self.lock:
            buffered = self.buffered
        self.m_in_flight.set(buffered)
        if not self.paused and buffered >= self.settings.max_in_flight:
            consumer.pause(consumer.assignment())
            self.paused = True
        elif self.paused and buffered <= self.settings.max_in_flight // 2:
            consumer.resume(consumer.assignment())
            self.paused = False

    def _offsets(self, consumer: Consumer, partitions: list[int] | None = None) -> list[TopicPartition]:
        with self.lock:
            trackers = {p: t for p, t in self.owned.items() if partitions is None or p in partitions}
        if not trackers:
            return []
        positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(self.topic, p) for p in trackers])}
        wanted = []
        with self.lock:
            for partition, tracker in trackers.items():
                point = tracker.commit_point(positions.get(partition, -1))
                if point >= 0 and point > tracker.committed:
                    wanted.append(TopicPartition(self.topic, partition, point))
        return wanted

    def _commit(self, consumer: Consumer, partitions: list[int] | None = None) -> None:
        offsets = self._offsets(consumer, partitions)
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:  # the next round commits again (at least once either way)
            log.warning("webhook %s: commit failed: %s", self.sub.name, err)
            return
        with self.lock:
            for tp in offsets:
                tracker = self.owned.get(tp.partition)
                if tracker is not None:
                    tracker.committed = max(tracker.committed, tp.offset)

    def _report_lag(self, consumer: Consumer) -> None:
        with self.lock:
            trackers = dict(self.owned)
        if not trackers:
            self.m_lag.set(0)
            return
        positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(self.topic, p) for p in trackers])}
        lag = 0
        for partition, tracker in trackers.items():
            _low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
            with self.lock:
                point = tracker.commit_point(positions.get(partition, -1))
            if high >= 0 and point >= 0:
                lag += max(0, high - point)
        self.m_lag.set(lag)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self.lock:
            for tp in partitions:
                self.owned[tp.partition] = Tracker()
        if self.paused:  # what was paused before the rebalance reads again; the loop decides anew
            consumer.resume(consumer.assignment())
            self.paused = False
        log.info("webhook %s: assigned %s", self.sub.name, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions]
        with self.lock:
            self.revoking.update(revoked)
        # Requests under way for these partitions may finish: their offsets are committed before
        # the new owner starts (it would deliver them again, out of order with what follows).
        self._wait_running(revoked, self.settings.shutdown_grace_ms / 1000)
        self._commit(consumer, revoked)
        self._drop(revoked)
        log.info("webhook %s: revoked %s", self.sub.name, sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop([tp.partition for tp in partitions])  # someone else owns them: commit nothing

    def _drop(self, partitions: list[int]) -> None:
        with self.lock:
            for partition in partitions:
                tracker = self.owned.pop(partition, None)
                if tracker is not None:
                    self.buffered -= len(tracker.pending)
            for key in [k for k in self.chains if k[0] in partitions]:
                del self.chains[key]
            self.revoking.difference_update(partitions)

    def _wait_running(self, partitions: list[int] | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                busy = [i for i in self.running if partitions is None or i.partition in partitions]
            if not busy:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop reading, let requests under way finish (up to the grace), abandon waiting
        retries, commit the done prefix and leave the group."""
        self.stopping.set()
        self.thread.join(30)
        self._wait_running(None, self.settings.shutdown_grace_ms / 1000)
        consumer = self.consumer
        if consumer is not None:
            try:
                self._commit(consumer)
                with self.lock:
                    self.owned.clear()  # close() revokes: nothing more to wait for or commit
                    self.chains.clear()
                consumer.close()
            except (KafkaException, RuntimeError) as err:
                log.warning("webhook %s: close: %s", self.sub.name, err)
        self.closed = True  # what is still under way after the grace is abandoned
        self.http.wake()
        self.sender.join(30)

    # --- worker threads ----------------------------------------------------------------------

    def _owns(self, item: Item) -> bool:
        return self.owned.get(item.partition) is item.tracker and self.chains.get((item.partition, item.key)) is item.chain

    def _submit(self, item: Item) -> None:
        if self.stopping.is_set():
            return
        if threading.get_ident() == self.sender.ident:
            self.queued.append(item)
        else:
            self._submit_all([item])

    def _submit_all(self, items: list[Item]) -> None:
        """From a thread other than the delivery thread: queue and wake it."""
        if self.stopping.is_set():
            return
        self.ready.put(items)
        self.http.wake()

    # --- the delivery thread -----------------------------------------------------------------

    def _deliver(self) -> None:
        http, queued, ready = self.http, self.queued, self.ready
        try:
            while not self.closed:
                while True:
                    try:
                        queued.extend(ready.get_nowait())
                    except queue.Empty:
                        break
                while queued and not http.full():
                    self._process(queued.popleft())
                # Waits for an answer, a wake-up (new events, a retry due) or libcurl's timer.
                http.run(0 if queued and not http.full() else 0.5)
        except BaseException as err:  # noqa: BLE001 - liveness reports it
            self.failed = err
            log.exception("webhook %s: delivery stopped", self.sub.name)
        finally:
            http.close()

    def _process(self, item: Item) -> None:
        with self.lock:
            if not self._owns(item) or self.stopping.is_set() or item.partition in self.revoking:
                return
            self.running.add(item)
        try:
            if self._try(item):
                return  # under way: _answered finishes it
        except Exception as err:  # never lose an event to a bug here: try it again later
            log.exception("webhook %s: delivering %d@%d failed unexpectedly", self.sub.name, item.partition, item.offset)
            self._retry_later(item, f"{type(err).__name__}: {err}", type(err).__name__, count=False)
        with self.lock:
            self.running.discard(item)

    def _try(self, item: Item) -> bool:
        """Starts the POST of an item (True), or finishes it at once (False)."""
        if item.event is None:
            try:
                if item.value is None:
                    raise DecodeError("no value (a tombstone)")
                item.event = self.codec.decode(item.value)
            except RegistryError as err:  # the registry is away: not the event's fault
                self._retry_later(item, f"schema registry: {err}", "RegistryError", count=False)
                return False
            except (DecodeError, ValueError, TypeError) as err:
                item.last_error, item.error_class = f"undecodable event: {err}", type(err).__name__
                self._dead_letter(item)
                return False
            # Every try of the event sends the same bytes (only the signature's time changes).
            item.body = body_of(item.event)
        if not self.sub.wants(item.event["operation"]):
            self.m_skipped.inc()
            self._done(item)
            return False
        if item.attempts == 0:
            item.first_try = time.monotonic()
        item.attempts += 1
        headers = [
            "Content-Type: application/json",
            f"{SIGNATURE_HEADER}: {self.sign(item.body, int(time.time()))}",
            f"{EVENT_ID_HEADER}: {item.event['event_id']}",
        ]
        self.http.post(item.body, headers, item)
        return True

    def _answered(self, item: Item, status: int, text: bytes, error: str | None, seconds: float) -> None:
        """On the delivery thread, when a POST is over (any outcome)."""
        try:
            self.m_latency.observe(seconds)
            if error is None and 200 <= status < 300:
                self.m_delivered.inc()
                self._done(item)
                return
            if error is None:
                answer = text.decode("utf-8", "replace").strip()
                error = f"HTTP {status}" + (f": {answer}" if answer else "")
            retry_in = self.sub.retry.next_delay(item.attempts, time.monotonic() - item.first_try, self._rng)
            if retry_in is None:
                item.last_error, item.error_class = error, "WebhookFailed"
                self._dead_letter(item)
            else:
                log.info(
                    "webhook %s: event %s try %d failed (%s), again in %.1fs",
                    self.sub.name,
                    (item.event or {}).get("event_id"),
                    item.attempts,
                    error,
                    retry_in,
                )
                self.m_retried.inc()
                item.last_error = error
                self.scheduler.later(retry_in, lambda: self._submit(item))
        except Exception as err:  # never lose an event to a bug here: try it again later
            log.exception("webhook %s: finishing %d@%d failed unexpectedly", self.sub.name, item.partition, item.offset)
            self._retry_later(item, f"{type(err).__name__}: {err}", type(err).__name__, count=False)
        finally:
            with self.lock:
                self.running.discard(item)

    def _retry_later(self, item: Item, error: str, error_class: str, count: bool) -> None:
        item.last_error, item.error_class = error, error_class
        if count:
            self.m_retried.inc()
        self.scheduler.later(self.sub.retry.delay(max(item.attempts, 1), self._rng), lambda: self._submit(item))

    def _dead_letter(self, item: Item) -> None:
        event_id = (item.event or {}).get("event_id", "?")
        log.error(
            "webhook %s: event %s (%s[%d]@%d) goes to %s after %d tries: %s",
            self.sub.name,
            event_id,
            self.topic,
            item.partition,
            item.offset,
            self.dead_letters,
            item.attempts,
            item.last_error,
        )
        headers = list(item.headers) + [
            ("dead_letter.topic", self.topic.encode()),
            ("dead_letter.partition", str(item.partition).encode()),
            ("dead_letter.offset", str(item.offset).encode()),
            ("dead_letter.stage", b"webhooks"),
            ("dead_letter.error_class", item.error_class.encode()),
            ("dead_letter.error_message", item.last_error[:MAX_ERROR].encode("utf-8", "replace")),
            (DL_SUBSCRIPTION, self.sub.name.encode()),
            (DL_ATTEMPTS, str(item.attempts).encode()),
            (DL_URL, self.sub.url.encode()),
        ]

        def acknowledged(err, _msg) -> None:
            if err is None:
                self.m_dead_lettered.inc()
                self._done(item)
            else:  # the broker did not take it: the event stays undone and is dead-lettered again
                log.warning("webhook %s: dead letter of %d@%d not written: %s", self.sub.name, item.partition, item.offset, err)
                self.scheduler.later(1.0, lambda: self._dead_letter(item))

        try:
            self.producer.produce(self.dead_letters, key=item.key, value=item.value, headers=headers, on_delivery=acknowledged)
        except (KafkaException, BufferError) as err:
            log.warning("webhook %s: dead letter of %d@%d not queued: %s", self.sub.name, item.partition, item.offset, err)
            self.scheduler.later(1.0, lambda: self._dead_letter(item))

    def _done(self, item: Item) -> None:
        """The event is delivered, skipped or dead-lettered: its offset may be committed, and the
        next event of its contact may go."""
        following = None
        with self.lock:
            if not self._owns(item):
                return
            item.tracker.finish(item.offset)
            self.buffered -= 1
            key = (item.partition, item.key)
            if item.chain:
                following = item.chain.popleft()
            else:
                del self.chains[key]
        if following is not None:
            self._submit(following)


class _Answer:
    """The start of one answer's body (for the log and the dead letter); the rest is read and
    dropped, so the connection stays usable."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        if len(self.data) < Requests.MAX_BODY:
            self.data += chunk[: Requests.MAX_BODY - len(self.data)]


class Requests:
    """POSTs to one URL, up to `limit` at once, driven by one thread through libcurl's multi
    interface (pycurl): keep-alive connections are pooled and reused by libcurl, and a request
    costs the Python side a few option calls instead of http.client's request building and
    header parsing (about a third of the CPU per event) and a thread hand-off per answer.
    `timeout_ms` bounds the whole request. `on_answer(item, status, body start, error or None,
    seconds)` is called on the delivery thread. Only `wake` may be called from another thread."""

    MAX_BODY = 300  # of an error answer, for the log and the dead letter

    def __init__(self, url: str, timeout_ms: int, limit: int, on_answer: Callable[[Any, int, bytes, str | None, float], None]):
        self.url, self.timeout_ms, self.limit, self.on_answer = url, timeout_ms, limit, on_answer
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        # poll(), not epoll: libcurl hands a connection's socket back and forth on every request,
        # and poll's register is a dict update where epoll's is a system call.
        self.poller = select.poll()
        self.watched: set[int] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.poller.register(self._wake_r, select.POLLIN)
        self.timer: float | None = None  # when libcurl wants to be called for its timeouts
        self.idle: list[pycurl.Curl] = []
        self.answers: dict[pycurl.Curl, _Answer] = {}
        self.busy: dict[pycurl.Curl, tuple[Any, float]] = {}
        # What http.client trusted: the system's CA store as Python's ssl finds it (the wheel's
        # libcurl may have been built for another layout), or SSL_CERT_FILE / SSL_CERT_DIR.
        verify = ssl.get_default_verify_paths()
        self.cafile = verify.cafile if verify.cafile and os.path.exists(verify.cafile) else None
        self.capath = verify.capath if verify.capath and os.path.isdir(verify.capath) else None

    def _new(self) -> pycurl.Curl:
        c = pycurl.Curl()
        c.setopt(pycurl.URL, self.url)  # user:password@ in it is basic auth, as curl does
        c.setopt(pycurl.POST, 1)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.TIMEOUT_MS, self.timeout_ms)
        c.setopt(pycurl.USERAGENT, USER_AGENT)
        c.setopt(pycurl.PROXY, "")  # no *_proxy environment: the URL is called directly
        c.setopt(pycurl.FOLLOWLOCATION, 0)  # a redirect is an answer that is not a 2xx
        if self.cafile:
            c.setopt(pycurl.CAINFO, self.cafile)
        if self.capath:
            c.setopt(pycurl.CAPATH, self.capath)
        answer = self.answers[c] = _Answer()
        c.setopt(pycurl.WRITEFUNCTION, answer.write)
        return c

    def full(self) -> bool:
        return len(self.busy) >= self.limit

    def post(self, body: bytes, headers: list[str], item: Any) -> None:
        c = self.idle.pop() if self.idle else self._new()
        self.answers[c].data = b""
        c.setopt(pycurl.POSTFIELDS, body)
        # "Expect:" off: libcurl would wait for a 100 Continue before a large body.
        c.setopt(pycurl.HTTPHEADER, headers + ["Expect:"])
        self.busy[c] = (item, time.perf_counter())
        self.multi.add_handle(c)  # libcurl sets its timer to 0: the next run() starts it

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already awake enough (a full pipe), or closed
            self._wake_w.send(b"\0")

    _EVENTS = {pycurl.POLL_IN: select.POLLIN, pycurl.POLL_OUT: select.POLLOUT, pycurl.POLL_INOUT: select.POLLIN | select.POLLOUT}

    def _on_socket(self, what: int, fd: int, _multi: Any, _data: Any) -> None:
        if what == pycurl.POLL_REMOVE:
            if fd in self.watched:
                self.watched.discard(fd)
                self.poller.unregister(fd)
            return
        self.watched.add(fd)
        self.poller.register(fd, self._EVENTS.get(what, select.POLLIN | select.POLLOUT))  # or modifies

    def _on_timer(self, timeout_ms: int) -> None:
        self.timer = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    def run(self, timeout: float) -> None:
        """Wait up to `timeout` s for sockets, a wake-up or libcurl's timer; move the requests
        on and hand over the finished ones."""
        if self.timer is not None:
            timeout = max(0.0, min(timeout, self.timer - time.monotonic()))
        wake = self._wake_r.fileno()
        for fd, mask in self.poller.poll(timeout * 1000):
            if fd == wake:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            flags = (pycurl.CSELECT_IN if mask & (select.POLLIN | select.POLLHUP) else 0) | (
                pycurl.CSELECT_OUT if mask & select.POLLOUT else 0
            )
            if mask & (select.POLLERR | select.POLLNVAL):
                flags |= pycurl.CSELECT_ERR
            self.multi.socket_action(fd, flags)
        if self.timer is not None and self.timer <= time.monotonic():
            self.timer = None
            self.multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        while True:
            left, ok, failed = self.multi.info_read()
            for c in ok:
                self._finish(c, None)
            for c, code, message in failed:
                self._finish(c, _describe_curl_error(code, message))
            if not left:
                break

    def _finish(self, c: pycurl.Curl, error: str | None) -> None:
        self.multi.remove_handle(c)
        item, started = self.busy.pop(c)
        status = c.getinfo(pycurl.RESPONSE_CODE) if error is None else 0
        self.idle.append(c)
        self.on_answer(item, status, self.answers[c].data, error, time.perf_counter() - started)

    def close(self) -> None:
        """Abandons what is under way (stop() has waited for it as long as it may)."""
        for c in list(self.busy):
            self.multi.remove_handle(c)
        for c in list(self.answers):
            c.close()
        self.busy.clear()
        self.idle.clear()
        self.answers.clear()
        self.multi.close()
        self._wake_r.close()
        self._wake_w.close()


def _describe_curl_error(code: int, message: str) -> str:
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return f"timeout: {message or 'no answer in time'}"
    return f"curl error {code}: {message}"


# --- the process -----------------------------------------------------------------------------


class Webhooks:
    """Every subscription's runner, one dead-letter producer, the retry timer."""

    def __init__(self, config: Config, settings: WebhooksConfig, metrics: WebhookMetrics | None = None):
        self.config, self.settings = config, settings
        self.metrics = metrics or WebhookMetrics()
        self.codec = EventCodec(config.schema_registry_url)
        self.producer = Producer(config.producer(**{"linger.ms": 5}))
        self.scheduler = Scheduler()
        self.runners = [
            SubscriptionRunner(config, settings, sub, self.codec, self.producer, self.metrics, self.scheduler)
            for sub in settings.subscriptions
        ]
        self.ready = False

    def start(self, topic_timeout: float | None = None) -> Webhooks:
        _wait_for_topic(self.config, events_topic(self.config), topic_timeout)
        _ensure_dead_letter_topic(self.config)
        for runner in self.runners:
            runner.start()
        self.ready = True
        return self

    def health(self) -> tuple[bool, str]:
        failed = [
            f"{r.sub.name}: {r.failed}"
            for r in self.runners
            if r.failed is not None or (self.ready and not r.thread.is_alive() and not r.stopping.is_set())
        ]
        if failed:
            return False, "; ".join(failed)
        return True, ""

    def stop(self) -> None:
        self.scheduler.stop()
        threads = [threading.Thread(target=r.stop) for r in self.runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.producer.flush(10)


def _wait_for_topic(config: Config, topic: str, timeout: float | None) -> None:
    """The writer creates the events topic; a subscription to a topic that does not exist yet
    would only notice it at librdkafka's next metadata refresh (minutes)."""
    admin = AdminClient(config.kafka())
    deadline = None if timeout is None else time.monotonic() + timeout
    said = False
    while True:
        try:
            if topic in admin.list_topics(timeout=5).topics:
                return
        except KafkaException as err:
            log.warning("broker unreachable: %s", err)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic} does not exist")
        if not said:
            log.info("waiting for the events topic %s (the service creates it)", topic)
            said = True
        time.sleep(1)


def _ensure_dead_letter_topic(config: Config) -> None:
    admin = AdminClient(config.kafka())
    topic = NewTopic(
        dead_letter_topic(config),
        num_partitions=1,
        replication_factor=-1,
        # Dead letters hold events as received, personal data included.
        config={"cleanup.policy": "delete", "retention.ms": str(config.erase_within_ms)},
    )
    for future in admin.create_topics([topic], operation_timeout=30).values():
        try:
            future.result(30)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class HealthServer:
    """/metrics and /actuator/prometheus, /actuator/health (+ /liveness, /readiness)."""

    def __init__(self, webhooks: Webhooks, port: int):
        outer = webhooks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0].rstrip("/")
                if path in ("/metrics", "/actuator/prometheus"):
                    self._send(200, generate_latest(outer.metrics.registry), CONTENT_TYPE_LATEST)
                elif path in ("/actuator/health", "/actuator/health/liveness", "/actuator/health/readiness"):
                    alive, reason = outer.health()
                    up = alive and (outer.ready or path.endswith("liveness"))
                    if alive and not up:
                        reason = "waiting for the events topic"
                    payload = {"status": "UP" if up else "DOWN", **({"reason": reason} if reason else {})}
                    self._send(200 if up else 503, json.dumps(payload).encode(), "application/json")
                else:
                    self._send(404, b'{"message": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds: not worth a line
                pass

        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="webhooks-health", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def describe() -> str:
    width = max(len(name) for name, _d, _h in SETTINGS)
    lines = ["Webhook settings (environment variables), beside the service's Kafka settings (python -m api --help):"]
    for name, default, text in SETTINGS:
        lines.append(f"  {name.ljust(width)}  {text}" + (f" [default: {default}]" if default else ""))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip() + "\n\n" + describe())
        return 0
    try:
        config = Config.from_env()
        settings = WebhooksConfig.from_env()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    logs.setup(config.log_format, config.log_level)
    log.info("Kafka at %s: %s", config.kafka_brokers, kafka_security.describe(config.extra_kafka))
    for sub in settings.subscriptions:
        log.info(
            "webhook %s -> %s (%s), group %s-webhooks-%s",
            sub.name,
            sub.url,
            "all operations" if sub.operations is None else ", ".join(sorted(sub.operations)),
            config.application_id,
            sub.name,
        )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    webhooks = Webhooks(config, settings)
    health = HealthServer(webhooks, settings.metrics_port)
    log.info("metrics and health on :%d", health.port)

    def start() -> None:
        # A broker not there yet is waited for (readiness says so); anything else is tried
        # again every few seconds, with the reason in the log.
        while not stop.is_set():
            try:
                webhooks.start()
                return
            except Exception as err:  # noqa: BLE001
                log.warning("cannot start yet: %s", err)
                stop.wait(5)

    threading.Thread(target=start, name="webhooks-start", daemon=True).start()
    while not stop.wait(1.0):
        alive, reason = webhooks.health()
        if not alive:
            log.error("stopping: %s", reason)
            break
    log.info("stopping: finishing requests under way, committing what was delivered")
    webhooks.stop()
    health.close()
    log.info("stopped")
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
