"""Unit and property tests of contacts_streams.model: validation, update, merge, ids, sort order."""

from __future__ import annotations

import copy
import json
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import CREATE_PAYLOADS
from support import CONVERSATION_A, CONVERSATION_B
from support import SEED_CONTACT as SEED

from contacts_streams import model
from contacts_streams.model import (
    ADDRESS_FIELDS,
    CONTACT_FIELDS,
    DEFAULT_PAGE_SIZE,
    MAX_IMPORT,
    MAX_PAGE_SIZE,
    ValidationError,
    apply_update,
    contact_id_for_conversation,
    default_display_name,
    iso_to_millis,
    merge_contacts,
    millis_to_iso,
    new_contact,
    now_ms,
    sort_key,
    validate_create,
    validate_id,
    validate_import,
    validate_info,
    validate_list,
    validate_merge,
    validate_update,
)

CONTACT_ID = "6b80b10c-ae6e-4995-844d-c56c4da11623"
OTHER_ID = "c564cea4-a96f-4ebb-a220-3fb81b6ad522"
T0 = 1637068863580  # 2021-11-16T13:21:03.580Z
T1 = T0 + 60_000



def error_of(function, payload) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        function(payload)
    err = caught.value
    assert str(err) == err.message
    assert err.field in err.message, (err.field, err.message)
    return err


def field_of(function, payload) -> str:
    return error_of(function, payload).field


# --- validate_create ----------------------------------------------------------------------------


def test_the_seed_payload_is_valid_and_kept_as_sent():
    fields = validate_create(copy.deepcopy(SEED))
    assert fields == SEED
    assert list(fields) == [name for name in CONTACT_FIELDS if name in SEED]


def test_create_normalizes_conversation_ids_to_lowercase():
    fields = validate_create({"conversations": {CONVERSATION_A.upper(): "facebook"}})
    assert fields == {"conversations": {CONVERSATION_A: "facebook"}}


def test_create_drops_empty_maps_and_refuses_a_payload_that_sets_nothing():
    assert validate_create({"title": "x", "via": {}, "metadata": {}}) == {"title": "x"}
    err = error_of(validate_create, {"via": {}, "address": {}})
    assert err.field == ""


@pytest.mark.parametrize("payload", [None, [], "x", 3, True, [SEED]])
def test_create_refuses_a_body_that_is_not_an_object(payload):
    err = error_of(validate_create, payload)
    assert err.field == ""
    assert "JSON object" in err.message


def test_create_refuses_the_empty_payload():
    err = error_of(validate_create, {})
    assert err.field == ""
    assert "empty" in err.message


def test_create_ignores_unknown_fields_and_names_them_all():
    ignored: list[str] = []
    assert validate_create({"display_name": "x", "nickname": "y", "age": 3}, ignored) == {"display_name": "x"}
    assert ignored == ["nickname", "age"]
    assert validate_create({"display_name": "x", "nickname": "y"}) == {"display_name": "x"}  # no list: fine too


def test_create_of_only_unknown_fields_sets_nothing_and_says_what_it_ignored():
    ignored: list[str] = []
    err = error_of(lambda payload: validate_create(payload, ignored), {"displayName": "Ada", "organizationName": "x"})
    assert err.field == ""
    assert "sets no field" in err.message and "displayName" in err.message
    assert ignored == ["displayName", "organizationName"]


@pytest.mark.parametrize("name", ["id", "created_at", "updated_at", "merge_history"])
def test_create_accepts_and_ignores_served_fields_without_naming_them(name):
    ignored: list[str] = []
    value = {"id": CONTACT_ID, "merge_history": [{"id": OTHER_ID}]}.get(name, "2021-11-16T13:21:03.580Z")
    assert validate_create({"display_name": "x", name: value}, ignored) == {"display_name": "x"}
    assert ignored == []
    # A value of any type: the field is ignored, not read.
    assert validate_create({"display_name": "x", name: 5}) == {"display_name": "x"}


def test_a_fetched_contact_can_be_created_again_as_it_is():
    served = {"id": CONTACT_ID, **SEED, "created_at": "2021-11-16T13:21:03.580Z", "updated_at": "2021-11-16T13:21:03.580Z", "merge_history": []}
    ignored: list[str] = []
    assert validate_create(served, ignored) == SEED and ignored == []


@pytest.mark.parametrize("name", ["display_name", "avatar_url", "title", "gender", "locale", "organization_name"])
@pytest.mark.parametrize("value", [None, 3, 1.5, True, [], {}])
def test_string_fields_must_be_strings(name, value):
    err = error_of(validate_create, {name: value})
    assert err.field == name
    assert "must be a string" in err.message


def test_strings_are_bounded_and_refuse_nul_and_lone_surrogates():
    assert validate_create({"title": "x" * model.MAX_STRING_LENGTH})
    assert "at most" in error_of(validate_create, {"title": "x" * (model.MAX_STRING_LENGTH + 1)}).message
    assert field_of(validate_create, {"title": "a\x00b"}) == "title"
    assert field_of(validate_create, {"title": "a\ud800b"}) == "title"
    assert field_of(validate_create, {"via": {"email": "\udfff"}}) == "via.email"
    assert validate_create({"title": "Zoë 😀"}) == {"title": "Zoë 😀"}


@pytest.mark.parametrize("value", ["", "+02:00", "Europe/Berlin", 2, -5, 5.5, -3.75, 0, 0.0])
def test_timezone_is_a_string_or_a_number_served_as_sent(value):
    fields = validate_create({"timezone": value})
    assert fields["timezone"] == value
    assert type(fields["timezone"]) is type(value)


