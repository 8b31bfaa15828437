"""Dismissing duplicates through HTTP on the real broker: a dismissed group is not offered again,
on the replica that answered at once, and on a replica that builds its store from the topics."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from api.app import create_app


def post(client, path, body, status):
    response = client.post(path, json=body)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json() if response.data else None


def groups_of(client, contact_id):
    return [sorted(c["id"] for c in g["contacts"]) for g in post(client, "/contacts.duplicates", {"id": contact_id}, 200)["data"]]


@pytest.fixture
def start(kafka, tmp_path):
    """start(config or None) -> a test client of a started service; the first call makes the config."""
    from support import test_config

    from contacts_streams.service import Service

    started = []

    def make(config=None):
        config = config or test_config(kafka, f"dismiss-{uuid.uuid4().hex[:8]}", str(tmp_path / "state-0"))
        service = Service(config).start(wait=True, timeout=60)
        started.append(service)
        return config, service, create_app(config, service).test_client()

    yield make
    for service in started:
        service.close()


def test_a_dismissed_group_is_not_offered_again_here_nor_on_a_fresh_replica(start, tmp_path):
    config, service, api = start()
    a = post(api, "/contacts.create", {"display_name": "Same A", "via": {"email": "same@example.org"}}, 201)
    b = post(api, "/contacts.create", {"display_name": "Same B", "via": {"email": "SAME@example.org "}}, 201)
    pair = sorted([a["id"], b["id"]])
    assert groups_of(api, a["id"]) == [pair]

    post(api, "/contacts.dismiss_duplicates", {"ids": [b["id"], a["id"].upper()]}, 202)
    assert groups_of(api, a["id"]) == []  # read-your-writes: the answer waited for the store
    assert pair not in [sorted(c["id"] for c in g["contacts"]) for g in post(api, "/contacts.duplicates", {}, 200)["data"]]

    # a contact that joins makes another group, which is offered
    c = post(api, "/contacts.create", {"display_name": "Same C", "via": {"email": "same@example.org"}}, 201)
    assert groups_of(api, a["id"]) == [sorted([a["id"], b["id"], c["id"]])]
    post(api, "/contacts.delete", {"id": c["id"]}, 202)
    assert groups_of(api, a["id"]) == []

    # another replica with an empty state folder learns the group from the dismissed topic
    service.close()
    fresh = dataclasses.replace(config, state_dir=str(tmp_path / "state-1"), instance_id="fresh")
    _, _, other = start(fresh)
    assert groups_of(other, a["id"]) == []
    assert post(other, "/contacts.info", {"id": b["id"]}, 200)["id"] == b["id"]


def test_dismissing_unknown_or_merged_away_contacts_is_a_404_and_bad_input_a_400(start):
    _, _, api = start()
    a = post(api, "/contacts.create", {"display_name": "A"}, 201)
    b = post(api, "/contacts.create", {"display_name": "B"}, 201)
    unknown = str(uuid.uuid4())
    missing = post(api, "/contacts.dismiss_duplicates", {"ids": [a["id"], unknown]}, 404)
    assert unknown in missing["message"]
    post(api, "/contacts.merge", {"source_id": b["id"], "destination_id": a["id"]}, 200)
    assert post(api, "/contacts.dismiss_duplicates", {"ids": [a["id"], b["id"]]}, 404)["merged_into"] == a["id"]
    for body, field in [
        ({}, "ids"),
        ({"ids": [a["id"]]}, "ids"),
        ({"ids": [a["id"], a["id"].upper()]}, "ids"),
        ({"ids": [a["id"], "x"]}, "ids[1]"),
        ({"ids": [str(uuid.uuid4()) for _ in range(101)]}, "ids"),
        ({"ids": "x"}, "ids"),
    ]:
        assert post(api, "/contacts.dismiss_duplicates", body, 400)["field"] == field
