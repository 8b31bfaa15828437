"""The running service: store, materializer, publisher and auto-create, started and stopped together."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from contacts_streams.config import Config
from contacts_streams.contacts import Contacts
from contacts_streams.kafka_security import BrokerRefused, StartupErrors
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.publisher import Publisher
from contacts_streams.serialization import ContactCodec, RegistryError, SchemaRefused, shared_registry_client
from contacts_streams.store import Store
from contacts_streams.topics import ensure_topics

log = logging.getLogger(__name__)
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
        self.codec = _contact_codec(config)
        self.store, wiped = Store.open_or_rebuild(Path(config.state_dir), self.codec)
        if wiped:
            self.metrics.store_rebuilds.labels(reason="corrupt").inc()
        self.materializer = Materializer(config, self.store, self.metrics)
        self.publisher = Publisher(config, self.materializer, self.metrics)
        self.contacts = Contacts(self.store, self.publisher, self.codec)
        self.auto_create = self.router = None
        if config.auto_create_enabled:
            from contacts_streams.auto_create import AutoCreate, ConversationRouter

            self.router = ConversationRouter(config, self.store, self.metrics)
            self.auto_create = AutoCreate(config, self.store, self.publisher, self.materializer, self.metrics, self.codec)
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
                try:
                    ensure_topics(self.config, timeout=START_ATTEMPT_S, errors=StartupErrors())
                except BrokerRefused as refused:
                    raise FatalError(str(refused)) from None
                self.publisher.start()
                self._register_schema()
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
        self.materializer.start()
        for loop in self._loops():
            loop.start()

    def _register_schema(self) -> None:
        """Register the contact schema now rather than at the first write, so a subject that
        refuses it stops the service at start instead of failing every write later."""
        if self.codec.avro.registry is None:
            return
        try:
            schema_id = self.codec.avro.register()
        except SchemaRefused as err:
            raise FatalError(str(err)) from err
        log.info("the contact schema is registered under %s with id %d", self.codec.avro.subject, schema_id)

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
        if self.materializer.failure is not None:
            return False, self.materializer.status()
        for loop in self._loops():
            if loop.failure is not None:
                return False, loop.status()
        return True, "alive"

    def _loops(self) -> list:
        return [loop for loop in (self.router, self.auto_create) if loop is not None]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for loop in self._loops():
            loop.stop()
        self.publisher.close()
        self.materializer.stop()
        self.store.close()
        log.info("closed")


def _contact_codec(config: Config) -> ContactCodec:
    subject = f"{config.contacts_topic}-value"
    if not config.schema_registry_url:
        return ContactCodec(subject=subject)
    # A write waits for the registry at most about half its time (two tries), so a registry
    # that hangs still gets the write its 503 within WRITE_TIMEOUT_MS.
    write_timeout_s = config.write_timeout_ms / 1000
    client = shared_registry_client(config.schema_registry_url, timeout=min(10.0, max(0.1, write_timeout_s / 4)))
    return ContactCodec(subject=subject, registry_client=client, confirm_every=config.schema_registry_check_ms / 1000)
