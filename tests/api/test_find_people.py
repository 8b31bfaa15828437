"""Finding people through HTTP on the real broker and store: lookup, search, duplicates and the
merge dry run, with the bad input each refuses."""

from __future__ import annotations

import uuid

import pytest

from support import module_client, post


@pytest.fixture(scope="module")
def api(kafka, tmp_path_factory):
    """One service (region DE) for the module: these tests read, and each uses its own names."""
    yield from module_client(kafka, "find", str(tmp_path_factory.mktemp("state")), default_phone_region="DE")


def create(client, **fields):
    return post(client, "/contacts.create", fields, 201)


def ids(contacts):
    return [c["id"] for c in contacts]


# --- lookup ------------------------------------------------------------------------------------------


def test_lookup_finds_a_phone_however_written_and_an_email_whatever_its_case(api):
    grace = create(api, display_name="Grace Lookup", via={"phone": "+49 170 7654321", "email": "grace.lookup@example.org"})
    assert ids(post(api, "/contacts.lookup", {"via": {"phone": "0170 7654321"}}, 200)["data"]) == [grace["id"]]
    assert ids(post(api, "/contacts.lookup", {"via": {"email": " Grace.Lookup@Example.ORG "}}, 200)["data"]) == [grace["id"]]
    both = {"phone": "0049 170 7654321", "email": "GRACE.LOOKUP@example.org"}
    assert ids(post(api, "/contacts.lookup", {"via": both}, 200)["data"]) == [grace["id"]]
    # every key must match
    assert post(api, "/contacts.lookup", {"via": {"phone": "0170 7654321", "email": "other@example.org"}}, 200)["data"] == []
    # the stored values stay as sent
    assert post(api, "/contacts.lookup", {"via": {"phone": "0170 7654321"}}, 200)["data"][0]["via"]["phone"] == "+49 170 7654321"


def test_lookup_by_any_via_key_and_never_deleted_or_merged_away_contacts(api):
    a = create(api, display_name="A", via={"Telegram": "@Lookup_A"})
    b = create(api, display_name="B", via={"telegram": "@lookup_a "})
    found = post(api, "/contacts.lookup", {"via": {"telegram": "@LOOKUP_A"}}, 200)["data"]
    assert sorted(ids(found)) == sorted([a["id"], b["id"]])
    post(api, "/contacts.delete", {"id": b["id"]}, 202)
    assert ids(post(api, "/contacts.lookup", {"via": {"telegram": "@lookup_a"}}, 200)["data"]) == [a["id"]]
    c = create(api, display_name="C", via={"telegram": "@lookup_a"})
    post(api, "/contacts.merge", {"source_id": a["id"], "destination_id": c["id"]}, 200)
    assert ids(post(api, "/contacts.lookup", {"via": {"telegram": "@lookup_a"}}, 200)["data"]) == [c["id"]]


def test_lookup_follows_updates(api):
    contact = create(api, display_name="Moving", via={"email": "old.lookup@example.org"})
    post(api, "/contacts.update", {"id": contact["id"], "via": {"email": "new.lookup@example.org"}}, 202)
    assert post(api, "/contacts.lookup", {"via": {"email": "old.lookup@example.org"}}, 200)["data"] == []
    assert ids(post(api, "/contacts.lookup", {"via": {"email": "new.lookup@example.org"}}, 200)["data"]) == [contact["id"]]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "via"),
        ({"via": {}}, "via"),
        ({"via": "x"}, "via"),
        ({"via": {"email": 5}}, "via.email"),
        ({"via": {"email": None}}, "via.email"),
        ({"via": {"": "x"}}, "via"),
        ([], ""),
    ],
)
def test_lookup_refuses_bad_input_naming_the_field(api, body, field):
    assert post(api, "/contacts.lookup", body, 400)["field"] == field


def test_lookup_takes_unknown_keys_as_free_form(api):
    assert post(api, "/contacts.lookup", {"via": {"no-such-key": "nothing"}}, 200) == {"data": []}


# --- search --------------------------------------------------------------------------------------------


def search_all(api, query, page_size=2):
    found, cursor = [], None
    for _ in range(100):
        body = post(api, "/contacts.search", {"query": query, "cursor": cursor, "page_size": page_size}, 200)
        found += body["data"]
        cursor = body["pagination_data"]["next_cursor"]
        if cursor is None:
            return found, body["pagination_data"]
    raise AssertionError("search paging never ended")


def test_search_by_name_prefix_exact_first_then_by_name_case_and_accent_insensitive(api):
    names = ["Zyx Bórges", "Zyxa Adams", "zyx Adams", "Zyxabc Aaron", "Zyx"]
    made = {name: create(api, display_name=name)["id"] for name in names}
    found, pagination = search_all(api, "ZYX")
    assert [c["display_name"] for c in found] == ["Zyx", "zyx Adams", "Zyx Bórges", "Zyxa Adams", "Zyxabc Aaron"]
    assert pagination["total"] == 5
    assert ids(search_all(api, "zyx borges")[0]) == [made["Zyx Bórges"]]
    assert ids(search_all(api, "borg zy")[0]) == [made["Zyx Bórges"]]


def test_search_by_email_organization_and_phone_digits(api):
    contact = create(api, display_name="Q", organization_name="Qwertz Labs", via={"email": "Qwertz.Person@Example.org", "phone": "+49 170 555 0199"})
    for query in ("qwertz.person", "qwertz.person@example.org", "QWERTZ", "labs", "5550199", "0199", "170 555 0199", "+49 170 5550199", "person"):
        assert contact["id"] in ids(search_all(api, query)[0]), query
    for query in ("example.org", "example", "0198"):
        assert contact["id"] not in ids(search_all(api, query)[0]), query


