"""The running service: store, materializer, publisher and auto-create, started and stopped together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from contacts_streams.config import Config
from contacts_streams.contacts import Contacts
from contacts_streams.events import EventCodec
from contacts_streams.find import Finder
from contacts_streams.history import History
from contacts_streams.kafka_security import BrokerRefused, StartupErrors
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import CommandClient, ReplyListener
from contacts_streams.serialization import ContactCodec, RegistryError, SchemaRefused, shared_registry_client
from contacts_streams.store import Store
from contacts_streams.topics import apply_erase_settings, conversations_topic, dismissed_topic, ensure_topics
from contacts_streams.writer import Writer

log = logging.getLogger(__name__)
C = TypeVar("C", ContactCodec, EventCodec)
# One start attempt against the broker; readiness names the reason after each failed one.
START_ATTEMPT_S = 10.0


class FatalError(RuntimeError):
    """A misconfiguration no retry will fix (credentials refused, an unknown CA, a schema the
    registry refuses): the process stops with this message instead of waiting for ever.
    Anything else at start (a broker not there yet) is waited for, and readiness says why."""


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None, on_fatal: Callable[[FatalError], None] | None = None):
        self.config = config
        # Called (from the start thread) when start-up meets a FatalError; the HTTP entry point
        # passes one that ends the process. Without it the error is kept and liveness reports it.
        self._on_fatal = on_fatal
        self.fatal: FatalError | None = None
        self.metrics = metrics or Metrics()
        self.codec = _codec(config, ContactCodec, config.contacts_topic)
        self.event_codec = _codec(config, EventCodec, config.events_topic)
        self.store, wiped = Store.open_or_rebuild(
            Path(config.state_dir), self.codec, config.default_phone_region, self.event_codec
        )
        if wiped:
            self.metrics.store_rebuilds.labels(reason="corrupt").inc()
        self.materializer = Materializer(config, self.store, self.metrics)
        self.replies = ReplyListener(config, self.metrics)
        self.publisher = CommandClient(config, self.replies, self.materializer, self.metrics)
        # Groups people said are not duplicates: every replica reads the whole topic.
        self.dismissed = Materializer(
            config,
            self.store,
            self.metrics,
            topic=dismissed_topic(config),
            target=self.store.dismissed,
            name="dismissed materializer",
        )
        # Each contact's recent change events, for contacts.history: every replica reads the
        # whole events topic. Not part of readiness: only contacts.history waits for it.
        self.events = Materializer(
            config,
            self.store,
            self.metrics,
            topic=config.events_topic,
            target=self.store.history,
            name="events materializer",
            after=self.materializer,
        )
        self.history = History(config, self.store, self.events)
        self.contacts = Contacts(self.store, self.publisher, self.materializer, self.dismissed)
        self.finder = Finder(self.store)
        self.router = self.join_state = None
        if config.auto_create_enabled:
            from contacts_streams.auto_create import ConversationRouter

            self.join_state = Materializer(
                config,
                self.store,
                self.metrics,
                topic=conversations_topic(config),
                target=self.store.join_state,
                name="join-state materializer",
            )
            self.router = ConversationRouter(config, self.store, self.metrics)
        # Every replica runs a writer; the one that holds the commands partition applies.
        self.writer = Writer(
            config,
            self.store,
            self.materializer,
            self.metrics,
            self.codec,
            self.publisher,
            join_state=self.join_state,
            event_codec=self.event_codec,
        )
        self._start_error: BaseException | None = None
        self._closed = False
        self._stalled: str | None = None
        self._watchdog = threading.Event()
        self.liveness_checked_at = 0.0  # when the watchdog last judged the stages

    def start(self, wait: bool = False, timeout: float = 120.0) -> Service:
        """Start in the background (HTTP may serve health meanwhile); wait=True blocks until ready."""
        threading.Thread(target=self._start, name="service-start", daemon=True).start()
        if wait:
            self.wait_ready(timeout)
        return self

    def _start(self) -> None:
        while not self._closed:
            try:
                try:
                    ensure_topics(self.config, timeout=START_ATTEMPT_S, errors=StartupErrors())
                except BrokerRefused as refused:
                    raise FatalError(str(refused)) from None
                self.contacts.erase_bound = self.writer.erase_bound = apply_erase_settings(self.config, timeout=START_ATTEMPT_S)
                self.publisher.start()
                self._register_schema()
                self.replies.start()
                break
            except FatalError as err:
                self.fatal = err
                log.critical("cannot start: %s", err)
                if self._on_fatal is not None:
                    self._on_fatal(err)
                return
            except Exception as err:  # broker or registry not there yet: keep trying, health says why
                self._start_error = err
                log.warning("waiting at start: %s", err)
                time.sleep(1)
        else:
            return
        self._start_error = None
        for materializer in self._materializers():
            materializer.start()
        for loop in self._loops():
            loop.start()
        threading.Thread(target=self._watch, name="liveness-watchdog", daemon=True).start()

    def _register_schema(self) -> None:
        """Register the contact schema now rather than at the first write, so a subject that
        refuses it stops the service at start instead of failing every write later."""
        for what, avro in (("contact", self.codec.avro), ("contact-event", self.event_codec.avro)):
            if avro.registry is None:
                continue
            try:
                schema_id = avro.register()
            except SchemaRefused as err:
                raise FatalError(str(err)) from err
            log.info("the %s schema is registered under %s with id %d", what, avro.subject, schema_id)

    def wait_ready(self, timeout: float) -> None:
        """Block until ready; raises the FatalError that ended the start, if one did."""
        deadline = time.monotonic() + timeout
        while not self.ready()[0]:
            if self.fatal is not None:
                raise self.fatal
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready after {timeout}s: {self.ready()[1]}")
            time.sleep(0.05)

    def ready(self) -> tuple[bool, str]:
        if self._start_error is not None:
            what = "schema registry unreachable" if isinstance(self._start_error, RegistryError) else "broker unreachable"
            return False, f"{what}: {self._start_error}"
        if not self.materializer.ready:
            return False, self.materializer.status()
        if not self.dismissed.ready:
            return False, self.dismissed.status()
        if not self.replies.ready:
            return False, "the reply listener is not started"
        for loop in self._loops():
            if not loop.ready:
                return False, loop.status()
        return True, "up"

    def store_status(self) -> str:
        """Why the store cannot answer yet (every /contacts.* call waits for
        ``materializer.ready``: caught up with the contacts topic, rebuilt if it had to be)."""
        if self._start_error is not None:
            return f"broker unreachable: {self._start_error}"
        if self.materializer.rebuild_reason and not self.materializer.ready:
            return f"rebuilding the store ({self.materializer.rebuild_reason}): {self.materializer.status()}"
        return self.materializer.status()

    def alive(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"cannot start: {self.fatal}"
        for materializer in self._materializers():
            if materializer.failure is not None:
                return False, materializer.status()
        for loop in self._loops():
            if loop.failure is not None:
                return False, loop.status()
        if self.replies.failure is not None:
            return False, f"reply listener failed: {self.replies.failure}"
        if self._stalled is not None:
            return False, self._stalled
        return True, "alive"

    def _loops(self) -> list:
        return [loop for loop in (self.writer, self.router) if loop is not None]

    def _materializers(self) -> list[Materializer]:
        return [m for m in (self.materializer, self.join_state, self.dismissed, self.events) if m is not None]

    def _watch(self) -> None:
        """Liveness of the stream stages: one whose waiting input has not moved for
        LIVENESS_STALL_MS is reported (liveness 503, so the platform restarts the pod), unless
        the broker does not answer: that is readiness' business, and a restart would not help."""
        limit = self.config.liveness_stall_ms / 1000
        interval = min(1.0, limit / 4)
        admin = None
        while not self._watchdog.wait(interval):
            now = self.liveness_checked_at = time.monotonic()
            # While a store catches up (a rebuild), the stages that wait for it are not stuck:
            # the materializers' own progress is what counts then. No stage waits for the
            # events part (it catches up after the rebuild, while the writer works).
            catching_up = not all(m.ready for m in self._materializers() if m is not self.events)
            watched = self._materializers() + ([] if catching_up else self._loops())
            stages = [(stage.progress, stage.progress.stalled_for(now)) for stage in watched]
            for progress, waited in stages:
                self.metrics.stage_stalled.labels(stage=progress.stage).set(waited)
            stalled = [progress.describe(now) for progress, waited in stages if waited > limit]
            if stalled and self._broker_answers(admin := admin or AdminClient(self.config.kafka())):
                if self._stalled is None:
                    log.error("liveness fails: %s", "; ".join(stalled))
                self._stalled = "; ".join(stalled)
            else:
                self._stalled = None

    def _broker_answers(self, admin: AdminClient) -> bool:
        try:
            admin.list_topics(timeout=5)
            return True
        except KafkaException as err:
            log.warning("a stream stage has stalled while the broker does not answer: %s", err)
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watchdog.set()
        # The router first (its last commands reach the writer), then the writer: its consumer
        # leaves the group, so another replica takes over at once instead of after a session.
        for loop in reversed(self._loops()):
            loop.stop()
        self.publisher.close()
        self.history.close()
        self.replies.stop()
        for materializer in self._materializers():
            materializer.stop()
        self.store.close()
        log.info("closed")


def _registry_client(config: Config):
    """The registry client the codecs share, or None without a registry. A write waits for the
    registry at most about half its time (two tries), so a registry that hangs still gets the
    write its 503 within WRITE_TIMEOUT_MS."""
    if not config.schema_registry_url:
        return None
    write_timeout_s = config.write_timeout_ms / 1000
    return shared_registry_client(config.schema_registry_url, timeout=min(10.0, max(0.1, write_timeout_s / 4)))


def _codec(config: Config, codec: type[C], topic: str) -> C:
    """The codec of a topic's values, under the subject ``<topic>-value``."""
    client = _registry_client(config)
    subject = f"{topic}-value"
    if client is None:
        return codec(subject=subject)
    return codec(subject=subject, registry_client=client, confirm_every=config.schema_registry_check_ms / 1000)
