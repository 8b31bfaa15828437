"""The seven endpoints through HTTP, on the real broker and the real store."""

from __future__ import annotations

import json
import uuid

import pytest
from support import SEED_CONTACT as SEED
from support import SEED_IMPORT as IMPORT_SEED




def post(client, path, body, status):
    response = client.post(path, json=body)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json() if response.data else None


def info(client, contact_id):
    return post(client, "/contacts.info", {"id": contact_id}, 200)


def create(client, **fields):
    return post(client, "/contacts.create", fields or {"display_name": "x"}, 201)


# --- create / info -----------------------------------------------------------------------------


def test_create_serves_the_seed_shape_and_info_reads_it_back(client):
    contact = post(client, "/contacts.create", SEED, 201)
    assert uuid.UUID(contact["id"])
    assert contact["created_at"].endswith("Z") and len(contact["created_at"]) == len("2021-11-16T13:21:03.580Z")
    for field, value in SEED.items():
        assert contact[field] == value
    read = info(client, contact["id"])  # read-your-writes: no waiting
    assert {k: read[k] for k in SEED} == SEED
    assert read["merge_history"] == []
    assert read["created_at"] == contact["created_at"]
    by_conversation = post(client, "/contacts.info", {"conversation_id": "ea1cba21-2bd6-477c-9a40-59cd9bb96bef"}, 200)
    assert by_conversation["id"] == contact["id"]


def test_create_refuses_an_empty_payload_and_ignores_unknown_fields(client):
    assert "message" in post(client, "/contacts.create", {}, 400)
    response = client.post("/contacts.create", json={"display_name": "A", "nickname": "B"})
    assert response.status_code == 201 and response.headers["X-Contacts-Ignored-Fields"] == "nickname"
    assert "nickname" not in info(client, response.get_json()["id"])
    error = post(client, "/contacts.create", {"via": {"email": 5}}, 400)
    assert "via.email" in error["message"]


def test_timezone_is_served_as_sent(client):
    for timezone in (2, -5.5, "+02:00", ""):
        contact = create(client, display_name="tz", timezone=timezone)
        assert info(client, contact["id"])["timezone"] == timezone
        assert type(info(client, contact["id"])["timezone"]) is type(timezone)


def test_unknown_ids_are_404_with_a_message(client):
    missing = str(uuid.uuid4())
    for path, body in [
        ("/contacts.info", {"id": missing}),
        ("/contacts.info", {"conversation_id": str(uuid.uuid4())}),
        ("/contacts.update", {"id": missing, "title": "x"}),
        ("/contacts.delete", {"id": missing}),
        ("/contacts.merge", {"source_id": missing, "destination_id": create(client)["id"]}),
    ]:
        assert post(client, path, body, 404)["message"]


def test_a_conversation_cannot_belong_to_two_contacts(client):
    conversation = str(uuid.uuid4())
    owner = create(client, display_name="Owner", conversations={conversation: "facebook"})
    error = post(client, "/contacts.create", {"display_name": "Other", "conversations": {conversation: "facebook"}}, 409)
    assert conversation in error["message"] and owner["id"] in error["message"]
    other = create(client, display_name="Other")
    post(client, "/contacts.update", {"id": other["id"], "conversations": {conversation: "sms"}}, 409)
    assert "conversations" not in info(client, other["id"])


# --- update / delete ---------------------------------------------------------------------------


def test_update_sets_removes_and_merges_maps_key_by_key(client):
    contact = post(client, "/contacts.create", SEED, 201)
    body = post(
        client,
        "/contacts.update",
        {
            "id": contact["id"],
            "display_name": "Barbara Liskov",
            "title": "",
            "via": {"email": "", "fax": "+999"},
            "address": {"city": "Boston", "state": ""},
            "metadata": {"salesforce_id": "", "hubspot": {"id": "7"}},
        },
        202,
    )
    assert body is None
    read = info(client, contact["id"])
    assert read["display_name"] == "Barbara Liskov"
    assert "title" not in read
    assert read["via"] == {"phone": "+1234567", "key": "value", "fax": "+999"}
    assert read["address"]["city"] == "Boston" and "state" not in read["address"]
    assert read["address"]["postcode"] == "02139"
    assert "salesforce_id" not in read["metadata"] and read["metadata"]["hubspot"] == {"id": "7"}
    assert read["metadata"]["facebook"] == SEED["metadata"]["facebook"]
    assert read["created_at"] == contact["created_at"]
    assert read["updated_at"] >= contact["created_at"]


@pytest.mark.parametrize(
    "field, before, after",
    [("metadata", {"k": 1}, {"k": True}), ("metadata", {"k": 2}, {"k": 2.0}), ("metadata", {"k": {"n": 0}}, {"k": {"n": False}}), ("timezone", 2, 2.0), ("timezone", 1.0, 1)],
)
def test_an_update_that_changes_only_a_values_type_lands(client, field, before, after):
    contact = create(client, display_name="typed", **{field: before})
    post(client, "/contacts.update", {"id": contact["id"], field: after}, 202)
    served = client.post("/contacts.info", json={"id": contact["id"]})
    # Compared as JSON text: Python's 1 == True == 1.0 is what hid the bug.
    assert json.dumps(json.loads(served.data)[field]) == json.dumps(after)