@pytest.mark.parametrize("value", [True, False, None, [], {}, math.nan, math.inf, 86_401, -1e9])
def test_timezone_refuses_other_values(value):
    assert field_of(validate_create, {"timezone": value}) == "timezone"


@pytest.mark.parametrize(
    "via, path",
    [
        ("x", "via"),
        ([], "via"),
        ({"email": 3}, "via.email"),
        ({"email": None}, "via.email"),
        ({"email": {"work": "a@b"}}, "via.email"),
        ({"phones": ["1", "2"]}, "via.phones"),
        ({"": "x"}, "via"),
        ({"k" * 257: "x"}, "via"),
        ({f"k{i}": "x" for i in range(model.MAX_VIA_KEYS + 1)}, "via"),
    ],
)
def test_via_is_a_flat_map_of_strings(via, path):
    assert field_of(validate_create, {"via": via}) == path


@pytest.mark.parametrize(
    "address, path",
    [
        ("77 Massachusetts Ave", "address"),
        ({"postcode": 2139}, "address.postcode"),
        ({"city": None}, "address.city"),
        ({"country": {"code": "US"}}, "address.country"),
    ],
)
def test_address_has_only_its_seven_string_keys(address, path):
    assert field_of(validate_create, {"address": address}) == path


def test_address_keys():
    assert len(ADDRESS_FIELDS) == 7
    assert validate_create({"address": {"postcode": "02139"}}) == {"address": {"postcode": "02139"}}


def test_unknown_address_keys_are_ignored_and_named_with_their_path():
    # The inbox's client (updateContactDetails.ts, 8fb95c084) sends address.addressLine1.
    ignored: list[str] = []
    fields = validate_create({"display_name": "x", "address": {"addressLine1": "77 Ave", "city": "Boston", "zip": 1}}, ignored)
    assert fields == {"display_name": "x", "address": {"city": "Boston"}}
    assert ignored == ["address.addressLine1", "address.zip"]
    # Only unknown keys: the address is empty and dropped, so nothing is set.
    assert field_of(validate_create, {"address": {"addressLine1": "77 Ave"}}) == ""


def test_free_form_maps_have_no_unknown_keys():
    ignored: list[str] = []
    payload = {"via": {"anything": "x"}, "metadata": {"any": {"thing": 1}}, "conversations": {CONVERSATION_A: "facebook"}}
    assert validate_create(payload, ignored) == payload and ignored == []


@pytest.mark.parametrize(
    "conversations, path",
    [
        ([CONVERSATION_A], "conversations"),
        ({"not-a-uuid": "facebook"}, "conversations.not-a-uuid"),
        ({CONVERSATION_A: ""}, f"conversations.{CONVERSATION_A}"),
        ({CONVERSATION_A: 3}, f"conversations.{CONVERSATION_A}"),
        ({CONVERSATION_A: None}, f"conversations.{CONVERSATION_A}"),
        ({CONVERSATION_A: "facebook", CONVERSATION_A.upper(): "facebook"}, f"conversations.{CONVERSATION_A.upper()}"),
        ({"{" + CONVERSATION_A + "}": "facebook"}, "conversations.{" + CONVERSATION_A + "}"),
    ],
)
def test_conversations_map_uuids_to_non_empty_sources(conversations, path):
    assert field_of(validate_create, {"conversations": conversations}) == path


def test_conversations_are_bounded():
    many = {str(uuid.UUID(int=i)): "facebook" for i in range(model.MAX_CONVERSATIONS + 1)}
    assert field_of(validate_create, {"conversations": many}) == "conversations"


@pytest.mark.parametrize(
    "metadata, path",
    [
        ("x", "metadata"),
        ([], "metadata"),
        ({"tags": ["a", "b"]}, "metadata.tags"),
        ({"facebook": {"ids": [1]}}, "metadata.facebook.ids"),
        ({"a": {"b": {"c": []}}}, "metadata.a.b.c"),
        ({"score": math.nan}, "metadata.score"),
        ({"score": math.inf}, "metadata.score"),
        ({"big": 2**63}, "metadata.big"),
        ({"": 1}, "metadata"),
        ({"a": {"": 1}}, "metadata.a"),
        ({"a": {3: 1}}, "metadata.a"),
        ({"a": b"bytes"}, "metadata.a"),
        ({"a": "\x00"}, "metadata.a"),
    ],
)
def test_metadata_is_an_object_without_arrays_at_any_depth(metadata, path):
    assert field_of(validate_create, {"metadata": metadata}) == path


def test_metadata_keeps_any_json_without_arrays():
    metadata = {"a": None, "b": True, "c": 1, "d": 1.0, "e": -2**63, "f": "", "g": {"h": {"i": "j"}}, "k": {}}
    assert validate_create({"metadata": metadata}) == {"metadata": metadata}


def test_metadata_depth_and_size_are_bounded():
    def nested(depth):
        value: dict = {"leaf": 1}
        for _ in range(depth - 1):
            value = {"n": value}
        return value

    assert validate_create({"metadata": nested(model.MAX_METADATA_DEPTH)})
    err = error_of(validate_create, {"metadata": nested(model.MAX_METADATA_DEPTH + 1)})
    assert err.field.startswith("metadata.n")
    big = {f"k{i}": "x" * 1000 for i in range(70)}
    err = error_of(validate_create, {"metadata": big})
    assert err.field == "metadata" and str(model.MAX_METADATA_BYTES) in err.message
    assert field_of(validate_create, {"metadata": {"a": "x" * (model.MAX_METADATA_STRING_LENGTH + 1)}}) == "metadata.a"


