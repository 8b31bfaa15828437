"""What several test folders share: the seed page's sample payloads, a service config of a
test's own and the sockets listening on a port (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

from pathlib import Path

from contacts_streams.config import Config

from contacts_dev.examples import CONVERSATION_A, CONVERSATION_B, SEED_CONTACT  # noqa: F401 (used by the tests)

# The seed page's import request.
SEED_IMPORT = [
    {"display_name": "Barabara Liskov", "avatar_url": "https://example.org/avatar.jpg", "title": "Professor"},
    {"display_name": "Eleanor B. Garcia", "avatar_url": "https://example.org/avatar.jpg", "title": "Estimator project manager"},
    {"display_name": "Marie R. Lemelin", "avatar_url": "https://example.org/avatar.jpg", "title": "Accountant"},
    {"display_name": "Lori L. Carter", "avatar_url": "https://example.org/avatar.jpg", "title": "Occupational health and safety technician"},
]


def test_config(kafka: str, unique: str, state_dir: str, **overrides) -> Config:
    """A config whose topics, group, transactional ids and state belong to one test (or module)."""
    settings = dict(
        kafka_brokers=kafka,
        contacts_topic=f"{unique}.contacts",
        events_topic=f"{unique}.contact-events",
        messages_topic=f"{unique}.messages",
        metadata_topic=f"{unique}.metadata",
        contacts_partitions=3,
        application_id=unique,
        instance_id="test",
        state_dir=state_dir,
        auto_create_enabled=False,
        # Generous: `make test` runs two workers on two cores, and a 1000-contact import takes
        # about 5 s in-process even on a quiet machine (see the note on the import path).
        write_timeout_ms=20_000,
    )
    settings.update(overrides)
    return Config(**settings)


test_config.__test__ = False  # a helper, not a test


def module_client(kafka: str, name: str, state_dir: str, **overrides):
    """A started service with its own topics for a whole test module, and its HTTP test client:
    yields the client and closes the service after (use it from a module-scoped fixture)."""
    import uuid

    from api.app import create_app
    from contacts_streams.service import Service

    config = test_config(kafka, f"{name}-{uuid.uuid4().hex[:8]}", state_dir, **overrides)
    service = Service(config).start(wait=True, timeout=60)
    try:
        yield create_app(config, service).test_client()
    finally:
        service.close()


def post(client, path: str, body, status: int):
    """POST `body` as JSON, assert the status, return the JSON answer (None when empty)."""
    response = client.post(path, json=body)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json() if response.data else None


def listening(port: int) -> list[tuple[str, str]]:
    """(local address in /proc's hex, socket inode) of every TCP socket listening on the port."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 on the machine
            continue
        for line in lines:
            fields = line.split()
            address, local_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                found.append((address, fields[9]))
    return found