def test_delete_removes_the_contact_and_its_indexes(client):
    conversation = str(uuid.uuid4())
    contact = create(client, display_name="Gone", conversations={conversation: "facebook"})
    total = post(client, "/contacts.list", {}, 200)["pagination_data"]["total"]
    assert post(client, "/contacts.delete", {"id": contact["id"]}, 202) is None
    post(client, "/contacts.info", {"id": contact["id"]}, 404)
    post(client, "/contacts.info", {"conversation_id": conversation}, 404)
    listed = post(client, "/contacts.list", {"page_size": 1000}, 200)
    assert listed["pagination_data"]["total"] == total - 1
    assert contact["id"] not in [c["id"] for c in listed["data"]]
    # The conversation is free again: a new contact may claim it.
    create(client, display_name="New owner", conversations={conversation: "facebook"})


# --- merge -------------------------------------------------------------------------------------


def test_merge_keeps_the_destination_fills_gaps_unites_conversations_and_keeps_history(client):
    c1, c2, c3 = (str(uuid.uuid4()) for _ in range(3))
    destination = create(
        client, display_name="Barabara Liskov", avatar_url="https://example.org/avatar.jpg", via={"email": "d@x.org"}, conversations={c1: "facebook"}
    )
    source = create(
        client,
        display_name="Eleanor B. Garcia",
        title="Estimator project manager",
        organization_name="Airy.co",
        via={"email": "s@x.org", "phone": "+1"},
        conversations={c2: "twilio.sms"},
    )
    merged = post(client, "/contacts.merge", {"source_id": source["id"], "destination_id": destination["id"]}, 200)
    assert merged["id"] == destination["id"] and merged["created_at"] == destination["created_at"]
    assert merged["display_name"] == "Barabara Liskov"
    assert merged["title"] == "Estimator project manager" and merged["organization_name"] == "Airy.co"
    assert merged["via"] == {"email": "d@x.org", "phone": "+1"}
    assert merged["conversations"] == {c1: "facebook", c2: "twilio.sms"}
    assert [h["id"] for h in merged["merge_history"]] == [source["id"]]
    assert merged["merge_history"][0]["display_name"] == "Eleanor B. Garcia"
    assert "merge_history" not in merged["merge_history"][0] or merged["merge_history"][0]["merge_history"] == []
    assert info(client, destination["id"]) == merged

    gone = post(client, "/contacts.info", {"id": source["id"]}, 404)
    assert gone["merged_into"] == destination["id"]
    assert post(client, "/contacts.info", {"conversation_id": c2}, 200)["id"] == destination["id"]

    # Merging a contact into a merge destination keeps the whole history, flattened.
    third = create(client, display_name="Third", conversations={c3: "google"})
    post(client, "/contacts.merge", {"source_id": destination["id"], "destination_id": third["id"]}, 200)
    final = info(client, third["id"])
    assert [h["id"] for h in final["merge_history"]] == [source["id"], destination["id"]]
    assert set(final["conversations"]) == {c1, c2, c3}
    assert post(client, "/contacts.info", {"id": source["id"]}, 404)["merged_into"] == third["id"]


def test_merge_refuses_the_same_contact_and_missing_ids(client):
    contact = create(client)
    assert "message" in post(client, "/contacts.merge", {"source_id": contact["id"], "destination_id": contact["id"]}, 400)
    assert "destination_id" in post(client, "/contacts.merge", {"source_id": contact["id"]}, 400)["message"]


# --- import ------------------------------------------------------------------------------------


def test_import_of_the_seed_returns_every_contact_with_an_id(client):
    body = post(client, "/contacts.import", IMPORT_SEED, 201)
    assert [{k: c[k] for k in IMPORT_SEED[0]} for c in body["data"]] == IMPORT_SEED
    for contact in body["data"]:
        assert info(client, contact["id"])["display_name"] == contact["display_name"]


def test_an_import_of_1000_is_all_or_nothing(client):
    before = post(client, "/contacts.list", {}, 200)["pagination_data"]["total"]
    batch = [{"display_name": f"Imported {i:04d}", "via": {"email": f"{i}@example.org"}} for i in range(1000)]
    bad = batch[:517] + [{"display_name": "Bad", "via": {"email": ["not", "a", "string"]}}] + batch[518:]
    error = post(client, "/contacts.import", bad, 400)
    assert error["message"].startswith("[517].via.email") or "[517].via.email" in error["message"]
    assert post(client, "/contacts.list", {}, 200)["pagination_data"]["total"] == before

    body = post(client, "/contacts.import", batch, 201)
    assert len(body["data"]) == 1000 and len({c["id"] for c in body["data"]}) == 1000
    assert post(client, "/contacts.list", {}, 200)["pagination_data"]["total"] == before + 1000
    assert info(client, body["data"][999]["id"])["display_name"] == "Imported 0999"