def test_validation_does_not_keep_references_to_the_payload():
    payload = copy.deepcopy(SEED)
    fields = validate_create(payload)
    payload["metadata"]["facebook"]["psid"] = "changed"
    payload["via"]["email"] = "changed"
    assert fields["metadata"]["facebook"]["psid"] == "1234567890"
    assert fields["via"]["email"] == "b.liskov@mit.org"


# --- validate_import ----------------------------------------------------------------------------


def test_import_of_the_seed_sample():
    payload = [
        {"display_name": "Barabara Liskov", "avatar_url": "https://example.org/avatar.jpg", "title": "Professor"},
        {"display_name": "Eleanor B. Garcia", "title": "Estimator project manager"},
    ]
    assert validate_import(payload) == payload


@pytest.mark.parametrize(
    "payload, path",
    [
        ({"display_name": "x"}, ""),
        (None, ""),
        ([{"title": "a"}, {"title": "b"}, {"title": "c"}, {"display_name": 3}], "[3].display_name"),
        ([{"title": "a"}, "x"], "[1]"),
        ([{"title": "a"}, {}], "[1]"),
        ([{"title": "a"}, {"nickname": "b"}], "[1]"),
        ([{"via": {"email": 1}}], "[0].via.email"),
        ([{"address": {"postcode": 1}}], "[0].address.postcode"),
        ([{"metadata": {"a": {"b": []}}}], "[0].metadata.a.b"),
        ([{"title": "a"}] * (MAX_IMPORT + 1), ""),
    ],
)
def test_import_errors_name_the_element(payload, path):
    assert field_of(validate_import, payload) == path


def test_import_of_nothing_is_fine():
    assert validate_import([]) == []


def test_import_names_ignored_fields_by_element():
    ignored: list[str] = []
    payload = [{"title": "a", "nickname": "x"}, {"title": "b", "id": CONTACT_ID}, {"title": "c", "address": {"zip": "1"}}]
    assert validate_import(payload, ignored) == [{"title": "a"}, {"title": "b"}, {"title": "c"}]
    assert ignored == ["[0].nickname", "[2].address.zip"]


def test_import_of_max_contacts_is_allowed():
    assert len(validate_import([{"title": "a"}] * MAX_IMPORT)) == MAX_IMPORT


# --- validate_update ----------------------------------------------------------------------------


def test_update_returns_the_normalized_id_and_the_changes():
    contact_id, changes = validate_update({"id": CONTACT_ID.upper(), "display_name": "Barbara Liskov"})
    assert contact_id == CONTACT_ID
    assert changes == {"display_name": "Barbara Liskov"}


@pytest.mark.parametrize("before, after", [(1, True), (True, 1), (2, 2.0), (2.0, 2), (0, False), (0.0, -0.0), (None, False), ({"a": 1}, {"a": True})])
@pytest.mark.parametrize("field", ["metadata", "timezone"])
def test_an_update_that_changes_only_a_values_type_is_a_change(field, before, after):
    # Python's 1 == True == 1.0 made these look like no-ops, and the change was dropped.
    if field == "timezone" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)):
        return
    wrap = (lambda v: {"k": v}) if field == "metadata" else (lambda v: v)
    contact = new_contact(validate_create({"display_name": "x", field: wrap(before)}), CONTACT_ID, T0)
    _, changes = validate_update({"id": CONTACT_ID, field: wrap(after)})
    updated = apply_update(contact, changes, T1)
    assert not model.same_json(updated, contact)
    assert json.dumps(updated[field]) == json.dumps(wrap(after))
    assert updated["updated_at"] == millis_to_iso(T1)


def test_same_json_tells_types_apart():
    assert model.same_json({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]})
    for a, b in [(1, True), (1, 1.0), (0, False), (0.0, -0.0), ({"a": 1}, {"a": 1.0}), ([1], [True]), ({"a": 1}, {"b": 1}), ("", None)]:
        assert not model.same_json(a, b) and not model.same_json(b, a)


def test_update_with_only_the_id_changes_nothing():
    assert validate_update({"id": CONTACT_ID}) == (CONTACT_ID, {})


def test_update_keeps_removal_markers():
    _, changes = validate_update(
        {
            "id": CONTACT_ID,
            "title": "",
            "timezone": "",
            "via": {"email": "", "phone": "+1"},
            "address": "",
            "conversations": {CONVERSATION_A.upper(): "", CONVERSATION_B: "twilio.sms"},
            "metadata": {"salesforce_id": "", "facebook": {"psid": "1"}},
        }
    )
    assert changes == {
        "title": "",
        "timezone": "",
        "via": {"email": "", "phone": "+1"},
        "address": "",
        "conversations": {CONVERSATION_A: "", CONVERSATION_B: "twilio.sms"},
        "metadata": {"salesforce_id": "", "facebook": {"psid": "1"}},
    }


@pytest.mark.parametrize(
    "payload, path",
    [
        ([], ""),
        ({}, "id"),
        ({"display_name": "x"}, "id"),
        ({"id": None}, "id"),
        ({"id": 3}, "id"),
        ({"id": "not-a-uuid"}, "id"),
        ({"id": CONTACT_ID + "0"}, "id"),
        ({"id": CONTACT_ID, "title": None}, "title"),
        ({"id": CONTACT_ID, "via": {"email": 1}}, "via.email"),
        ({"id": CONTACT_ID, "conversations": {"x": ""}}, "conversations.x"),
        ({"id": CONTACT_ID, "metadata": {"tags": []}}, "metadata.tags"),
        ({"id": CONTACT_ID, "metadata": []}, "metadata"),
        ({"id": CONTACT_ID, "timezone": True}, "timezone"),
    ],
)
def test_update_errors(payload, path):
    assert field_of(validate_update, payload) == path


