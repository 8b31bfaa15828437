"""The running service: store, materializer, reply listener and command client, the writer and
the conversation router, started and stopped together."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from contacts_streams.config import Config
from contacts_streams.contacts import Contacts
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import CommandClient, ReplyListener
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Store
from contacts_streams.topics import ensure_topics
from contacts_streams.writer import Writer

log = logging.getLogger(__name__)


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
        self.codec = ContactCodec(registry_url=config.schema_registry_url, subject=f"{config.contacts_topic}-value")
        self.store, wiped = Store.open_or_rebuild(Path(config.state_dir), self.codec)
        if wiped:
            self.metrics.store_rebuilds.labels(reason="corrupt").inc()
        self.materializer = Materializer(config, self.store, self.metrics)
        self.replies = ReplyListener(config, self.metrics)
        self.publisher = CommandClient(config, self.replies, self.materializer, self.metrics)
        self.contacts = Contacts(self.store, self.publisher, self.materializer)
        # Every replica runs a writer; the one that holds the commands partition applies.
        self.writer = Writer(config, self.store, self.materializer, self.metrics, self.codec)
        self.router = None
        if config.auto_create_enabled:
            from contacts_streams.auto_create import ConversationRouter

            self.router = ConversationRouter(config, self.store, self.metrics)
        self._start_error: BaseException | None = None
        self._closed = False

    def start(self, wait: bool = False, timeout: float = 120.0) -> "Service":
        """Start in the background (HTTP may serve health meanwhile); wait=True blocks until ready."""
        threading.Thread(target=self._start, name="service-start", daemon=True).start()
        if wait:
            self.wait_ready(timeout)
        return self

    def _start(self) -> None:
        while not self._closed:
            try:
                ensure_topics(self.config)
                self.replies.start()
                break
            except FatalError as err:
                self.fatal = err
                log.critical("cannot start: %s", err)
                if self._on_fatal is not None:
                    self._on_fatal(err)
                return
            except Exception as err:  # broker not there yet: keep trying, health says why
                self._start_error = err
                log.warning("waiting for Kafka: %s", err)
                time.sleep(1)
        else:
            return
        self._start_error = None
        self.materializer.start()
        for loop in self._loops():
            loop.start()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready after {timeout}s: {self.ready()[1]}")
            time.sleep(0.05)

    def ready(self) -> tuple[bool, str]:
        if self._start_error is not None:
            return False, f"broker unreachable: {self._start_error}"
        if not self.materializer.ready:
            return False, self.materializer.status()
        if not self.replies.ready:
            return False, "reply listener not started"
        for loop in self._loops():
            if not loop.ready:
                return False, loop.status()
        return True, "up"

    def alive(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"cannot start: {self.fatal}"
        if self.materializer.failure is not None:
            return False, self.materializer.status()
        if self.replies.failure is not None:
            return False, f"reply listener failed: {self.replies.failure}"
        for loop in self._loops():
            if loop.failure is not None:
                return False, loop.status()
        return True, "alive"

    def _loops(self) -> list:
        return [loop for loop in (self.writer, self.router) if loop is not None]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The router first (its last commands reach the writer), then the writer: its consumer
        # leaves the group, so another replica takes over at once instead of after a session.
        for loop in reversed(self._loops()):
            loop.stop()
        self.publisher.close()
        self.replies.stop()
        self.materializer.stop()
        self.store.close()
        log.info("closed")
