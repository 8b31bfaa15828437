"""Bad input, by hand: each case says what the client sends and what it must get back.

Rules every case keeps (DESIGN.md, model.py): malformed input is a 400 whose JSON ``message``
names the field (and whose ``field`` is its path); unknown ids are 404s; nothing is a 500; a
refused write writes nothing. All cases share one service on a real broker (topics of their own);
counts are compared before and after, so the cases do not depend on each other.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from api.app import MAX_BODY_BYTES, create_app
from contacts_streams import model
from contacts_streams.service import Service
from support import test_config

UNKNOWN = "0f3c1a5e-7d4b-4c2a-9e8f-1b2c3d4e5f60"


@pytest.fixture(scope="module")
def client(kafka, tmp_path_factory):
    unique = f"t{uuid.uuid4().hex[:12]}"
    config = test_config(kafka, unique, str(tmp_path_factory.mktemp("bad-input") / "state"))
    service = Service(config).start(wait=True, timeout=60)
    try:
        yield create_app(config, service).test_client()
    finally:
        service.close()


def refused(response, field: str | None, status: int = 400) -> str:
    """Assert a refusal: the status, a JSON message naming ``field``, and ``field`` itself; returns the message."""
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body.get("message"), str) and body["message"], body
    if field is not None:
        assert body.get("field") == field, body
        if field:
            assert field in body["message"], body
    return body["message"]


def total(client) -> int:
    response = client.post("/contacts.list", json={"page_size": 1})
    assert response.status_code == 200, response.data[:500]
    return response.get_json()["pagination_data"]["total"]


def create(client, **fields) -> dict:
    response = client.post("/contacts.create", json=fields)
    assert response.status_code == 201, response.data[:500]
    return response.get_json()


def info(client, contact_id: str) -> dict:
    response = client.post("/contacts.info", json={"id": contact_id})
    assert response.status_code == 200, response.data[:500]
    return response.get_json()


# --- bodies that are not what they should be -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{", b"{'display_name': 'x'}", b'{"display_name": "x",}', b"display_name=x", b"\xff\xfe\x00", b"\xc3\x28", b"[1, 2", b"\x0b", b"\x0c"],
    ids=["open brace", "single quotes", "trailing comma", "form", "bad BOM", "bad UTF-8", "open array", "vertical tab", "form feed"],
)
def test_a_body_that_is_not_json_is_a_400(client, raw):
    for path in ("/contacts.create", "/contacts.import", "/contacts.list", "/contacts.info", "/contacts.merge"):
        message = refused(client.post(path, data=raw, content_type="application/json"), None)
        assert "JSON" in message


def test_form_encoded_bodies_are_refused_and_json_without_the_header_is_read(client):
    message = refused(client.post("/contacts.create", data={"display_name": "Ada"}), None)
    assert "JSON" in message
    # The app reads JSON whatever the content type says (clients that forget the header work).
    response = client.post(
        "/contacts.create", data=json.dumps({"display_name": "Ada"}), content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 201 and response.get_json()["display_name"] == "Ada"
    response = client.post("/contacts.create", data=json.dumps({"display_name": "Ada"}), content_type="text/plain")
    assert response.status_code == 201


@pytest.mark.parametrize("raw", [b"", b"{}"], ids=["empty", "empty object"])
def test_an_empty_create_is_a_400(client, raw):
    before = total(client)
    message = refused(client.post("/contacts.create", data=raw, content_type="application/json"), "")
    assert "empty" in message
    assert total(client) == before


@pytest.mark.parametrize("path", ["/contacts.create", "/contacts.list", "/contacts.duplicates"])
def test_a_body_of_white_space_alone_is_not_json(client, path):
    # Only a body with nothing in it means "no body": white space alone is invalid JSON, so a
    # client (or a fuzzer) never gets an empty request read from it.
    before = total(client)
    message = refused(client.post(path, data=b"   \n", content_type="application/json"), None)
    assert "JSON" in message
    assert total(client) == before


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/contacts.create", b"[]"),
        ("/contacts.create", b"null"),
        ("/contacts.create", b'"Ada"'),
        ("/contacts.create", b"5"),
        ("/contacts.import", b'{"display_name": "Ada"}'),
        ("/contacts.info", b"[]"),
        ("/contacts.update", b"true"),
        ("/contacts.delete", b"null"),
        ("/contacts.merge", b"[1]"),
        ("/contacts.list", b"[]"),
    ],
)
def test_a_body_of_the_wrong_json_type_is_a_400_about_the_body(client, path, raw):
    message = refused(client.post(path, data=raw, content_type="application/json"), "")
    assert "request body" in message


def test_a_create_whose_only_fields_are_empty_maps_is_a_400(client):
    message = refused(client.post("/contacts.create", json={"via": {}, "metadata": {}}), "")
    assert "sets no field" in message


def test_a_body_over_the_limit_is_a_413_with_a_json_message(client):
    for path in ("/contacts.create", "/contacts.import", "/contacts.list"):
        huge = b'{"display_name": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
        response = client.post(path, data=huge, content_type="application/json")
        message = refused(response, None, status=413)
        assert str(MAX_BODY_BYTES) in message


def test_a_body_of_exactly_the_limit_is_read(client):
    payload = json.dumps({"display_name": "at the limit"}).encode()
    body = payload + b" " * (MAX_BODY_BYTES - len(payload))
    assert len(body) == MAX_BODY_BYTES
    response = client.post("/contacts.create", data=body, content_type="application/json")
    assert response.status_code == 201 and response.get_json()["display_name"] == "at the limit"


def test_a_large_body_under_the_limit_that_breaks_a_field_limit_is_a_400_naming_it(client):
    metadata = {f"k{i}": "x" * model.MAX_METADATA_STRING_LENGTH for i in range(8)}  # ~128 KiB > MAX_METADATA_BYTES
    message = refused(client.post("/contacts.create", json={"metadata": metadata}), "metadata")
    assert str(model.MAX_METADATA_BYTES) in message
    message = refused(client.post("/contacts.create", json={"title": "x" * (model.MAX_STRING_LENGTH + 1)}), "title")
    assert str(model.MAX_STRING_LENGTH) in message


# --- shapes: nesting, arrays, ids -----------------------------------------------------------------


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_metadata_nested_deeper_than_the_limit_is_refused_with_its_path(client):
    create(client, metadata=_nested(model.MAX_METADATA_DEPTH))  # the limit itself is fine
    path = "metadata" + ".k" * model.MAX_METADATA_DEPTH
    message = refused(client.post("/contacts.create", json={"metadata": _nested(model.MAX_METADATA_DEPTH + 1)}), path)
    assert str(model.MAX_METADATA_DEPTH) in message
    # Far deeper, still within what the JSON parser takes: the same refusal, the same path.
    raw = '{"metadata":' + '{"k":' * 500 + "1" + "}" * 501
    refused(client.post("/contacts.create", data=raw, content_type="application/json"), path)


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"metadata":' + '{"k":' * 100_000 + "1" + "}" * 100_001,
        '{"display_name":"x","via":' + "[" * 50_000 + "]" * 50_000 + "}",
    ],
    ids=["arrays", "metadata objects", "via arrays"],
)
def test_json_nested_past_the_parsers_recursion_limit_is_a_400_not_a_500(client, raw):
    # Python's json module raises RecursionError (not a ValueError) on deep nesting.
    for path in ("/contacts.create", "/contacts.import", "/contacts.list"):
        refused(client.post(path, data=raw.encode(), content_type="application/json"), None)


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"via": []}, "via"),
        ({"via": ["+1234567"]}, "via"),
        ({"address": []}, "address"),
        ({"conversations": []}, "conversations"),
        ({"metadata": []}, "metadata"),
        ({"metadata": {"a": [1]}}, "metadata.a"),
        ({"metadata": {"facebook": {"ids": []}}}, "metadata.facebook.ids"),
        ({"via": {"phones": ["1", "2"]}}, "via.phones"),
        ({"address": {"city": ["Cambridge"]}}, "address.city"),
        ({"display_name": ["Ada"]}, "display_name"),
        ({"timezone": [1]}, "timezone"),
    ],
)
def test_arrays_where_maps_or_strings_belong_are_refused_naming_the_path(client, fields, field):
    refused(client.post("/contacts.create", json=fields), field)


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"display_name": 5}, "display_name"),
        ({"display_name": None}, "display_name"),
        ({"display_name": True}, "display_name"),
        ({"timezone": True}, "timezone"),
        ({"timezone": model.MAX_TIMEZONE_OFFSET + 1}, "timezone"),
        ({"via": {"email": 5}}, "via.email"),
        ({"via": {"": "x"}}, "via"),
        ({"metadata": {"a": 2**63}}, "metadata.a"),
        ({"metadata": {"k" * (model.MAX_KEY_LENGTH + 1): 1}}, "metadata"),
        ({"metadata": {"a": "x" * (model.MAX_METADATA_STRING_LENGTH + 1)}}, "metadata.a"),
        ({"via": {str(i): "x" for i in range(model.MAX_VIA_KEYS + 1)}}, "via"),
    ],
)
def test_wrong_values_are_refused_naming_the_path(client, fields, field):
    refused(client.post("/contacts.create", json=fields), field)


@pytest.mark.parametrize("raw,field", [(b'{"timezone": NaN}', "timezone"), (b'{"metadata": {"a": Infinity}}', "metadata.a")])
def test_non_finite_numbers_are_refused(client, raw, field):
    refused(client.post("/contacts.create", data=raw, content_type="application/json"), field)


@pytest.mark.parametrize(
    "conversation_id",
    ["abc", "ea1cba21-2bd6-477c-9a40-59cd9bb96be", "ea1cba21-2bd6-477c-9a40-59cd9bb96befa", "ea1cba212bd6477c9a4059cd9bb96bef", "{ea1cba21-2bd6-477c-9a40-59cd9bb96bef}"],
)
def test_non_uuid_conversation_ids_are_refused(client, conversation_id):
    refused(client.post("/contacts.create", json={"conversations": {conversation_id: "facebook"}}), f"conversations.{conversation_id}")
    refused(client.post("/contacts.info", json={"conversation_id": conversation_id}), "conversation_id")


def test_a_conversation_without_a_source_is_refused(client):
    conversation = str(uuid.uuid4())
    refused(client.post("/contacts.create", json={"conversations": {conversation: ""}}), f"conversations.{conversation}")
    refused(client.post("/contacts.create", json={"conversations": {conversation: 1}}), f"conversations.{conversation}")


@pytest.mark.parametrize("value", ["not-a-uuid", "", 5, None, ["6b80b10c-ae6e-4995-844d-c56c4da11623"], UNKNOWN + " "])
def test_non_uuid_ids_are_refused(client, value):
    refused(client.post("/contacts.info", json={"id": value}), "id")
    refused(client.post("/contacts.update", json={"id": value, "title": "x"}), "id")
    refused(client.post("/contacts.delete", json={"id": value}), "id")
    refused(client.post("/contacts.merge", json={"source_id": value, "destination_id": UNKNOWN}), "source_id")
    refused(client.post("/contacts.merge", json={"source_id": UNKNOWN, "destination_id": value}), "destination_id")


def test_missing_ids_are_refused_naming_them(client):
    refused(client.post("/contacts.info", json={}), "id")
    refused(client.post("/contacts.update", json={"title": "x"}), "id")
    refused(client.post("/contacts.delete", json={}), "id")
    refused(client.post("/contacts.merge", json={"destination_id": UNKNOWN}), "source_id")
    refused(client.post("/contacts.merge", json={"source_id": UNKNOWN}), "destination_id")
    message = refused(client.post("/contacts.info", json={"id": UNKNOWN, "conversation_id": UNKNOWN}), "conversation_id")
    assert "not both" in message


# --- text -----------------------------------------------------------------------------------------

UNUSUAL_NAMES = [
    "Zoë Ångström-Łukasiewicz",
    "李小龙",
    "مرحبا بالعالم",  # right to left
    "e\u0301\u0301\u0301",  # combining marks
    "🙂👩🏽‍💻🏳️‍🌈",  # astral plane, ZWJ sequences
    "tab\there\nnew line\r\x1b[31mred\x7f\u0085\u2028\u2029",  # control characters (not U+0000)
    "\u200b\ufeffzero width and BOM",
    " leading and trailing ",
    "\U0010ffff\ufffe\uffff",  # noncharacters are still characters
    "x" * model.MAX_STRING_LENGTH,
    "🙂" * model.MAX_STRING_LENGTH,  # lengths count characters, not bytes
]


@pytest.mark.parametrize("name", UNUSUAL_NAMES, ids=range(len(UNUSUAL_NAMES)))
def test_unicode_and_control_characters_are_accepted_and_served_back_exactly(client, name):
    fields = {"display_name": name, "title": name, "via": {"k": name}, "address": {"city": name}, "metadata": {"k": {"n": name}}}
    contact = create(client, **fields)
    served = info(client, contact["id"])
    for key, value in fields.items():
        assert contact[key] == value
        assert served[key] == value


@pytest.mark.parametrize("name", UNUSUAL_NAMES[:9], ids=range(9))
def test_unicode_keys_are_served_back_exactly(client, name):
    contact = create(client, via={name: "v"}, metadata={name: {name: name}}, address={"city": name})
    served = info(client, contact["id"])
    assert served["via"] == {name: "v"}
    assert served["metadata"] == {name: {name: name}}
    assert served["address"] == {"city": name}


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"display_name": "a\x00b"}, "display_name"),
        ({"display_name": "\x00"}, "display_name"),
        ({"via": {"email": "a\x00@b"}}, "via.email"),
        ({"via": {"e\x00mail": "a@b"}}, "via"),
        ({"address": {"city": "\x00"}}, "address.city"),
        ({"metadata": {"a": {"b": "\x00"}}}, "metadata.a.b"),
        ({"metadata": {"a": {"b\x00": 1}}}, "metadata.a"),
        ({"conversations": {"ea1cba21-2bd6-477c-9a40-59cd9bb96bef": "face\x00book"}}, "conversations.ea1cba21-2bd6-477c-9a40-59cd9bb96bef"),
        ({"timezone": "+01:00\x00"}, "timezone"),
    ],
)
def test_u0000_is_refused_naming_the_field(client, fields, field):
    before = total(client)
    message = refused(client.post("/contacts.create", json=fields), field)
    assert "U+0000" in message
    assert total(client) == before


@pytest.mark.parametrize("raw,field", [(b'{"display_name": "\\ud800"}', "display_name"), (b'{"via": {"\\udfff": "x"}}', "via")])
def test_unpaired_surrogates_are_refused_naming_the_field(client, raw, field):
    message = refused(client.post("/contacts.create", data=raw, content_type="application/json"), field)
    assert "surrogate" in message


@pytest.mark.parametrize(
    "path,raw,status",
    [
        ("/contacts.create", b'{"display_name": "x", "\\ud800": 1}', 201),
        ("/contacts.create", b'{"title": "x", "address": {"\\udfff": "x"}}', 201),
        ("/contacts.import", b'[{"title": "x", "\\ud800nick": 1}]', 201),
        ("/contacts.update", b'{"id": "0f3c1a5e-7d4b-4c2a-9e8f-1b2c3d4e5f60", "\\ud800": 1}', 404),
        ("/contacts.delete", b'{"id": "0f3c1a5e-7d4b-4c2a-9e8f-1b2c3d4e5f60", "\\ud800": 1}', 404),
        ("/contacts.list", b'{"\\ud800": 1}', 200),
        ("/contacts.info", b'{"\\udbff\\u0041": 1}', 400),  # no id: a 400 that names id
        ("/contacts.merge", b'{"source_id": "0f3c1a5e-7d4b-4c2a-9e8f-1b2c3d4e5f60", "\\ud800": 1}', 400),
    ],
)
def test_an_unknown_key_with_an_unpaired_surrogate_is_ignored_and_named_escaped(client, path, raw, status):
    # The key goes back to the client in the header; a lone surrogate cannot be sent as it is.
    response = client.post(path, data=raw, content_type="application/json")
    assert response.status_code == status, response.data[:300]
    named = response.headers["X-Contacts-Ignored-Fields"]
    assert named.isascii() and "%5C" in named  # the surrogate's backslash escape, percent-encoded


def test_a_conversation_key_with_an_unpaired_surrogate_is_a_400_not_a_500(client):
    refused(client.post("/contacts.create", data=b'{"conversations": {"\\ud800": "facebook"}}', content_type="application/json"), None)


def test_map_keys_with_an_unpaired_surrogate_are_refused_naming_the_map(client):
    refused(client.post("/contacts.create", data=b'{"via": {"\\ud800": "x"}}', content_type="application/json"), "via")
    refused(client.post("/contacts.create", data=b'{"metadata": {"a": {"\\ud800": 1}}}', content_type="application/json"), "metadata.a")


# --- unknown fields ---------------------------------------------------------------------------------

IGNORED = "X-Contacts-Ignored-Fields"


def test_unknown_fields_are_ignored_and_named_in_a_header(client):
    # (sent as text: the test client's json= sorts keys, and the header keeps the body's order)
    raw = json.dumps({"nickname": "A", "age": 36, "display_name": "Ada", "address": {"addressLine1": "x", "city": "Paris"}})
    response = client.post("/contacts.create", data=raw, content_type="application/json")
    assert response.status_code == 201, response.data[:300]
    assert response.headers[IGNORED] == "nickname,age,address.addressLine1"
    contact = response.get_json()
    assert "nickname" not in contact and contact["address"] == {"city": "Paris"}
    assert info(client, contact["id"])["address"] == {"city": "Paris"}

    response = client.post("/contacts.import", json=[{"title": "x"}, {"title": "y", "nickname": "A"}])
    assert response.status_code == 201 and response.headers[IGNORED] == "[1].nickname"
    response = client.post("/contacts.update", json={"id": contact["id"], "displayName": "Grace", "title": "Admiral"})
    assert response.status_code == 202 and response.headers[IGNORED] == "displayName"
    assert info(client, contact["id"])["title"] == "Admiral" and info(client, contact["id"])["display_name"] == "Ada"
    response = client.post("/contacts.list", json={"page_size": 5, "sort": "name"})
    assert response.status_code == 200 and response.headers[IGNORED] == "sort"
    response = client.post("/contacts.info", json={"id": contact["id"], "expand": True})
    assert response.status_code == 200 and response.headers[IGNORED] == "expand"
    other = create(client, display_name="to delete")
    response = client.post("/contacts.delete", json={"id": other["id"], "force": True})
    assert response.status_code == 202 and response.headers[IGNORED] == "force"


def test_no_header_when_nothing_was_ignored(client):
    response = client.post("/contacts.create", json={"display_name": "plain"})
    assert response.status_code == 201 and IGNORED not in response.headers
    assert IGNORED not in client.post("/contacts.list", json={"cursor": None, "page_size": 3}).headers


def test_a_body_of_only_unknown_fields_sets_nothing_and_is_a_400_that_says_so(client):
    before = total(client)
    response = client.post("/contacts.create", json={"displayName": "Ada"})
    message = refused(response, "")
    assert "displayName" in message and response.headers[IGNORED] == "displayName"
    assert total(client) == before


def test_known_fields_with_wrong_types_stay_400s_next_to_unknown_ones(client):
    before = total(client)
    response = client.post("/contacts.create", json={"display_name": 5, "nickname": "A"})
    refused(response, "display_name")
    refused(client.post("/contacts.create", json={"title": "x", "address": {"city": 5, "zip": "1"}}), "address.city")
    refused(client.post("/contacts.list", json={"pageSize": "20"}), "pageSize")
    assert total(client) == before


def test_the_ignored_fields_header_is_bounded(client):
    body = {"display_name": "many unknown"} | {f"unknown_field_{i:04d}": i for i in range(500)}
    response = client.post("/contacts.create", json=body)
    assert response.status_code == 201
    named = response.headers[IGNORED]
    assert len(named) <= 1024
    parts = named.split(",")
    assert parts[0] == "unknown_field_0000" and parts[-1] == f"+{500 - (len(parts) - 1)}"


def test_a_merge_dry_run_is_answered_not_done(client):
    source, destination = create(client, display_name="s"), create(client, display_name="d")
    body = {"source_id": source["id"], "destination_id": destination["id"]}
    response = client.post("/contacts.merge", json={**body, "dry_run": True})
    assert response.status_code == 200 and response.get_json()["conflicts"] == [{"field": "display_name", "kept": "d", "lost": "s"}]
    assert info(client, source["id"])["display_name"] == "s"  # nothing was merged
    refused(client.post("/contacts.merge", json={**body, "dry_run": "true"}), "dry_run")


@pytest.mark.parametrize("field", model.SERVED_FIELDS)
def test_served_fields_sent_by_a_client_are_accepted_and_ignored(client, field):
    value = {"id": UNKNOWN, "created_at": "2021-11-16T13:21:03.580Z", "updated_at": "2021-11-16T13:21:03.580Z", "merge_history": []}[field]
    response = client.post("/contacts.create", json={"display_name": "Ada", field: value})
    assert response.status_code == 201, response.data[:300]
    created = response.get_json()
    assert created[field] != value if field != "merge_history" else field not in created
    assert IGNORED not in response.headers  # known fields: not named
    contact = create(client, display_name="served fields")
    if field != "id":
        response = client.post("/contacts.update", json={"id": contact["id"], field: value, "title": "x"})
        assert response.status_code == 202 and IGNORED not in response.headers
    served = info(client, contact["id"])
    assert served["created_at"] == contact["created_at"] and served["merge_history"] == []


def test_a_fetched_contact_can_be_sent_back_to_update_as_it_is(client):
    contact = create(client, display_name="Round trip", via={"email": "a@b.org"}, address={"city": "Paris"})
    fetched = info(client, contact["id"])
    fetched["title"] = "Edited"
    response = client.post("/contacts.update", json=fetched)
    assert response.status_code == 202 and IGNORED not in response.headers
    served = info(client, contact["id"])
    assert served["title"] == "Edited" and served["created_at"] == contact["created_at"]
    assert {k: v for k, v in served.items() if k not in ("title", "updated_at")} == {
        k: v for k, v in fetched.items() if k not in ("title", "updated_at")
    }


# --- import -----------------------------------------------------------------------------------------


def test_an_import_of_the_maximum_is_accepted_whole(client):
    before = total(client)
    batch = [{"display_name": f"import {i:05d}", "via": {"n": str(i)}} for i in range(model.MAX_IMPORT)]
    response = client.post("/contacts.import", json=batch)
    assert response.status_code == 201, response.data[:500]
    data = response.get_json()["data"]
    assert len(data) == model.MAX_IMPORT
    assert [c["display_name"] for c in data] == [c["display_name"] for c in batch]
    assert len({c["id"] for c in data}) == model.MAX_IMPORT
    assert total(client) == before + model.MAX_IMPORT
    assert info(client, data[-1]["id"])["via"] == {"n": str(model.MAX_IMPORT - 1)}
    # Every one of them is listed, paging with the cursors the service gives out.
    listed, cursor = {}, None
    while True:
        page = client.post("/contacts.list", json={"cursor": cursor, "page_size": model.MAX_PAGE_SIZE}).get_json()
        listed.update((c["id"], c) for c in page["data"])
        cursor = page["pagination_data"]["next_cursor"]
        if cursor is None:
            break
    assert len(listed) == page["pagination_data"]["total"]
    assert all(listed[c["id"]] == c for c in data)


def test_an_import_of_nothing_is_a_201_with_no_data(client):
    before = total(client)
    response = client.post("/contacts.import", json=[])
    assert response.status_code == 201, response.data[:300]
    assert response.get_json() == {"data": []}
    assert total(client) == before


def test_an_import_over_the_maximum_is_refused_and_writes_nothing(client):
    before = total(client)
    batch = [{"display_name": f"over {i}"} for i in range(model.MAX_IMPORT + 1)]
    message = refused(client.post("/contacts.import", json=batch), "")
    assert str(model.MAX_IMPORT) in message and str(model.MAX_IMPORT + 1) in message
    assert total(client) == before


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"display_name": 5}, "[3].display_name"),
        ({}, "[3]"),
        ("Ada", "[3]"),
        ({"metadata": {"a": [1]}}, "[3].metadata.a"),
        ({"via": {"email": "\x00"}}, "[3].via.email"),
        ({"id": UNKNOWN}, "[3]"),  # ignored: the element sets nothing
    ],
)
def test_an_import_with_one_bad_element_refuses_the_whole_batch_naming_it(client, bad, field):
    before = total(client)
    batch = [{"display_name": f"good {i}"} for i in range(6)]
    batch[3] = bad
    refused(client.post("/contacts.import", json=batch), field)
    assert total(client) == before


def test_an_import_giving_one_conversation_twice_is_a_409_and_writes_nothing(client):
    before = total(client)
    conversation = str(uuid.uuid4())
    batch = [{"conversations": {conversation: "facebook"}}, {"title": "x"}, {"conversations": {conversation.upper(): "sms"}}]
    refused(client.post("/contacts.import", json=batch), f"[2].conversations.{conversation}", status=409)
    assert total(client) == before


def test_an_import_taking_a_conversation_that_belongs_to_a_contact_is_a_409_and_writes_nothing(client):
    conversation = str(uuid.uuid4())
    owner = create(client, conversations={conversation: "facebook"})
    before = total(client)
    batch = [{"title": "x"}, {"title": "y"}, {"conversations": {conversation: "facebook"}}]
    message = refused(client.post("/contacts.import", json=batch), f"[2].conversations.{conversation}", status=409)
    assert owner["id"] in message
    assert total(client) == before
    refused(client.post("/contacts.create", json={"conversations": {conversation: "x"}}), f"conversations.{conversation}", status=409)


# --- unknown ids, merges ----------------------------------------------------------------------------


def test_unknown_ids_are_404_with_a_message_naming_them(client):
    contact = create(client, display_name="known")
    for path, payload in [
        ("/contacts.info", {"id": UNKNOWN}),
        ("/contacts.update", {"id": UNKNOWN, "title": "x"}),
        ("/contacts.delete", {"id": UNKNOWN}),
        ("/contacts.merge", {"source_id": UNKNOWN, "destination_id": contact["id"]}),
        ("/contacts.merge", {"source_id": contact["id"], "destination_id": UNKNOWN}),
        ("/contacts.info", {"id": UNKNOWN.upper()}),
    ]:
        message = refused(client.post(path, json=payload), None, status=404)
        assert UNKNOWN in message
        assert "merged_into" not in client.post(path, json=payload).get_json()
    message = refused(client.post("/contacts.info", json={"conversation_id": UNKNOWN}), None, status=404)
    assert UNKNOWN in message
    assert info(client, contact["id"])["display_name"] == "known"  # the failed merges left it alone


def test_a_deleted_contact_is_404_everywhere(client):
    contact = create(client, display_name="to delete")
    assert client.post("/contacts.delete", json={"id": contact["id"]}).status_code == 202
    for path, payload in [
        ("/contacts.info", {"id": contact["id"]}),
        ("/contacts.update", {"id": contact["id"], "title": "x"}),
        ("/contacts.delete", {"id": contact["id"]}),
    ]:
        refused(client.post(path, json=payload), None, status=404)


def test_merging_a_contact_with_itself_is_a_400(client):
    contact = create(client, display_name="self")
    before = total(client)
    for other in (contact["id"], contact["id"].upper()):
        message = refused(client.post("/contacts.merge", json={"source_id": contact["id"], "destination_id": other}), "destination_id")
        assert "itself" in message
    served = info(client, contact["id"])
    assert served["merge_history"] == [] and served["updated_at"] == contact["updated_at"]
    assert total(client) == before


# --- list ---------------------------------------------------------------------------------------------


def test_list_answers_200(client):
    response = client.post("/contacts.list", json={})
    assert response.status_code == 200, response.data[:500]
    assert response.get_json()["pagination_data"]["total"] >= 0


@pytest.mark.parametrize("page_size", [0, -1, model.MAX_PAGE_SIZE + 1, "20", 20.5, True, [20], {"n": 20}])
def test_a_bad_page_size_is_a_400(client, page_size):
    refused(client.post("/contacts.list", json={"page_size": page_size}), "page_size")


@pytest.mark.parametrize("page_size", [1, model.MAX_PAGE_SIZE, None])
def test_page_size_at_the_limits_is_fine(client, page_size):
    response = client.post("/contacts.list", json={"page_size": page_size})
    assert response.status_code == 200, response.data[:500]
    assert len(response.get_json()["data"]) <= (page_size or model.DEFAULT_PAGE_SIZE)


def _cursor(direction: bytes, key: bytes) -> str:
    return base64.urlsafe_b64encode(direction + key).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "forged",
        "!!!",
        "A",
        "AAAA",
        "é",
        "\x00",
        _cursor(b"x", b"\x02" + UNKNOWN.encode()),  # a direction this service does not use
        _cursor(b"n", b""),  # a direction and nothing else
        _cursor(b"n", b"\x01" + b"name without an id"),
        _cursor(b"p", b"\x01name\x00" + b"not an id"),
        _cursor(b"n", b"\x03" + UNKNOWN.encode()),
        "x" * (model.MAX_CURSOR_LENGTH + 1),
    ],
)
def test_a_forged_cursor_is_a_400(client, cursor):
    message = refused(client.post("/contacts.list", json={"cursor": cursor}), "cursor")
    assert "cursor" in message


@pytest.mark.parametrize("cursor", [5, True, ["x"], {"a": 1}])
def test_a_cursor_that_is_not_a_string_is_a_400(client, cursor):
    refused(client.post("/contacts.list", json={"cursor": cursor}), "cursor")


def test_a_cursor_the_service_gave_out_works_and_a_tampered_one_does_not(client):
    for i in range(3):
        create(client, display_name=f"cursor {i}")
    first = client.post("/contacts.list", json={"page_size": 1}).get_json()
    cursor = first["pagination_data"]["next_cursor"]
    assert cursor
    assert client.post("/contacts.list", json={"cursor": cursor, "page_size": 1}).status_code == 200
    refused(client.post("/contacts.list", json={"cursor": cursor[:-3]}), "cursor")
    refused(client.post("/contacts.list", json={"cursor": "z" + cursor[1:]}), "cursor")


# --- the HTTP edges ------------------------------------------------------------------------------------


def test_wrong_methods_and_unknown_paths_answer_json(client):
    response = client.get("/contacts.create")
    assert response.status_code == 405 and isinstance(response.get_json()["message"], str)
    response = client.post("/contacts.nothing", json={})
    assert response.status_code == 404 and isinstance(response.get_json()["message"], str)
    response = client.post("/actuator/health")
    assert response.status_code == 405 and isinstance(response.get_json()["message"], str)