# --- validate_id / validate_info / validate_merge / validate_list --------------------------------


def test_validate_id():
    assert validate_id({"id": CONTACT_ID.upper()}) == CONTACT_ID
    assert field_of(validate_id, {}) == "id"
    assert field_of(validate_id, {"id": "x"}) == "id"
    ignored: list[str] = []
    assert validate_id({"id": CONTACT_ID, "force": True}, ignored) == CONTACT_ID and ignored == ["force"]
    assert field_of(validate_id, None) == ""
    assert field_of(validate_id, [CONTACT_ID]) == ""


def test_ids_of_any_version_are_accepted():
    for value in (str(uuid.uuid1()), str(uuid.uuid4()), str(uuid.UUID(int=0)), contact_id_for_conversation("x")):
        assert validate_id({"id": value}) == value


def test_validate_info():
    assert validate_info({"id": CONTACT_ID}) == ("id", CONTACT_ID)
    assert validate_info({"conversation_id": CONVERSATION_A.upper()}) == ("conversation_id", CONVERSATION_A)
    assert field_of(validate_info, {}) == "id"
    assert "conversation_id" in error_of(validate_info, {}).message
    assert field_of(validate_info, {"id": CONTACT_ID, "conversation_id": CONVERSATION_A}) == "conversation_id"
    assert field_of(validate_info, {"conversation_id": "x"}) == "conversation_id"
    assert field_of(validate_info, {"id": 1}) == "id"
    ignored: list[str] = []
    assert validate_info({"id": CONTACT_ID, "x": 1}, ignored) == ("id", CONTACT_ID) and ignored == ["x"]
    assert field_of(validate_info, "x") == ""


def test_validate_merge():
    assert validate_merge({"source_id": CONTACT_ID, "destination_id": OTHER_ID.upper()}) == (CONTACT_ID, OTHER_ID)
    assert field_of(validate_merge, {"source_id": CONTACT_ID, "destination_id": CONTACT_ID.upper()}) == "destination_id"
    assert field_of(validate_merge, {"destination_id": OTHER_ID}) == "source_id"
    assert field_of(validate_merge, {"source_id": CONTACT_ID}) == "destination_id"
    assert field_of(validate_merge, {"source_id": "x", "destination_id": OTHER_ID}) == "source_id"
    ignored: list[str] = []
    assert validate_merge({"source_id": CONTACT_ID, "destination_id": OTHER_ID, "force": 1}, ignored) == (CONTACT_ID, OTHER_ID)
    assert ignored == ["force"]


def test_a_merge_dry_run_is_refused_not_ignored():
    # Ignoring dry_run would merge for real what the client only wanted to preview.
    assert validate_merge({"source_id": CONTACT_ID, "destination_id": OTHER_ID, "dry_run": False}) == (CONTACT_ID, OTHER_ID)
    for value in (True, "true", 1, None):
        err = error_of(validate_merge, {"source_id": CONTACT_ID, "destination_id": OTHER_ID, "dry_run": value})
        assert err.field == "dry_run"
    assert field_of(validate_merge, []) == ""


def test_the_api_reads_dry_run_as_a_boolean():
    from contacts_streams.model import validate_merge_request

    body = {"source_id": CONTACT_ID, "destination_id": OTHER_ID}
    assert validate_merge_request(body) == (CONTACT_ID, OTHER_ID, False)
    assert validate_merge_request({**body, "dry_run": True}) == (CONTACT_ID, OTHER_ID, True)
    for value in ("true", 1, None):
        assert error_of(validate_merge_request, {**body, "dry_run": value}).field == "dry_run"


def test_validate_list():
    assert validate_list(None) == (None, DEFAULT_PAGE_SIZE)
    assert validate_list() == (None, 20)
    assert validate_list({}) == (None, 20)
    assert validate_list({"cursor": None, "page_size": None}) == (None, 20)
    assert validate_list({"cursor": "next-page-uuid", "page_size": 2}) == ("next-page-uuid", 2)
    assert validate_list({"cursor": ""}) == (None, 20)
    assert validate_list({"page_size": MAX_PAGE_SIZE}) == (None, MAX_PAGE_SIZE)


def test_list_reads_the_inboxs_page_size_and_null_cursor():
    # The shape of the inbox's list call (DESIGN.md): {"cursor": null, "pageSize": N}.
    ignored: list[str] = []
    assert validate_list({"cursor": None, "pageSize": 54}, ignored) == (None, 54) and ignored == []
    assert validate_list({"pageSize": None}) == (None, DEFAULT_PAGE_SIZE)
    # Both given: page_size wins and pageSize is named as ignored.
    assert validate_list({"page_size": 5, "pageSize": 7}, ignored) == (None, 5) and ignored == ["pageSize"]
    # Still a known field: a wrong value is a 400 naming it.
    for value in (0, MAX_PAGE_SIZE + 1, "20", True, 2.5):
        assert field_of(validate_list, {"pageSize": value}) == "pageSize"
    ignored = []
    assert validate_list({"page": 2, "sort": "name"}, ignored) == (None, DEFAULT_PAGE_SIZE) and ignored == ["page", "sort"]


