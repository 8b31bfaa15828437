"""contacts.import with upsert_by through HTTP on the real broker: one live contact with the
identity is updated key by key, the rest created, all or none."""

from __future__ import annotations


import pytest

from support import module_client, post


@pytest.fixture(scope="module")
def api(kafka, tmp_path_factory):
    yield from module_client(kafka, "upsert", str(tmp_path_factory.mktemp("state")), default_phone_region="DE")


def total(api):
    return post(api, "/contacts.list", {"page_size": 1}, 200)["pagination_data"]["total"]


def test_the_same_import_twice_with_upsert_creates_nothing_new(api):
    rows = [
        {"display_name": "Up Ada", "via": {"email": "up.ada@example.org"}, "address": {"city": "London"}},
        {"display_name": "Up Alan", "via": {"email": "up.alan@example.org", "phone": "030 7654321"}},
    ]
    first = post(api, "/contacts.import", {"contacts": rows, "upsert_by": "email"}, 201)
    assert (first["created"], first["updated"]) == (2, 0)
    count = total(api)
    rows[0] = {"via": {"email": " UP.Ada@Example.org"}, "address": {"country": "GB"}, "title": "Countess"}
    second = post(api, "/contacts.import", {"contacts": rows, "upsert_by": "email"}, 201)
    assert (second["created"], second["updated"]) == (0, 2)
    assert [c["id"] for c in second["data"]] == [c["id"] for c in first["data"]]
    assert total(api) == count
    ada = post(api, "/contacts.info", {"id": first["data"][0]["id"]}, 200)
    # key by key, like contacts.update: the name and city stay, the email is as sent last
    assert ada["display_name"] == "Up Ada" and ada["title"] == "Countess"
    assert ada["address"] == {"city": "London", "country": "GB"} and ada["via"]["email"] == " UP.Ada@Example.org"
    by_phone = post(api, "/contacts.import", {"contacts": [{"via": {"phone": "+49 30 7654321"}, "gender": "m"}], "upsert_by": "phone"}, 201)
    assert by_phone["data"][0]["id"] == first["data"][1]["id"] and by_phone["data"][0]["gender"] == "m"
    # without upsert_by the same rows are new contacts; the array form answers as the platform's did
    plain = post(api, "/contacts.import", rows, 201)
    assert set(plain) == {"data"} and total(api) == count + 2
    counted = post(api, "/contacts.import", {"contacts": rows[:1]}, 201)
    assert (counted["created"], counted["updated"]) == (1, 0)


def test_two_elements_with_one_identity_make_one_contact(api):
    rows = [{"display_name": "Twice", "via": {"email": "twice.in@example.org"}}, {"title": "Dr", "via": {"email": "TWICE.in@example.org"}}]
    answer = post(api, "/contacts.import", {"contacts": rows, "upsert_by": "email"}, 201)
    assert (answer["created"], answer["updated"]) == (1, 1)
    assert answer["data"][0]["id"] == answer["data"][1]["id"]
    assert answer["data"][1]["display_name"] == "Twice" and answer["data"][1]["title"] == "Dr"
    assert len(post(api, "/contacts.lookup", {"via": {"email": "twice.in@example.org"}}, 200)["data"]) == 1


def test_an_ambiguous_identity_is_a_409_naming_the_element_and_nothing_is_written(api):
    post(api, "/contacts.create", {"via": {"email": "two.of@example.org"}}, 201)
    post(api, "/contacts.create", {"via": {"email": "Two.Of@example.org"}}, 201)
    count = total(api)
    rows = [{"display_name": "Fine", "via": {"email": "fine.one@example.org"}}, {"via": {"email": "two.of@example.org"}, "title": "x"}]
    conflict = post(api, "/contacts.import", {"contacts": rows, "upsert_by": "email"}, 409)
    assert conflict["field"] == "[1].via.email" and "2 contacts" in conflict["message"]
    assert total(api) == count and post(api, "/contacts.lookup", {"via": {"email": "fine.one@example.org"}}, 200)["data"] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"contacts": [{"title": "x"}], "upsert_by": "telegram"}, "upsert_by"),
        ({"upsert_by": "email"}, ""),
        ({"contacts": {"title": "x"}}, "contacts"),
        ({"contacts": [{"title": "x"}, {"via": {"email": 5}}], "upsert_by": "email"}, "[1].via.email"),
        ("x", ""),
    ],
)
def test_upsert_refuses_bad_input_naming_the_field(api, body, field):
    assert post(api, "/contacts.import", body, 400)["field"] == field


def test_prefer_return_minimal_answers_counts_and_ids_and_the_contacts_are_readable(api):
    rows = [
        {"display_name": "Min Ada", "via": {"email": "min.ada@example.org"}},
        {"display_name": "Min Alan", "via": {"email": "min.alan@example.org"}},
        {"title": "Dr", "via": {"email": "MIN.ada@example.org"}},
    ]
    body = {"contacts": rows, "upsert_by": "email"}
    headers = {"Prefer": "return=minimal", "Idempotency-Key": "minimal-import-1"}
    response = api.post("/contacts.import", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    assert set(answer) == {"created", "updated", "ids"}
    assert (answer["created"], answer["updated"]) == (2, 1)
    ada, alan, again = answer["ids"]
    assert again == ada and alan != ada
    assert response.headers["Preference-Applied"] == "return=minimal"
    assert response.headers["X-Contacts-Position"]
    # The answer came after this replica's store applied the write: a read sees it at once.
    info = post(api, "/contacts.info", {"id": ada}, 200)
    assert info["display_name"] == "Min Ada" and info["title"] == "Dr"
    assert post(api, "/contacts.info", {"id": alan}, 200)["display_name"] == "Min Alan"
    # A retry with the same key answers the same contacts, minimal again; nothing new is made.
    count = total(api)
    retried = api.post("/contacts.import", json=body, headers=headers)
    assert retried.status_code == 201 and retried.get_json() == answer
    assert total(api) == count


@pytest.mark.parametrize(
    "prefer, minimal",
    [
        ("return=minimal", True),
        ("respond-async, RETURN = \"minimal\"; foo=bar", True),
        ("return=representation", False),
        ("handling=lenient", False),
        (None, False),
    ],
)
def test_only_a_prefer_for_a_minimal_return_drops_the_contacts_from_the_answer(api, prefer, minimal):
    headers = {"Prefer": prefer} if prefer is not None else {}
    response = api.post("/contacts.import", json=[{"display_name": "Prefer test"}], headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    if minimal:
        assert set(answer) == {"created", "updated", "ids"} and answer["created"] == 1
        assert response.headers.get("Preference-Applied") == "return=minimal"
    else:
        # the array form keeps the platform's shape
        assert set(answer) == {"data"} and answer["data"][0]["display_name"] == "Prefer test"
        assert "Preference-Applied" not in response.headers
