"""Unmerge through HTTP on the real broker and store: merge then unmerge gives both contacts
back, and the pairs that cannot be unmerged are refused without a change."""

from __future__ import annotations

import uuid

import pytest

from support import module_client, post


@pytest.fixture(scope="module")
def api(kafka, tmp_path_factory):
    yield from module_client(kafka, "unmerge", str(tmp_path_factory.mktemp("state")))


def without_times(contact):
    return {k: v for k, v in contact.items() if k not in ("updated_at",)}


def test_merge_then_unmerge_gives_both_contacts_back(api):
    conversation, kept_conversation = str(uuid.uuid4()), str(uuid.uuid4())
    source = post(
        api,
        "/contacts.create",
        {"display_name": "Ada Source", "title": "Countess", "via": {"email": "ada.unmerge@example.org"}, "conversations": {conversation: "facebook"}},
        201,
    )
    destination = post(
        api, "/contacts.create", {"display_name": "Ada Destination", "via": {"phone": "+44 20 7946 0000"}, "conversations": {kept_conversation: "sms"}}, 201
    )
    before_source = post(api, "/contacts.info", {"id": source["id"]}, 200)
    before_destination = post(api, "/contacts.info", {"id": destination["id"]}, 200)
    merged = post(api, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 200)
    assert merged["title"] == "Countess" and conversation in merged["conversations"]

    answer = post(api, "/contacts.unmerge", {"destination_id": destination["id"], "source_id": source["id"]}, 200)
    assert without_times(answer["restored"]) == without_times(before_source)
    assert without_times(answer["destination"]) == without_times(before_destination)
    assert answer["destination"]["merge_history"] == []
    # the store answers the same, by id and by the source's conversation
    assert without_times(post(api, "/contacts.info", {"id": source["id"]}, 200)) == without_times(before_source)
    assert post(api, "/contacts.info", {"conversation_id": conversation}, 200)["id"] == source["id"]
    assert post(api, "/contacts.info", {"conversation_id": kept_conversation}, 200)["id"] == destination["id"]
    found = post(api, "/contacts.lookup", {"via": {"email": "ada.unmerge@example.org"}}, 200)["data"]
    assert [c["id"] for c in found] == [source["id"]]
    # the source id no longer leads to the destination: deleted now, it is simply gone
    post(api, "/contacts.delete", {"id": source["id"]}, 202)
    gone = post(api, "/contacts.info", {"id": source["id"]}, 404)
    assert "merged_into" not in gone


def test_a_value_the_destination_changed_after_the_merge_stays(api):
    source = post(api, "/contacts.create", {"display_name": "S", "title": "Dr", "organization_name": "Source Org"}, 201)
    destination = post(api, "/contacts.create", {"display_name": "D"}, 201)
    post(api, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 200)
    post(api, "/contacts.update", {"id": destination["id"], "title": "Prof"}, 202)
    answer = post(api, "/contacts.unmerge", {"destination_id": destination["id"], "source_id": source["id"]}, 200)
    assert answer["destination"]["title"] == "Prof" and "organization_name" not in answer["destination"]
    assert answer["restored"]["title"] == "Dr" and answer["restored"]["organization_name"] == "Source Org"


def test_unmerge_of_a_pair_never_merged_or_an_unknown_destination_is_a_404(api):
    a = post(api, "/contacts.create", {"display_name": "A"}, 201)
    b = post(api, "/contacts.create", {"display_name": "B"}, 201)
    never = post(api, "/contacts.unmerge", {"destination_id": b["id"], "source_id": a["id"]}, 404)
    assert "never merged" in never["message"]
    unknown = str(uuid.uuid4())
    missing = post(api, "/contacts.unmerge", {"destination_id": unknown, "source_id": a["id"]}, 404)
    assert unknown in missing["message"] and "destination_id" in missing["message"]
    # merged the other way round is not this pair
    post(api, "/contacts.merge", {"source_id": b["id"], "destination_id": a["id"]}, 200)
    post(api, "/contacts.unmerge", {"destination_id": b["id"], "source_id": a["id"]}, 404)


def test_unmerge_is_a_409_when_the_sources_conversation_belongs_to_a_third_contact(api):
    conversation = str(uuid.uuid4())
    source = post(api, "/contacts.create", {"display_name": "Source", "conversations": {conversation: "facebook"}}, 201)
    destination = post(api, "/contacts.create", {"display_name": "Destination"}, 201)
    post(api, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 200)
    post(api, "/contacts.update", {"id": destination["id"], "conversations": {conversation: ""}}, 202)
    third = post(api, "/contacts.create", {"display_name": "Third", "conversations": {conversation: "facebook"}}, 201)
    before = post(api, "/contacts.info", {"id": destination["id"]}, 200)

    conflict = post(api, "/contacts.unmerge", {"destination_id": destination["id"], "source_id": source["id"]}, 409)
    assert conflict["field"] == f"conversations.{conversation}" and third["id"] in conflict["message"]
    # nothing changed
    assert post(api, "/contacts.info", {"id": destination["id"]}, 200) == before
    assert post(api, "/contacts.info", {"id": source["id"]}, 404)["merged_into"] == destination["id"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"source_id": str(uuid.uuid4())}, "destination_id"),
        ({"destination_id": str(uuid.uuid4())}, "source_id"),
        ({"destination_id": "x", "source_id": str(uuid.uuid4())}, "destination_id"),
        ({"destination_id": str(uuid.uuid4()), "source_id": 5}, "source_id"),
        ({"destination_id": "0b7e2b3a-51d5-4d43-bb4b-1f0c7d6e9a10", "source_id": "0b7e2b3a-51d5-4d43-bb4b-1f0c7d6e9a10"}, "source_id"),
        ([], ""),
    ],
)
def test_unmerge_refuses_bad_input_naming_the_field(api, body, field):
    assert post(api, "/contacts.unmerge", body, 400)["field"] == field
