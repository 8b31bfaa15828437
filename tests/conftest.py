"""Shared fixtures: one real Kafka broker per test session, a real schema registry for the tests
that ask for one, and topics no other test sees."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from contacts_dev import embedded_kafka


@pytest.fixture(scope="session")
def kafka():
    """The bootstrap servers of a real broker (see contacts_dev.embedded_kafka.resolve)."""
    try:
        broker = embedded_kafka.resolve(log_dir=Path(__file__).resolve().parent.parent / "build")
    except embedded_kafka.BrokerError as err:
        pytest.fail(f"no Kafka broker for the tests: {err}", pytrace=False)
    yield broker.bootstrap_servers
    broker.stop()


@pytest.fixture(scope="session")
def schema_registry():
    """A real schema registry (contacts_dev.schema_registry, in memory) shared by the session:
    started by the first test that asks for it (the first run on a machine builds it, ~2 min).
    Tests use subjects of their own; a test that stops a registry takes a private_registry."""
    registry = _new_registry().start()
    yield registry
    registry.stop()


@pytest.fixture
def private_registry():
    """A real schema registry of this test's own, to stop and start again (it starts in ~0.1 s)."""
    registry = _new_registry().start()
    yield registry
    registry.stop()


def _new_registry():
    from contacts_dev import schema_registry

    try:
        return schema_registry.Registry(log_dir=Path(__file__).resolve().parent.parent / "build")
    except schema_registry.RegistryError as err:
        pytest.fail(f"no schema registry for the tests: {err}", pytrace=False)


@pytest.fixture
def unique():
    """A name prefix of this test's own, so tests never read each other's topics or groups."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def new_topic(kafka, unique):
    """Create a topic of this test's own: new_topic("contacts", partitions=3, compacted=True)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka})
    made = []

    def create(name: str = "topic", partitions: int = 1, compacted: bool = False) -> str:
        full = f"{unique}.{name}"
        config = {"cleanup.policy": "compact"} if compacted else {}
        for future in admin.create_topics([NewTopic(full, partitions, 1, config=config)]).values():
            future.result(timeout=30)
        made.append(full)
        return full

    yield create
    if made:
        for future in admin.delete_topics(made).values():
            try:
                future.result(timeout=30)
            except Exception:
                pass


@pytest.fixture
def make_config(kafka, unique, tmp_path):
    """A service config of this test's own: its own topics, group, transactional ids and state."""
    from support import test_config

    def make(**overrides):
        state_dir = overrides.pop("state_dir", str(tmp_path / "state"))
        return test_config(kafka, unique, state_dir, **overrides)

    return make


@pytest.fixture
def start_service():
    """Start services that are closed when the test ends: start_service(config) -> Service."""
    from contacts_streams.service import Service

    started = []

    def start(config, wait: bool = True):
        service = Service(config)
        started.append(service)
        return service.start(wait=wait, timeout=60)

    yield start
    for service in reversed(started):
        service.close()


@pytest.fixture
def service(make_config, start_service):
    return start_service(make_config())


@pytest.fixture
def client(service):
    from api.app import create_app

    return create_app(service.config, service).test_client()