@pytest.mark.parametrize(
    "payload, path",
    [
        ([], ""),
        ("x", ""),
        ({"cursor": 2}, "cursor"),
        ({"cursor": {}}, "cursor"),
        ({"cursor": "x" * (model.MAX_CURSOR_LENGTH + 1)}, "cursor"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": MAX_PAGE_SIZE + 1}, "page_size"),
        ({"page_size": "20"}, "page_size"),
        ({"page_size": 2.5}, "page_size"),
        ({"page_size": True}, "page_size"),
    ],
)
def test_list_errors(payload, path):
    assert field_of(validate_list, payload) == path


# --- new_contact / apply_update -----------------------------------------------------------------


def seed_contact() -> dict:
    return new_contact(validate_create(copy.deepcopy(SEED)), CONTACT_ID, T0)


def test_new_contact_sets_id_and_timestamps():
    contact = seed_contact()
    assert contact["id"] == CONTACT_ID
    assert contact["created_at"] == contact["updated_at"] == "2021-11-16T13:21:03.580Z"
    assert {k: v for k, v in contact.items() if k in CONTACT_FIELDS} == SEED
    assert list(contact)[0] == "id" and list(contact)[-2:] == ["created_at", "updated_at"]
    assert new_contact({"title": "x"}, CONTACT_ID.upper(), T0)["id"] == CONTACT_ID


def test_new_contact_omits_empty_maps_and_copies_maps():
    fields = {"title": "x", "via": {}, "metadata": {"a": {"b": 1}}}
    contact = new_contact(fields, CONTACT_ID, T0)
    assert "via" not in contact
    fields["metadata"]["a"]["b"] = 2
    assert contact["metadata"] == {"a": {"b": 1}}


def update(contact, payload, now=T1):
    _, changes = validate_update({"id": contact["id"], **payload})
    return apply_update(contact, changes, now)


def test_update_sets_and_removes_fields():
    contact = seed_contact()
    updated = update(contact, {"display_name": "Barbara Liskov", "title": "", "timezone": 2})
    assert updated["display_name"] == "Barbara Liskov"
    assert "title" not in updated
    assert updated["timezone"] == 2
    assert updated["updated_at"] == millis_to_iso(T1)
    assert updated["created_at"] == contact["created_at"] and updated["id"] == contact["id"]
    assert contact == seed_contact()  # the input is untouched


def test_update_maps_key_by_key():
    contact = seed_contact()
    updated = update(
        contact,
        {
            "via": {"email": "", "fax": "+49"},
            "address": {"city": "Boston", "address_line2": ""},
            "metadata": {"salesforce_id": "", "facebook": {"psid": "1"}, "new": {"x": None}},
            "conversations": {CONVERSATION_A: "", "11111111-1111-1111-1111-111111111111": "google"},
        },
    )
    assert updated["via"] == {"phone": "+1234567", "key": "value", "fax": "+49"}
    assert updated["address"]["city"] == "Boston" and "address_line2" not in updated["address"]
    assert updated["address"]["postcode"] == "02139"
    # top-level metadata keys update one by one; a nested object replaces the old value whole
    assert updated["metadata"] == {
        "facebook": {"psid": "1"},
        "zendesk_id": "XYZ789",
        "key": "value",
        "new": {"x": None},
    }
    assert updated["conversations"] == {CONVERSATION_B: "twilio.sms", "11111111-1111-1111-1111-111111111111": "google"}


def test_update_removes_a_map_whose_last_key_is_removed_and_a_map_set_to_empty_string():
    contact = new_contact({"title": "x", "via": {"email": "a@b"}, "metadata": {"k": 1}}, CONTACT_ID, T0)
    updated = update(contact, {"via": {"email": ""}, "metadata": ""})
    assert "via" not in updated and "metadata" not in updated


def test_update_never_changes_id_created_at_or_merge_history():
    contact = dict(seed_contact(), merge_history=[{"id": OTHER_ID, "created_at": millis_to_iso(T0)}])
    updated = update(contact, {"title": "x"})
    assert updated["merge_history"] == contact["merge_history"]
    for name in ("id", "created_at", "merge_history", "updated_at"):
        with pytest.raises(ValidationError) as caught:
            apply_update(contact, {name: "x"}, T1)
        assert caught.value.field == name


def test_an_update_that_changes_nothing_returns_an_equal_contact():
    contact = seed_contact()
    assert update(contact, {}) == contact
    assert update(contact, {"title": "Professor", "via": {"email": "b.liskov@mit.org"}}) == contact
    assert update(contact, {"via": {}, "conversations": {}}) == contact


def test_update_enforces_limits_on_the_result():
    contact = new_contact({"via": {f"k{i}": "x" for i in range(model.MAX_VIA_KEYS)}}, CONTACT_ID, T0)
    with pytest.raises(ValidationError) as caught:
        update(contact, {"via": {"one_more": "x"}})
    assert caught.value.field == "via"
    contact = new_contact({"metadata": {f"k{i}": "x" * 1000 for i in range(60)}}, CONTACT_ID, T0)
    with pytest.raises(ValidationError) as caught:
        update(contact, {"metadata": {f"j{i}": "x" * 1000 for i in range(10)}})
    assert caught.value.field == "metadata"


def test_a_contact_a_merge_took_past_the_via_and_metadata_limits_can_still_be_updated():
    many = {f"d{i}": "x" for i in range(80)}
    destination = new_contact({"via": many, "metadata": {f"d{i}": "x" * 1000 for i in range(40)}}, OTHER_ID, T0)
    source = new_contact({"via": {f"s{i}": "x" for i in range(80)}, "metadata": {f"s{i}": "x" * 1000 for i in range(40)}}, CONTACT_ID, T0)
    merged = merge_contacts(destination, source, T1)
    assert len(merged["via"]) == 160
    assert update(merged, {"title": "t"})["title"] == "t"
    assert len(update(merged, {"via": {"d0": ""}})["via"]) == 159
    assert len(update(merged, {"metadata": {"d0": ""}})["metadata"]) == 79
    with pytest.raises(ValidationError):
        update(merged, {"via": {"new": "x"}})
    with pytest.raises(ValidationError):
        update(merged, {"metadata": {"new": "x"}})


# --- merge --------------------------------------------------------------------------------------


def test_merge_of_the_seed_example():
    destination = new_contact(
        {"display_name": "Barabara Liskov", "avatar_url": "https://example.org/avatar.jpg"}, OTHER_ID, T0
    )
    source = new_contact(
        {
            "display_name": "Eleanor B. Garcia",
            "avatar_url": "https://example.org/avatar.jpg",
            "title": "Estimator project manager",
            "organization_name": "Airy.co",
        },
        CONTACT_ID,
        T0 + 1,
    )
    merged = merge_contacts(destination, source, T1)
    assert merged == {
        "id": OTHER_ID,
        "display_name": "Barabara Liskov",
        "avatar_url": "https://example.org/avatar.jpg",
        "title": "Estimator project manager",
        "organization_name": "Airy.co",
        "created_at": destination["created_at"],
        "updated_at": millis_to_iso(T1),
        "merge_history": [
            {**source, "merged_at": millis_to_iso(T1), "merged_into": OTHER_ID, "gained": ["title", "organization_name"]}
        ],
    }


def test_merge_maps_key_by_key_and_unites_conversations():
    destination = new_contact(
        {
            "via": {"email": "d@x", "phone": ""},
            "address": {"city": "Berlin"},
            "metadata": {"a": {"x": 1}, "b": 1},
            "conversations": {CONVERSATION_A: "facebook"},
        },
        OTHER_ID,
        T0,
    )
    source = new_contact(
        {
            "via": {"email": "s@x", "phone": "+1", "fax": "2"},
            "address": {"city": "Paris", "country": "FR"},
            "metadata": {"a": {"y": 2}, "c": 3},
            "conversations": {CONVERSATION_A: "twilio.sms", CONVERSATION_B: "twilio.sms"},
        },
        CONTACT_ID,
        T0,
    )
    merged = merge_contacts(destination, source, T1)
    assert merged["via"] == {"email": "d@x", "phone": "+1", "fax": "2"}
    assert merged["address"] == {"city": "Berlin", "country": "FR"}
    assert merged["metadata"] == {"a": {"x": 1}, "b": 1, "c": 3}
    assert merged["conversations"] == {CONVERSATION_A: "facebook", CONVERSATION_B: "twilio.sms"}


def test_merge_fills_empty_string_gaps_and_keeps_empty_strings_nobody_filled():
    destination = new_contact({"timezone": "", "title": ""}, OTHER_ID, T0)
    source = new_contact({"timezone": 2, "gender": ""}, CONTACT_ID, T0)
    merged = merge_contacts(destination, source, T1)
    assert merged["timezone"] == 2
    assert merged["title"] == ""
    assert merged["gender"] == ""


def test_merge_history_is_destination_then_source_then_the_source():
    older = [new_contact({"title": f"old{i}"}, str(uuid.UUID(int=i + 1)), T0) for i in range(3)]
    destination = dict(new_contact({"title": "d"}, OTHER_ID, T0), merge_history=older[:1])
    source = dict(new_contact({"title": "s"}, CONTACT_ID, T0), merge_history=older[1:])
    merged = merge_contacts(destination, source, T1)
    source_as_it_was = {k: v for k, v in source.items() if k != "merge_history"}
    entry = {**source_as_it_was, "merged_at": millis_to_iso(T1), "merged_into": OTHER_ID, "gained": []}
    # entries written before merged_into existed came with the source: they name it
    carried = [{**item, "merged_into": CONTACT_ID} for item in older[1:]]
    assert merged["merge_history"] == older[:1] + carried + [entry]
    assert all("merge_history" not in entry for entry in merged["merge_history"])


def test_merge_history_entries_say_what_the_destination_gained():
    destination = new_contact(
        {"display_name": "D", "title": "", "via": {"email": "d@x", "phone": ""}, "metadata": {"a": 1}, "conversations": {CONVERSATION_A: "facebook"}},
        OTHER_ID,
        T0,
    )
    source = new_contact(
        {
            "display_name": "S",
            "title": "Dr",
            "timezone": "",
            "via": {"email": "s@x", "phone": "+1", "fax.home": "2"},
            "address": {"city": "Paris"},
            "metadata": {"a": 2, "b": {"c": 3}},
            "conversations": {CONVERSATION_A: "twilio.sms", CONVERSATION_B: "google"},
        },
        CONTACT_ID,
        T0,
    )
    entry = merge_contacts(destination, source, T1)["merge_history"][-1]
    assert entry["gained"] == [
        "title",
        "timezone",
        "via.phone",
        "via.fax.home",
        "address.city",
        "metadata.b",
        f"conversations.{CONVERSATION_B}",
    ]
    assert (entry["merged_at"], entry["merged_into"]) == (millis_to_iso(T1), OTHER_ID)
    # a later merge carries the entry along unchanged: it still names where it went first
    third = new_contact({"display_name": "T"}, str(uuid.UUID(int=9)), T0)
    later = merge_contacts(third, merge_contacts(destination, source, T1), T1 + 1)
    assert later["merge_history"][0] == entry
    assert later["merge_history"][1]["merged_into"] == third["id"]


def test_merge_history_is_bounded_by_refusing_not_by_forgetting():
    def entries(n, base):
        return [{"id": str(uuid.UUID(int=base + i)), "created_at": millis_to_iso(T0)} for i in range(n)]

    half = model.MAX_MERGE_HISTORY // 2
    destination = dict(new_contact({"title": "d"}, OTHER_ID, T0), merge_history=entries(half, 1000))
    source = dict(new_contact({"title": "s"}, CONTACT_ID, T0), merge_history=entries(model.MAX_MERGE_HISTORY - half - 1, 5000))
    merged = merge_contacts(destination, source, T1)
    assert len(merged["merge_history"]) == model.MAX_MERGE_HISTORY
    one_more = new_contact({"title": "x"}, str(uuid.UUID(int=77)), T0)
    with pytest.raises(model.TooLarge) as caught:
        merge_contacts(merged, one_more, T1)
    assert str(model.MAX_MERGE_HISTORY) in caught.value.message and OTHER_ID in caught.value.message
    assert caught.value.field == "source_id"


def test_merge_refuses_self_merge_and_leaves_inputs_untouched():
    contact = seed_contact()
    with pytest.raises(ValidationError) as caught:
        merge_contacts(contact, dict(contact, id=CONTACT_ID.upper()), T1)
    assert caught.value.field == "destination_id"
    destination, source = seed_contact(), new_contact({"via": {"x": "y"}}, OTHER_ID, T0)
    before = copy.deepcopy((destination, source))
    merged = merge_contacts(destination, source, T1)
    merged["via"]["z"] = "changed"
    assert (destination, source) == before


# --- auto-create helpers, sort key, time --------------------------------------------------------


def test_contact_id_for_conversation_is_airys_uuidv5_from_name():
    assert contact_id_for_conversation("testtest") == "51abb963-6078-5efb-b888-d8457a7c76f8"
    assert contact_id_for_conversation("testtest") != str(uuid.uuid5(uuid.NAMESPACE_DNS, "testtest"))
    value = uuid.UUID(contact_id_for_conversation(CONVERSATION_A))
    assert value.version == 5 and value.variant == uuid.RFC_4122
    assert contact_id_for_conversation(CONVERSATION_A) == contact_id_for_conversation(CONVERSATION_A)


def test_default_display_name():
    conversation_id = "ea1cba21-2bd6-477c-9a40-59cd9bb4ecb3"
    assert default_display_name(conversation_id, "facebook") == "Facebook 4ecb3"
    assert default_display_name(conversation_id, "twilio.sms") == "Sms 4ecb3"
    assert default_display_name(conversation_id, "twilio.whatsapp") == "Whatsapp 4ecb3"
    assert default_display_name(conversation_id, "") == "Contact 4ecb3"


def test_sort_key_orders_by_folded_name_then_id_with_unnamed_last():
    a1 = {"id": "00000000-0000-0000-0000-000000000002", "display_name": "anna"}
    a2 = {"id": "00000000-0000-0000-0000-000000000001", "display_name": "ANNA"}
    ab = {"id": "ffffffff-0000-0000-0000-000000000000", "display_name": "Ab"}
    abc = {"id": "00000000-0000-0000-0000-000000000000", "display_name": "abc"}
    zed = {"id": "00000000-0000-0000-0000-000000000003", "display_name": "  Zed"}
    wide = {"id": "00000000-0000-0000-0000-000000000004", "display_name": "Ｚｅｄ"}  # NFKC -> Zed
    strasse = {"id": "00000000-0000-0000-0000-000000000005", "display_name": "STRASSE"}
    strasse2 = {"id": "00000000-0000-0000-0000-000000000006", "display_name": "straße"}  # casefold -> strasse
    nameless = {"id": "00000000-0000-0000-0000-000000000001"}
    empty = {"id": "00000000-0000-0000-0000-000000000000", "display_name": ""}
    blank = {"id": "00000000-0000-0000-0000-000000000002", "display_name": "   "}
    ordered = sorted([nameless, zed, blank, strasse2, abc, wide, empty, a1, ab, strasse, a2], key=sort_key)
    assert ordered == [ab, abc, a2, a1, strasse, strasse2, zed, wide, empty, nameless, blank]
    assert isinstance(sort_key(a1), bytes)


def test_time_helpers():
    assert millis_to_iso(T0) == "2021-11-16T13:21:03.580Z"
    assert iso_to_millis("2021-11-16T13:21:03.580Z") == T0
    assert iso_to_millis("2021-11-16T14:21:03.580+01:00") == T0
    assert iso_to_millis("2021-11-16T13:21:03.580") == T0
    assert millis_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert millis_to_iso(-1) == "1969-12-31T23:59:59.999Z"
    before = now_ms()
    assert abs(iso_to_millis(millis_to_iso(before)) - before) == 0
    assert isinstance(before, int) and before > T0


@given(st.integers(min_value=-62135596800000, max_value=253402300799999))
def test_iso_round_trip(ms):
    text = millis_to_iso(ms)
    assert iso_to_millis(text) == ms
    assert len(text) == 24 and text.endswith("Z")


# --- properties ---------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    CONTACT_FIELDS + ("id", "created_at", "conversation_id", "source_id", "destination_id", "cursor", "page_size", "x")
)
NEAR_VALID = st.dictionaries(FIELD_NAMES, ANY_JSON | st.just(CONTACT_ID) | st.just(""), max_size=6)
VALIDATORS = [validate_create, validate_import, validate_update, validate_id, validate_info, validate_merge, validate_list]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=ANY_JSON | NEAR_VALID | st.lists(NEAR_VALID, max_size=3))
def test_validation_raises_only_validation_errors(payload):
    for validator in VALIDATORS:
        try:
            validator(payload)
        except ValidationError as err:
            assert isinstance(err.field, str) and err.field in err.message