def test_search_forgets_deleted_and_renamed_contacts(api):
    contact = create(api, display_name="Vanishing Wxyz")
    post(api, "/contacts.update", {"id": contact["id"], "display_name": "Appearing Wxyz"}, 202)
    assert search_all(api, "vanishing")[0] == []
    assert ids(search_all(api, "appearing")[0]) == [contact["id"]]
    post(api, "/contacts.delete", {"id": contact["id"]}, 202)
    assert search_all(api, "wxyz")[0] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x" * 257}, "query"),
        ({"query": "x", "cursor": "not a cursor"}, "cursor"),
        ({"query": "x", "cursor": 5}, "cursor"),
        ({"query": "x", "page_size": 0}, "page_size"),
    ],
)
def test_search_refuses_bad_input_naming_the_field(api, body, field):
    assert post(api, "/contacts.search", body, 400)["field"] == field


def test_a_search_cursor_works_only_for_its_query(api):
    for name in ("Cursorq One", "Cursorq Two", "Cursorq Three"):
        create(api, display_name=name)
    cursor = post(api, "/contacts.search", {"query": "cursorq", "page_size": 1}, 200)["pagination_data"]["next_cursor"]
    assert cursor and len(cursor) <= 1024
    assert post(api, "/contacts.search", {"query": "other", "cursor": cursor}, 400)["field"] == "cursor"
    assert post(api, "/contacts.search", {"query": "x" * 256}, 200)["data"] == []


# --- duplicates ----------------------------------------------------------------------------------------------


def test_duplicates_group_contacts_sharing_an_identity_with_reasons_and_conflicts(api):
    a = create(api, display_name="Dup Ann", via={"email": "dup.ann@example.org", "phone": "+49 30 1234567"})
    b = create(api, display_name="Dup Anne", via={"email": " DUP.ANN@example.org", "phone": "030 1234567"})
    c = create(api, display_name="Dup Other", via={"phone": "030 1234567"})
    groups = post(api, "/contacts.duplicates", {"id": a["id"]}, 200)["data"]
    by_members = {tuple(sorted(ids(g["contacts"]))): g for g in groups}
    pair = by_members[tuple(sorted([a["id"], b["id"]]))]
    # found by the email; the phone they share with a third contact is a reason too
    assert pair["reasons"] == [{"kind": "email", "value": "dup.ann@example.org"}, {"kind": "phone", "value": "+49301234567"}]
    assert {"field": "display_name", "values": ["Dup Ann", "Dup Anne"]} in pair["conflicts"] or {"field": "display_name", "values": ["Dup Anne", "Dup Ann"]} in pair["conflicts"]
    trio = by_members[tuple(sorted([a["id"], b["id"], c["id"]]))]
    assert trio["reasons"] == [{"kind": "phone", "value": "+49301234567"}]
    # paging over all groups finds both, each once
    seen, cursor = [], None
    for _ in range(100):
        body = post(api, "/contacts.duplicates", {"cursor": cursor, "page_size": 1}, 200)
        seen += [tuple(sorted(ids(g["contacts"]))) for g in body["data"]]
        cursor = body["pagination_data"]["next_cursor"]
        if cursor is None:
            break
    assert seen.count(tuple(sorted([a["id"], b["id"]]))) == 1 and seen.count(tuple(sorted([a["id"], b["id"], c["id"]]))) == 1
    # a merge resolves them
    post(api, "/contacts.merge", {"source_id": b["id"], "destination_id": a["id"]}, 200)
    post(api, "/contacts.merge", {"source_id": c["id"], "destination_id": a["id"]}, 200)
    assert post(api, "/contacts.duplicates", {"id": a["id"]}, 200)["data"] == []


@pytest.mark.parametrize("body, field", [({"id": "x"}, "id"), ({"cursor": "nope"}, "cursor"), ({"page_size": "2"}, "page_size"), ("x", "")])
def test_duplicates_refuse_bad_input_naming_the_field(api, body, field):
    assert post(api, "/contacts.duplicates", body, 400)["field"] == field


def test_duplicates_of_an_unknown_contact_is_a_404(api):
    assert "does not exist" in post(api, "/contacts.duplicates", {"id": str(uuid.uuid4())}, 404)["message"]


# --- merge dry run ------------------------------------------------------------------------------------------


def test_a_merge_dry_run_answers_what_would_happen_and_writes_nothing(api):
    destination = create(api, display_name="Dry Dest", via={"email": "dry@example.org"})
    source = create(api, display_name="Dry Source", title="Dr", via={"email": "dry.source@example.org"})
    body = {"source_id": source["id"], "destination_id": destination["id"], "dry_run": True}
    preview = post(api, "/contacts.merge", body, 200)
    assert preview["destination"]["title"] == "Dr" and preview["destination"]["display_name"] == "Dry Dest"
    assert preview["destination"]["merge_history"][-1]["id"] == source["id"]
    assert {"field": "display_name", "kept": "Dry Dest", "lost": "Dry Source"} in preview["conflicts"]
    assert {"field": "via.email", "kept": "dry@example.org", "lost": "dry.source@example.org"} in preview["conflicts"]
    assert post(api, "/contacts.info", {"id": source["id"]}, 200)["display_name"] == "Dry Source"
    assert "title" not in post(api, "/contacts.info", {"id": destination["id"]}, 200)
    assert post(api, "/contacts.merge", {**body, "dry_run": "yes"}, 400)["field"] == "dry_run"
    assert "merged_into" not in post(api, "/contacts.merge", {**body, "source_id": str(uuid.uuid4())}, 404)
