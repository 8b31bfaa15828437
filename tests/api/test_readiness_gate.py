"""Until the store has caught up with the contacts topic, every /contacts.* call is a 503 with
Retry-After (a write would read an old contact and publish it over newer changes); health,
metrics and the OpenAPI document are served all along. The same under load, across a rebuild of
tens of thousands of contacts: tests/faults/test_rebuild_under_writes.py."""

from __future__ import annotations

import uuid

import pytest

from api.app import create_app
from contacts_streams.service import Service

ENDPOINTS = [
    ("/contacts.info", {"id": str(uuid.uuid4())}),
    ("/contacts.list", {}),
    ("/contacts.create", {"display_name": "too early"}),
    ("/contacts.update", {"id": str(uuid.uuid4()), "title": "t"}),
    ("/contacts.merge", {"source_id": str(uuid.uuid4()), "destination_id": str(uuid.uuid4())}),
]


@pytest.fixture
def catching_up(make_config):
    """A service whose store has not caught up yet: made, not started (as in the first moments
    of a start, or a rebuild that has not reached the topic's end)."""
    service = Service(make_config())
    yield service
    service.close()


@pytest.mark.parametrize("path, body", ENDPOINTS)
def test_contacts_calls_are_503_with_retry_after_until_the_store_caught_up(catching_up, path, body):
    client = create_app(catching_up.config, catching_up).test_client()
    response = client.post(path, json=body)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.is_json
    message = response.get_json()["message"]
    assert "retry later" in message and catching_up.config.contacts_topic in message, message


def test_health_metrics_and_openapi_stay_served_meanwhile(catching_up):
    client = create_app(catching_up.config, catching_up).test_client()
    assert client.get("/actuator/health").status_code == 503  # not ready
    assert client.get("/actuator/health/liveness").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_the_gate_opens_once_the_store_has_caught_up(make_config, start_service):
    service = start_service(make_config(), wait=False)
    client = create_app(service.config, service).test_client()
    service.wait_ready(60)
    created = client.post("/contacts.create", json={"display_name": "now"})
    assert created.status_code == 201
    assert client.post("/contacts.info", json={"id": created.get_json()["id"]}).status_code == 200