# valid contacts, built the way the service builds them
CONTACTS = st.builds(
    lambda fields, contact_id, ms: new_contact(validate_create(fields), contact_id, ms),
    CREATE_PAYLOADS,
    st.uuids().map(str),
    st.integers(0, 4102444800000),
)


@settings(max_examples=200, deadline=None)
@given(destination=CONTACTS, source=CONTACTS)
def test_merge_keeps_every_destination_value_and_every_conversation(destination, source):
    if destination["id"] == source["id"]:
        return
    merged = merge_contacts(destination, source, T1)
    assert merged["id"] == destination["id"] and merged["created_at"] == destination["created_at"]
    for name in model.SCALAR_FIELDS:
        if destination.get(name, "") != "":
            assert merged[name] == destination[name]
        elif source.get(name, "") != "":
            assert merged[name] == source[name]
    for name in ("via", "address", "metadata"):
        for key, value in destination.get(name, {}).items():
            if value != "":
                assert merged[name][key] == value
        for key in source.get(name, {}):
            assert key in merged[name]
    conversations = merged.get("conversations", {})
    assert set(conversations) == set(destination.get("conversations", {})) | set(source.get("conversations", {}))
    for conversation_id, channel in destination.get("conversations", {}).items():
        assert conversations[conversation_id] == channel
    entry = merged["merge_history"][-1]
    assert {k: v for k, v in entry.items() if k not in model.HISTORY_ENTRY_FIELDS} == source
    assert (entry["merged_at"], entry["merged_into"]) == (millis_to_iso(T1), destination["id"])
    # gained names exactly the values the destination took: what an unmerge takes back
    before, after, theirs = _paths(destination), _paths(merged), _paths(source)
    assert len(set(entry["gained"])) == len(entry["gained"])
    assert set(after) == set(before) | set(entry["gained"])
    for path, value in after.items():
        if path in entry["gained"]:
            assert _same(value, theirs[path]) and not (path in before and _same(before[path], value)), path
        else:
            assert _same(value, before[path]), path
    json.dumps(merged)  # plain JSON data