# --- list --------------------------------------------------------------------------------------


@pytest.fixture
def listed(client):
    names = ["bob", "Alice", "carol", "alice", "Émile", "dave"] + [f"Person {i:03d}" for i in range(40)]
    contacts = post(client, "/contacts.import", [{"display_name": n} for n in names] + [{"title": "no name"}] * 5, 201)["data"]
    return contacts


def walk(client, page_size):
    pages, cursor = [], None
    while True:
        body = post(client, "/contacts.list", {"cursor": cursor, "page_size": page_size}, 200)
        pages.append(body)
        cursor = body["pagination_data"]["next_cursor"]
        if cursor is None:
            return pages


def test_walking_every_page_returns_each_contact_once_in_order(client, listed):
    pages = walk(client, 7)
    seen = [c for page in pages for c in page["data"]]
    assert len(seen) == len(listed) == 51
    assert sorted(c["id"] for c in seen) == sorted(c["id"] for c in listed)
    named = [c for c in seen if "display_name" in c]
    assert [c["display_name"].casefold() for c in named] == sorted(c["display_name"].casefold() for c in named)
    assert all("display_name" not in c for c in seen[len(named):])  # contacts without a name last
    assert pages[0]["pagination_data"]["previous_cursor"] is None
    assert all(p["pagination_data"]["total"] == 51 for p in pages)
    assert [len(p["data"]) for p in pages] == [7] * 7 + [2]

    # previous cursors walk back through the same pages
    back, cursor = [], pages[-1]["pagination_data"]["previous_cursor"]
    while cursor is not None:
        body = post(client, "/contacts.list", {"cursor": cursor, "page_size": 7}, 200)
        back.append(body)
        cursor = body["pagination_data"]["previous_cursor"]
    assert [[c["id"] for c in p["data"]] for p in reversed(back)] == [[c["id"] for c in p["data"]] for p in pages[:-1]]


def test_list_defaults_to_pages_of_20_and_refuses_bad_cursors(client, listed):
    body = post(client, "/contacts.list", {}, 200)
    assert len(body["data"]) == 20 and body["pagination_data"]["next_cursor"]
    for cursor in ("not-a-cursor", "bnVsbA", "x" * 10):
        assert "cursor" in post(client, "/contacts.list", {"cursor": cursor}, 400)["message"]
    assert post(client, "/contacts.list", {"page_size": 0}, 400)["message"]


def test_the_inboxs_list_call_null_cursor_and_page_size(client, listed):
    # DESIGN.md: the inbox lists with {"cursor": null, "pageSize": N}.
    response = client.post("/contacts.list", json={"cursor": None, "pageSize": 7})
    assert response.status_code == 200, response.data[:300]
    assert len(response.get_json()["data"]) == 7 and "X-Contacts-Ignored-Fields" not in response.headers
    both = client.post("/contacts.list", json={"cursor": None, "page_size": 3, "pageSize": 7})
    assert len(both.get_json()["data"]) == 3 and both.headers["X-Contacts-Ignored-Fields"] == "pageSize"


@pytest.mark.parametrize("name", ["李" * 250, "ß" * 400], ids=["250 CJK", "400 eszett"])
def test_a_cursor_after_a_contact_with_a_long_name_works(client, name):
    first_contact = create(client, display_name="a")
    long_named = create(client, display_name=name)
    last = create(client, title="no name")  # unnamed contacts come last
    page = post(client, "/contacts.list", {"page_size": 2}, 200)
    assert [c["id"] for c in page["data"]] == [first_contact["id"], long_named["id"]]
    cursor = page["pagination_data"]["next_cursor"]
    assert len(cursor) <= 1024
    following = post(client, "/contacts.list", {"cursor": cursor, "page_size": 2}, 200)
    assert [c["id"] for c in following["data"]] == [last["id"]]
    back = post(client, "/contacts.list", {"cursor": following["pagination_data"]["previous_cursor"], "page_size": 2}, 200)
    assert [c["id"] for c in back["data"]] == [first_contact["id"], long_named["id"]]


def test_a_page_stays_valid_when_its_anchor_is_deleted(client, listed):
    first = post(client, "/contacts.list", {"page_size": 5}, 200)
    anchor = first["data"][-1]["id"]
    post(client, "/contacts.delete", {"id": anchor}, 202)
    second = post(client, "/contacts.list", {"cursor": first["pagination_data"]["next_cursor"], "page_size": 5}, 200)
    full = [c["id"] for c in post(client, "/contacts.list", {"page_size": 100}, 200)["data"]]
    assert [c["id"] for c in second["data"]] == full[4:9]