def _paths(contact: dict) -> dict:
    """A contact's values by the field paths merge_history's ``gained`` uses."""
    out = {name: contact[name] for name in model.SCALAR_FIELDS if name in contact}
    for name in model.MAP_FIELDS:
        for key, value in (contact.get(name) or {}).items():
            out[f"{name}.{key}"] = value
    return out


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(contact=CONTACTS)
def test_update_with_nothing_changes_nothing(contact):
    contact_id, changes = validate_update({"id": contact["id"]})
    assert changes == {}
    assert apply_update(contact, changes, T1) == contact


@settings(max_examples=200, deadline=None)
@given(contact=CONTACTS, payload=CREATE_PAYLOADS)
def test_update_result_is_a_well_formed_contact(contact, payload):
    _, changes = validate_update({"id": contact["id"], **payload})
    updated = apply_update(contact, changes, T1)
    assert updated["id"] == contact["id"] and updated["created_at"] == contact["created_at"]
    for name, value in updated.items():
        assert value is not None
        if name in model.MAP_FIELDS:
            assert value, f"{name} is an empty map"
    for name, value in changes.items():
        if name in model.SCALAR_FIELDS:
            assert updated.get(name) == (None if value == "" else value)


def test_random_uuids_are_version_4_in_canonical_form():
    ids = [model.random_uuid() for _ in range(500)]
    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every one of the 122 random bits varies (none stuck by the mask).
    bits = [uuid.UUID(text).int for text in ids]
    varying = 0
    for b in bits:
        varying |= b ^ bits[0]
    assert bin(varying).count("1") == 122


def _ids_in_child(conn):
    conn.send([model.random_uuid() for _ in range(3)])
    conn.close()


def test_random_uuids_differ_between_a_parent_and_its_forked_child():
    # The ids come from a per-thread pool of random bytes: a worker forked after the parent drew
    # its pool (gunicorn forks after importing the app) must not hand out the parent's next ids.
    import multiprocessing

    model.random_uuid()  # the parent's pool is drawn
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_ids_in_child, args=(child_end,))
    child.start()
    assert parent_end.poll(30), "the forked child did not answer"
    child_ids = parent_end.recv()
    child.join(30)
    parent_ids = [model.random_uuid() for _ in range(3)]
    assert not set(child_ids) & set(parent_ids)


def test_random_uuids_stay_unique_across_many_pool_refills_and_threads():
    import threading

    per_thread = 2_000  # 16 refills of a 256-id pool each
    results: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(model.random_uuid() for _ in range(per_thread))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ids = [i for out in results for i in out]
    assert len(ids) == 4 * per_thread and len(set(ids)) == len(ids)


@pytest.mark.parametrize("text", ["2021-11-16T13:21:03.580Z", "2021-11-16T14:21:03.580+01:00", "2021-11-16T13:21:03.580"])
def test_iso_to_millis_gives_the_same_from_the_cache(text):
    assert model.iso_to_millis(text) == model.iso_to_millis(text) == 1637068863580
    with pytest.raises((TypeError, ValueError)):
        model.iso_to_millis(1637068863580)
