"""The OpenAPI document: valid OpenAPI 3, served, kept true, and a fuzz run over every endpoint.

"Kept true" means: the routes Flask registers and the paths of the document are the same set;
request schemas agree with model.py's validation on a corpus of payloads; responses of real calls
(every status the app gives that a test can provoke) validate against the documented schema for
their status; and a property-based run (schemathesis over the document, positive and negative,
plus hypothesis-made hostile bodies) finds no 5xx, no undocumented status, no response that
breaks its schema, and no 4xx without a JSON ``message``.

``FUZZ_REQUESTS`` (default 1000) sets how many requests the fuzz run sends in all; ``make soak``
sets 10,000 or more.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid

import jwt
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_spec

from support import SEED_CONTACT

from api.app import create_app
from api.openapi import OPENAPI
from contacts_streams import model

FUZZ_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1000"))
CONTACT_PATHS = [
    "/contacts.create",
    "/contacts.import",
    "/contacts.list",
    "/contacts.info",
    "/contacts.update",
    "/contacts.delete",
    "/contacts.merge",
    "/contacts.unmerge",
    "/contacts.dismiss_duplicates",
    "/contacts.lookup",
    "/contacts.search",
    "/contacts.duplicates",
]
GET_PATHS = [
    "/actuator/health",
    "/actuator/health/liveness",
    "/actuator/health/readiness",
    "/metrics",
    "/actuator/prometheus",
    "/openapi.json",
]


# --- helpers ------------------------------------------------------------------------------------


def _resolve(node, root=OPENAPI):
    """The schema with every local $ref inlined (the document has no recursive references)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, root)
        return {key: _resolve(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, root) for item in node]
    return node


def _validator(schema: dict) -> OAS30Validator:
    return OAS30Validator(_resolve(schema), format_checker=oas30_format_checker)


def request_schema(path: str) -> dict:
    return OPENAPI["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def schema_accepts(path: str, payload) -> bool:
    return _validator(request_schema(path)).is_valid(payload)


def assert_documented(path: str, method: str, response) -> None:
    """The response's status is documented for the operation and its body fits that schema."""
    operation = OPENAPI["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered {status}, not documented: {response.data[:300]!r}"
    documented = _resolve(operation["responses"][status])
    content = documented.get("content")
    if not content:
        assert response.data == b"", f"{method} {path} {status} documents no body but sent {response.data[:200]!r}"
        return
    media_type = response.mimetype
    assert media_type in content, f"{method} {path} {status} sent {media_type}, documented {list(content)}"
    if media_type == "application/json":
        body = json.loads(response.data)
        errors = sorted(_validator(content[media_type]["schema"]).iter_errors(body), key=str)
        assert not errors, f"{method} {path} {status}: {body!r} breaks the documented schema: {errors[0]}"


@pytest.fixture
def app(service):
    return create_app(service.config, service)


@pytest.fixture
def api(app):
    """A test client whose every call is checked against the document."""

    class Checked:
        def __init__(self, client):
            self.client = client

        def post(self, path: str, **kwargs):
            response = self.client.post(path, **kwargs)
            assert_documented(path, "POST", response)
            return response

        def get(self, path: str, **kwargs):
            response = self.client.get(path, **kwargs)
            assert_documented(path, "GET", response)
            return response

    return Checked(app.test_client())


# --- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3():
    validate_spec(copy.deepcopy(OPENAPI))
    assert OPENAPI["openapi"].startswith("3.0.")
    import schemathesis

    loaded = schemathesis.openapi.from_dict(copy.deepcopy(OPENAPI))
    operations = {(op.path, op.method.upper()) for op in (result.ok() for result in loaded.get_all_operations())}
    assert {(path, "POST") for path in CONTACT_PATHS} <= operations
    assert {(path, "GET") for path in GET_PATHS} <= operations


def test_limits_and_fields_come_from_the_model():
    schemas = OPENAPI["components"]["schemas"]
    create = schemas["ContactFields"]
    assert tuple(create["properties"]) == model.CONTACT_FIELDS + model.SERVED_FIELDS
    assert create["anyOf"] == [{"required": [name]} for name in model.CONTACT_FIELDS]
    assert tuple(create["properties"]["address"]["properties"]) == model.ADDRESS_FIELDS
    assert create["properties"]["display_name"]["maxLength"] == model.MAX_STRING_LENGTH
    assert create["properties"]["via"]["maxProperties"] == model.MAX_VIA_KEYS
    assert create["properties"]["conversations"]["maxProperties"] == model.MAX_CONVERSATIONS
    assert schemas["ImportContacts"]["maxItems"] == model.MAX_IMPORT
    page_size = schemas["ListRequest"]["properties"]["page_size"]
    assert (page_size["minimum"], page_size["maximum"], page_size["default"]) == (1, model.MAX_PAGE_SIZE, model.DEFAULT_PAGE_SIZE)
    assert schemas["ListRequest"]["properties"]["cursor"]["maxLength"] == model.MAX_CURSOR_LENGTH
    camel = schemas["ListRequest"]["properties"]["pageSize"]
    assert (camel["minimum"], camel["maximum"]) == (1, model.MAX_PAGE_SIZE)
    assert set(schemas["Contact"]["properties"]) == set(model.CONTACT_FIELDS + model.SERVED_FIELDS)
    bearer = OPENAPI["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    for path in CONTACT_PATHS:  # the token is needed only where one is configured
        assert OPENAPI["paths"][path]["post"]["security"] == [{"bearer": []}, {}]
    for path in GET_PATHS:
        assert OPENAPI["paths"][path]["get"]["security"] == []


def test_no_request_schema_refuses_unknown_fields():
    # Unknown fields are ignored (DESIGN.md): a schema that forbade them would call valid requests
    # invalid, and the fuzz run would expect 400s the service rightly does not give.
    def walk(node):
        if isinstance(node, dict):
            assert node.get("additionalProperties") is not False, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in CONTACT_PATHS:
        walk(_resolve(request_schema(path)))
        for status in ("200", "201", "202", "400"):
            response = OPENAPI["paths"][path]["post"]["responses"].get(status)
            if response:
                assert "X-Contacts-Ignored-Fields" in _resolve(response)["headers"]


def test_openapi_json_serves_the_document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == json.loads(json.dumps(OPENAPI))


def test_every_route_is_documented_and_every_documented_path_is_a_route(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the console's HTML pages are a client of the API, not part of it
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # Flask adds these to every rule
            routes.add((rule.rule, method))
    documented = {(path, method.upper()) for path, item in OPENAPI["paths"].items() for method in item}
    assert routes == documented


# --- request schemas agree with model.py --------------------------------------------------------

_UUID = "6b80b10c-ae6e-4995-844d-c56c4da11623"
_OTHER = "c564cea4-a96f-4ebb-a220-3fb81b6ad522"


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


# (path, payload, validator); the schema and the model must give the same verdict.
AGREEMENT = [
    ("/contacts.create", SEED_CONTACT, model.validate_create),
    ("/contacts.create", {"display_name": "x"}, model.validate_create),
    ("/contacts.create", {"timezone": -3.5}, model.validate_create),
    ("/contacts.create", {"timezone": "+01:00"}, model.validate_create),
    ("/contacts.create", {"timezone": model.MAX_TIMEZONE_OFFSET + 1}, model.validate_create),
    ("/contacts.create", {"timezone": True}, model.validate_create),
    ("/contacts.create", {}, model.validate_create),
    ("/contacts.create", [], model.validate_create),
    ("/contacts.create", {"display_name": 5}, model.validate_create),
    ("/contacts.create", {"display_name": None}, model.validate_create),
    ("/contacts.create", {"display_name": "x" * model.MAX_STRING_LENGTH}, model.validate_create),
    ("/contacts.create", {"display_name": "x" * (model.MAX_STRING_LENGTH + 1)}, model.validate_create),
    ("/contacts.create", {"nickname": "x"}, model.validate_create),
    ("/contacts.create", {"nickname": "x", "display_name": "y"}, model.validate_create),
    ("/contacts.create", {"displayName": "x", "organizationName": "y", "title": "z"}, model.validate_create),
    ("/contacts.create", {"id": _UUID, "display_name": "x"}, model.validate_create),
    ("/contacts.create", {"id": 5, "created_at": 5, "updated_at": None, "merge_history": "x", "title": "x"}, model.validate_create),
    ("/contacts.create", {"created_at": "2021-11-16T13:21:03.580Z"}, model.validate_create),
    ("/contacts.create", {"via": []}, model.validate_create),
    ("/contacts.create", {"via": {"phone": 1}}, model.validate_create),
    ("/contacts.create", {"via": {str(i): "v" for i in range(model.MAX_VIA_KEYS + 1)}}, model.validate_create),
    ("/contacts.create", {"address": {"city": "x"}}, model.validate_create),
    ("/contacts.create", {"address": {"planet": "x"}, "title": "x"}, model.validate_create),
    ("/contacts.create", {"address": {"addressLine1": "x", "city": 5}}, model.validate_create),
    ("/contacts.create", {"conversations": {_UUID: "facebook"}}, model.validate_create),
    ("/contacts.create", {"conversations": {_UUID: ""}}, model.validate_create),
    ("/contacts.create", {"conversations": {_UUID: 1}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": [1]}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": None, "b": True, "c": 1.5, "d": "x"}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": 2**63 - 1}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": "x" * (model.MAX_METADATA_STRING_LENGTH + 1)}}, model.validate_create),
    ("/contacts.create", {"metadata": _nested(model.MAX_METADATA_DEPTH)}, model.validate_create),
    ("/contacts.create", {"metadata": _nested(model.MAX_METADATA_DEPTH + 1)}, model.validate_create),
    ("/contacts.import", [SEED_CONTACT, {"title": "x"}], model.validate_import),
    ("/contacts.import", [], model.validate_import),
    ("/contacts.import", [{"title": "x", "nickname": "y"}], model.validate_import),
    ("/contacts.import", {"display_name": "x"}, model.validate_import_request),
    ("/contacts.import", {"contacts": [{"title": "x"}], "upsert_by": "email"}, model.validate_import_request),
    ("/contacts.import", {"contacts": [], "upsert_by": None}, model.validate_import_request),
    ("/contacts.import", {"contacts": [{"title": "x"}], "upsert_by": "telegram"}, model.validate_import_request),
    ("/contacts.import", {"contacts": {"title": "x"}, "upsert_by": "email"}, model.validate_import_request),
    ("/contacts.import", {"contacts": [{}], "upsert_by": "phone"}, model.validate_import_request),
    ("/contacts.import", [{"title": "x"}, {}], model.validate_import),
    ("/contacts.import", [{"title": "x"}] * (model.MAX_IMPORT + 1), model.validate_import),
    ("/contacts.list", {}, model.validate_list),
    ("/contacts.list", None, model.validate_list),
    ("/contacts.list", {"page_size": 1, "cursor": None}, model.validate_list),
    ("/contacts.list", {"page_size": model.MAX_PAGE_SIZE}, model.validate_list),
    ("/contacts.list", {"page_size": 0}, model.validate_list),
    ("/contacts.list", {"page_size": model.MAX_PAGE_SIZE + 1}, model.validate_list),
    ("/contacts.list", {"page_size": "20"}, model.validate_list),
    ("/contacts.list", {"page_size": 2.5}, model.validate_list),
    ("/contacts.list", {"cursor": 5}, model.validate_list),
    ("/contacts.list", {"cursor": "x" * (model.MAX_CURSOR_LENGTH + 1)}, model.validate_list),
    ("/contacts.list", {"sort": "name"}, model.validate_list),
    ("/contacts.list", {"cursor": None, "pageSize": 20}, model.validate_list),
    ("/contacts.list", {"pageSize": 0}, model.validate_list),
    ("/contacts.list", {"pageSize": "20", "page_size": 5}, model.validate_list),
    ("/contacts.list", {"pageSize": None, "page_size": 5}, model.validate_list),
    ("/contacts.list", [], model.validate_list),
    ("/contacts.info", {"id": _UUID}, model.validate_info),
    ("/contacts.info", {"conversation_id": _UUID.upper()}, model.validate_info),
    ("/contacts.info", {"id": _UUID, "conversation_id": _OTHER}, model.validate_info),
    ("/contacts.info", {}, model.validate_info),
    ("/contacts.info", {"id": "not-a-uuid"}, model.validate_info),
    ("/contacts.info", {"id": _UUID + "\n"}, model.validate_info),
    ("/contacts.info", {"id": 5}, model.validate_info),
    ("/contacts.info", {"id": _UUID, "expand": True}, model.validate_info),
    ("/contacts.info", {"id": _UUID, "conversation_id": 5}, model.validate_info),
    ("/contacts.info", {"conversationId": _UUID}, model.validate_info),
    ("/contacts.update", {"id": _UUID}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "display_name": ""}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "via": ""}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "via": {"email": ""}}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "conversations": {_UUID: ""}}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "via": "x"}, model.validate_update),
    ("/contacts.update", {"display_name": "x"}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "merge_history": []}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "displayName": "x", "address": {"addressLine1": "y"}}, model.validate_update),
    ("/contacts.update", {"id": _UUID, "created_at": 1, "updated_at": [], "merge_history": None}, model.validate_update),
    ("/contacts.delete", {"id": _UUID}, model.validate_id),
    ("/contacts.delete", {"id": _UUID, "force": True}, model.validate_id),
    ("/contacts.delete", {}, model.validate_id),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _OTHER}, model.validate_merge),
    ("/contacts.merge", {"source_id": _UUID}, model.validate_merge),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": "x"}, model.validate_merge),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _OTHER, "dry_run": False}, model.validate_merge_request),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _OTHER, "dry_run": True}, model.validate_merge_request),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _OTHER, "dry_run": None}, model.validate_merge_request),
    ("/contacts.lookup", {"via": {"email": "a@b.c", "any key": "x"}}, model.validate_lookup),
    ("/contacts.lookup", {"via": {}}, model.validate_lookup),
    ("/contacts.lookup", {"via": {"email": 5}}, model.validate_lookup),
    ("/contacts.lookup", {}, model.validate_lookup),
    ("/contacts.search", {"query": "gra", "cursor": None, "pageSize": 5}, model.validate_search),
    ("/contacts.search", {"query": "x" * 257}, model.validate_search),
    ("/contacts.search", {"query": " "}, model.validate_search),
    ("/contacts.search", {"cursor": "x"}, model.validate_search),
    ("/contacts.duplicates", {}, model.validate_duplicates),
    ("/contacts.duplicates", {"id": _UUID, "page_size": 5}, model.validate_duplicates),
    ("/contacts.duplicates", {"id": 5}, model.validate_duplicates),
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _OTHER, "force": True}, model.validate_merge),
    ("/contacts.unmerge", {"destination_id": _UUID, "source_id": _OTHER}, model.validate_unmerge),
    ("/contacts.unmerge", {"destination_id": _UUID}, model.validate_unmerge),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID, _OTHER]}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID]}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID, _OTHER] * 51}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID, "x"]}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID, _UUID]}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {"ids": "x"}, model.validate_dismiss),
    ("/contacts.dismiss_duplicates", {}, model.validate_dismiss),
    ("/contacts.unmerge", {"destination_id": _UUID, "source_id": 5}, model.validate_unmerge),
    ("/contacts.unmerge", {"destination_id": _UUID, "source_id": _OTHER, "dry_run": True}, model.validate_unmerge),
]


@pytest.mark.parametrize(
    "path,payload,validate",
    AGREEMENT,
    ids=[f"{path}-{index}" for index, (path, _, _) in enumerate(AGREEMENT)],
)
def test_request_schemas_agree_with_the_model(path, payload, validate):
    try:
        validate(payload)
        model_accepts = True
    except model.ValidationError:
        model_accepts = False
    assert schema_accepts(path, payload) == model_accepts


# What the document can only say in words: the schema lets it through, the model refuses it.
DESCRIBED_ONLY = [
    ("/contacts.create", {"via": {}}, model.validate_create),  # sets no field
    ("/contacts.create", {"display_name": "a\x00b"}, model.validate_create),
    ("/contacts.create", {"display_name": "\ud800"}, model.validate_create),
    ("/contacts.create", {"conversations": {"not-a-uuid": "facebook"}}, model.validate_create),
    ("/contacts.create", {"via": {"": "x"}}, model.validate_create),
    ("/contacts.create", {"metadata": {"k" * (model.MAX_KEY_LENGTH + 1): 1}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": float("nan")}}, model.validate_create),
    ("/contacts.create", {"metadata": {"a": 2**63}}, model.validate_create),  # JSON Schema: 2**63 is a number
    ("/contacts.merge", {"source_id": _UUID, "destination_id": _UUID}, model.validate_merge),
    ("/contacts.unmerge", {"destination_id": _UUID, "source_id": _UUID}, model.validate_unmerge),
    ("/contacts.dismiss_duplicates", {"ids": [_UUID, _UUID.upper()]}, model.validate_dismiss),
]


@pytest.mark.parametrize("path,payload,validate", DESCRIBED_ONLY)
def test_what_only_descriptions_say_is_refused_by_the_model(path, payload, validate):
    assert schema_accepts(path, payload)
    with pytest.raises(model.ValidationError):
        validate(payload)


# --- real responses validate against the document -----------------------------------------------


def test_real_responses_fit_the_documented_schemas(api):
    created = api.post("/contacts.create", json=SEED_CONTACT)
    assert created.status_code == 201
    contact = created.get_json()
    assert {k: v for k, v in contact.items() if k not in model.SERVED_FIELDS} == SEED_CONTACT

    other = api.post("/contacts.create", json={"display_name": "Grace Hopper", "timezone": 2}).get_json()
    imported = api.post("/contacts.import", json=[{"title": "a"}, {"display_name": "b", "via": {"x": "y"}}])
    assert imported.status_code == 201 and len(imported.get_json()["data"]) == 2
    # The documented headers: a write's position, an import's minimal answer, a reused key's 422.
    minimal = api.post(
        "/contacts.import", json={"contacts": [{"title": "m"}]}, headers={"Prefer": "return=minimal", "Idempotency-Key": "openapi-1"}
    )
    assert minimal.status_code == 201 and set(minimal.get_json()) == {"created", "updated", "ids"}
    documented = OPENAPI["paths"]["/contacts.import"]["post"]["responses"]["201"]["headers"]
    for header in ("X-Contacts-Position", "Preference-Applied"):
        assert header in documented and minimal.headers.get(header)
    reused = api.post("/contacts.import", json={"contacts": [{"title": "n"}]}, headers={"Idempotency-Key": "openapi-1"})
    assert reused.status_code == 422

    page = api.post("/contacts.list", json={"page_size": 2})
    assert page.status_code == 200 and page.get_json()["pagination_data"]["next_cursor"]
    following = api.post("/contacts.list", json={"cursor": page.get_json()["pagination_data"]["next_cursor"]})
    assert following.status_code == 200 and following.get_json()["pagination_data"]["previous_cursor"]
    assert api.post("/contacts.list", data=b"").status_code == 200

    assert api.post("/contacts.info", json={"id": contact["id"]}).status_code == 200
    by_conversation = api.post("/contacts.info", json={"conversation_id": "ea1cba21-2bd6-477c-9a40-59cd9bb96bef"})
    assert by_conversation.status_code == 200 and by_conversation.get_json()["id"] == contact["id"]

    assert api.post("/contacts.update", json={"id": other["id"], "title": "Rear Admiral", "via": {"a": "b"}}).status_code == 202
    merged = api.post("/contacts.merge", json={"source_id": contact["id"], "destination_id": other["id"]})
    assert merged.status_code == 200 and merged.get_json()["merge_history"][0]["id"] == contact["id"]
    gone = api.post("/contacts.info", json={"id": contact["id"]})
    assert gone.status_code == 404 and gone.get_json()["merged_into"] == other["id"]
    unmerged = api.post("/contacts.unmerge", json={"destination_id": other["id"], "source_id": contact["id"]})
    assert unmerged.status_code == 200 and unmerged.get_json()["restored"]["id"] == contact["id"]
    never = api.post("/contacts.unmerge", json={"destination_id": other["id"], "source_id": contact["id"]})
    assert never.status_code == 404
    assert api.post("/contacts.merge", json={"source_id": contact["id"], "destination_id": other["id"]}).status_code == 200
    assert api.post("/contacts.info", json={"id": str(uuid.uuid4())}).status_code == 404
    assert api.post("/contacts.update", json={"id": str(uuid.uuid4()), "title": "x"}).status_code == 404
    assert api.post("/contacts.merge", json={"source_id": str(uuid.uuid4()), "destination_id": other["id"]}).status_code == 404

    taken = api.post("/contacts.create", json={"conversations": {"ea1cba21-2bd6-477c-9a40-59cd9bb96bef": "facebook"}})
    assert taken.status_code == 409
    assert api.post("/contacts.create", json={"display_name": 5}).status_code == 400
    assert api.post("/contacts.create", data=b"{").status_code == 400
    assert api.post("/contacts.list", json={"cursor": "forged"}).status_code == 400
    assert api.post("/contacts.import", data=b"[" + b" " * (17 * 1024 * 1024) + b"]").status_code == 413

    assert api.post("/contacts.delete", json={"id": other["id"]}).status_code == 202
    assert api.post("/contacts.delete", json={"id": other["id"]}).status_code == 404

    for path in GET_PATHS:
        assert api.get(path).status_code == 200


JWT_SECRET = "a-jwt-secret-of-at-least-32-bytes-for-hs256"


def test_403_and_health_down_fit_the_documented_schemas(make_config, start_service):
    service = start_service(make_config(system_token="s3cret-system-token", jwt_secret=JWT_SECRET))
    app = create_app(service.config, service)
    client = app.test_client()
    denied = client.post("/contacts.list", json={})
    assert denied.status_code == 403
    assert_documented("/contacts.list", "POST", denied)
    bad_jwt = client.post("/contacts.info", json={"id": _UUID}, headers={"Authorization": "Bearer x.y.z"})
    assert bad_jwt.status_code == 403
    assert_documented("/contacts.info", "POST", bad_jwt)
    token = jwt.encode({"sub": "tester"}, JWT_SECRET, algorithm="HS256")
    for credential in ("s3cret-system-token", token):
        allowed = client.post("/contacts.list", json={}, headers={"Authorization": f"Bearer {credential}"})
        assert allowed.status_code == 200
        assert_documented("/contacts.list", "POST", allowed)
    # The operational endpoints need no token.
    assert client.get("/actuator/health").status_code == 200

    # A failed stream thread: every health path is DOWN (503) with a reason. (Set by hand: a real
    # failure takes a broken broker; the HTTP answer is the same.)
    service.materializer.failure = RuntimeError("simulated failure")
    try:
        for path in ("/actuator/health", "/actuator/health/readiness", "/actuator/health/liveness"):
            response = client.get(path)
            assert response.status_code == 503
            assert response.get_json()["status"] == "DOWN" and "simulated failure" in response.get_json()["reason"]
            assert_documented(path, "GET", response)
    finally:
        service.materializer.failure = None




# --- the fuzz run --------------------------------------------------------------------------------
#
# FUZZ_REQUESTS requests in all: half generated by schemathesis from the document (positive and
# negative cases of every operation), half by hypothesis (hostile bytes and JSON, contact-shaped
# payloads with wrong parts, and valid writes against contacts that exist). Failures are
# collected, not shrunk, so one run reports every distinct problem and sends exactly its budget.

FUZZ_SEED = int(os.environ.get("FUZZ_SEED", str(uuid.uuid4().int % 2**32)))
_FUZZ_SETTINGS = dict(
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],
    print_blob=False,
)


def _error_problem(response) -> str | None:
    """Why a response breaks the rules every answer keeps (None if it keeps them)."""
    if response.status_code >= 500 and response.status_code != 503:
        return f"server error {response.status_code}"
    if 400 <= response.status_code < 600:
        try:
            body = json.loads(response.data if hasattr(response, "data") else response.content)
        except ValueError:
            return f"{response.status_code} without a JSON body"
        if not isinstance(body, dict) or not isinstance(body.get("message"), str) or not body["message"]:
            return f"{response.status_code} without a JSON message: {body!r:.200}"
    return None


class _Failures:
    def __init__(self):
        self.seen: dict[tuple, str] = {}

    def add(self, key: tuple, detail: str) -> None:
        self.seen.setdefault(key, detail)

    def report(self, sent: int) -> str:
        lines = [f"{len(self.seen)} distinct problems in {sent} requests (FUZZ_SEED={FUZZ_SEED}):"]
        lines += [f"- {key}: {detail[:1500]}" for key, detail in list(self.seen.items())[:20]]
        return "\n".join(lines)


def _announce(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


def test_fuzz_every_operation_from_the_document(app, capsys):
    """schemathesis over /openapi.json: no 5xx, only documented statuses and bodies, 4xx with a message,
    and no data the document calls invalid accepted."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    # Negative data counts as refused with any documented refusal: a generated body past the size
    # limit is a 413, not a 400.
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": [400, 403, 404, 409, 413]}}}
    )
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= set(CONTACT_PATHS) | (set(GET_PATHS) - {"/openapi.json"})
    strategies = []
    for operation in operations:
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        if operation.method.upper() == "POST":  # a GET without parameters has nothing to make invalid
            strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    budget = max(1, FUZZ_REQUESTS // 2)
    failures = _Failures()
    statuses: dict[int, int] = {}
    sent = 0
    started = time.perf_counter()

    @settings(max_examples=budget, **_FUZZ_SETTINGS)
    @given(st.one_of(strategies))
    def fuzz(case):
        nonlocal sent
        if sent >= budget:
            return
        sent += 1
        response = case.call()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        mode = case.meta.generation.mode.value if case.meta else "?"
        problem = _error_problem(response)
        if problem:
            failures.add((case.method, case.path, mode, response.status_code), f"{problem}; body sent: {case.body!r:.300}")
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, BaseExceptionGroup) as err:
            failures.add((case.method, case.path, mode, response.status_code, type(err).__name__), str(err))

    seed(FUZZ_SEED)(fuzz)()
    elapsed = time.perf_counter() - started
    _announce(
        capsys,
        f"schemathesis fuzz: {sent} requests in {elapsed:.1f} s (FUZZ_REQUESTS={FUZZ_REQUESTS}, seed {FUZZ_SEED}),"
        f" statuses {dict(sorted(statuses.items()))}",
    )
    assert sent > 0
    assert not failures.seen, failures.report(sent)


_VALIDATORS = {
    "/contacts.create": model.validate_create,
    "/contacts.import": model.validate_import_request,
    "/contacts.list": model.validate_list,
    "/contacts.info": model.validate_info,
    "/contacts.update": model.validate_update,
    "/contacts.delete": model.validate_id,
    "/contacts.merge": model.validate_merge_request,
    "/contacts.unmerge": model.validate_unmerge,
    "/contacts.dismiss_duplicates": model.validate_dismiss,
    "/contacts.lookup": model.validate_lookup,
    "/contacts.search": model.validate_search,
    "/contacts.duplicates": model.validate_duplicates,
}
_NAMES = (
    model.CONTACT_FIELDS
    + model.SERVED_FIELDS
    + model.ADDRESS_FIELDS
    + ("conversation_id", "source_id", "destination_id", "cursor", "page_size", "phone", "email", "query", "dry_run")
)
# Any code point, U+0000 and lone surrogates included (json.dumps escapes them).
_any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
_keys = st.one_of(st.sampled_from(_NAMES), _any_text)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _any_text,
    st.uuids().map(str),
    st.sampled_from(["", " ", "\x00", "\ud800", "x" * (model.MAX_STRING_LENGTH + 1)]),
)
_hostile_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5), max_leaves=24
)
_short_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
_valid_values = {
    "timezone": st.one_of(_short_text, st.integers(-model.MAX_TIMEZONE_OFFSET, model.MAX_TIMEZONE_OFFSET)),
    "via": st.dictionaries(_short_text.filter(bool), _short_text, max_size=3),
    "address": st.dictionaries(st.sampled_from(model.ADDRESS_FIELDS), _short_text, max_size=3),
    "conversations": st.dictionaries(st.uuids().map(str), st.sampled_from(["facebook", "twilio.sms", "chatplugin"]), max_size=2),
    "metadata": st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _short_text),
        lambda inner: st.dictionaries(_short_text.filter(bool), inner, max_size=3),
        max_leaves=8,
    ).filter(lambda value: isinstance(value, dict)),
}


def _field_value(name: str):
    return _valid_values.get(name, _short_text)


@st.composite
def _contact_payload(draw, valid: bool):
    names = draw(st.lists(st.sampled_from(model.CONTACT_FIELDS), min_size=1, max_size=5, unique=True))
    payload = {name: draw(_field_value(name)) for name in names}
    if not valid:  # break one part: a wrong value, an unknown or served field, an array in a map
        how = draw(st.integers(0, 3))
        name = draw(st.sampled_from(names))
        if how == 0:
            payload[name] = draw(_hostile_json)
        elif how == 1:
            payload[draw(_keys)] = draw(_hostile_json)
        elif how == 2:
            payload["metadata"] = {draw(_short_text.filter(bool)): draw(st.lists(_scalars, max_size=3))}
        else:
            payload[draw(st.sampled_from(model.MAP_FIELDS))] = draw(st.lists(_scalars, max_size=3))
    return payload


def _deep(n: int, opener: str, closer: str) -> bytes:
    return ('{"metadata":' + opener * n + "1" + closer * n + "}").encode()


@st.composite
def _request(draw):
    """(method, path, body bytes or None, content type, id picks) of one hostile or valid request."""
    path = draw(st.sampled_from(CONTACT_PATHS))
    kind = draw(st.sampled_from(["bytes", "json", "contact", "contact", "ids", "ids", "valid", "valid", "deep", "list"]))
    picks = draw(st.lists(st.integers(0, 2**16), min_size=2, max_size=2))
    if kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "json":
        body = json.dumps(draw(_hostile_json)).encode()
    elif kind == "contact":
        payload = draw(_contact_payload(valid=False))
        body = json.dumps(draw(st.sampled_from([payload, [payload], [{"title": "ok"}] * draw(st.integers(0, 4)) + [payload]]))).encode()
    elif kind == "deep":  # below Python's recursion limit: the model refuses it by depth
        n = draw(st.integers(model.MAX_METADATA_DEPTH - 1, 400))
        body = draw(st.sampled_from([_deep(n, '{"a":', "}"), _deep(n, "[", "]")]))
    elif kind == "list":
        body = json.dumps(
            draw(st.fixed_dictionaries({}, optional={"cursor": st.one_of(st.none(), _any_text, st.just("@cursor")), "page_size": _scalars}))
        ).encode()
        path = "/contacts.list"
    else:  # "ids" and "valid" use the ids of contacts that exist ("@id0", "@id1" are replaced at send time)
        ident = st.one_of(st.just("@id0"), st.just("@id1"), st.uuids().map(str), _scalars) if kind == "ids" else st.sampled_from(["@id0", "@id1"])
        payloads = {
            "/contacts.create": st.just({"display_name": "fuzz"}) if kind == "ids" else _contact_payload(valid=True),
            "/contacts.import": st.one_of(
                st.lists(_contact_payload(valid=True), min_size=1, max_size=3),
                st.fixed_dictionaries(
                    {"contacts": st.lists(_contact_payload(valid=True), min_size=1, max_size=3), "upsert_by": st.sampled_from(["email", "phone"])}
                ),
            ),
            "/contacts.list": st.fixed_dictionaries({}, optional={"page_size": st.integers(1, 50), "cursor": st.just("@cursor")}),
            "/contacts.info": st.one_of(st.fixed_dictionaries({"id": ident}), st.fixed_dictionaries({"conversation_id": ident})),
            "/contacts.update": st.builds(lambda i, p: {"id": i, **p}, ident, _contact_payload(valid=kind == "valid")),
            "/contacts.delete": st.fixed_dictionaries({"id": ident}),
            "/contacts.merge": st.fixed_dictionaries({"source_id": ident, "destination_id": ident}, optional={"dry_run": st.booleans()}),
            # "@pair": the latest pair the run merged, so unmerges also succeed
            "/contacts.dismiss_duplicates": st.fixed_dictionaries({"ids": st.lists(ident, min_size=0, max_size=3)}),
            "/contacts.unmerge": st.one_of(st.fixed_dictionaries({"destination_id": ident, "source_id": ident}), st.just({"@pair": True})),
            "/contacts.lookup": st.fixed_dictionaries({"via": _valid_values["via"]}),
            "/contacts.search": st.fixed_dictionaries(
                {"query": st.one_of(_short_text, st.sampled_from(["seed", "fuzz 1", "+49 170 1234", "a@b.c"]))},
                optional={"page_size": st.integers(1, 50), "cursor": st.just("@cursor")},
            ),
            "/contacts.duplicates": st.fixed_dictionaries({}, optional={"id": ident, "page_size": st.integers(1, 50), "cursor": st.just("@cursor")}),
        }
        body = json.dumps(draw(payloads[path])).encode()
    content_type = draw(
        st.sampled_from(["application/json"] * 4 + ["application/x-www-form-urlencoded", "text/plain", None, "application/json; charset=utf-8"])
    )
    method = draw(st.sampled_from(["POST"] * 19 + ["GET"]))
    return method, path, body, content_type, picks


def test_fuzz_hostile_and_valid_bodies_on_every_endpoint(app, capsys):
    """Hypothesis-made bodies on every endpoint: no 5xx, every 4xx a JSON message; a body the model
    refuses is a 400 naming the same field; a body the model accepts is never a 400 (bar a cursor
    this service did not give out); every answer of a POST fits the document."""
    client = app.test_client()
    ids = [client.post("/contacts.create", json={"display_name": f"seed {i}"}).get_json()["id"] for i in range(4)]
    cursors = ["", None]
    merged_pairs: list[tuple[str, str]] = []  # (destination, source) of the run's merges
    budget = max(1, FUZZ_REQUESTS - FUZZ_REQUESTS // 2)
    failures = _Failures()
    statuses: dict[int, int] = {}
    sent = 0
    started = time.perf_counter()

    def substitute(raw: bytes, picks: list[int]) -> bytes:
        raw = raw.replace(b'"@id0"', json.dumps(ids[picks[0] % len(ids)]).encode())
        raw = raw.replace(b'"@id1"', json.dumps(ids[picks[1] % len(ids)]).encode())
        if merged_pairs:
            destination, source = merged_pairs[-1]
            raw = raw.replace(b'{"@pair": true}', json.dumps({"destination_id": destination, "source_id": source}).encode())
        return raw.replace(b'"@cursor"', json.dumps(cursors[picks[0] % len(cursors)]).encode())

    @settings(max_examples=budget, **_FUZZ_SETTINGS)
    @given(_request())
    def fuzz(request):
        nonlocal sent
        if sent >= budget:
            return
        method, path, body, content_type, picks = request
        body = substitute(body, picks)
        sent += 1
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.open(path, method=method, data=body, headers=headers)
        status = response.status_code
        statuses[status] = statuses.get(status, 0) + 1
        key = (method, path, status)
        shown = f"body sent: {body[:300]!r}; answer: {response.data[:300]!r}"
        problem = _error_problem(response)
        if problem:
            failures.add(key, f"{problem}; {shown}")
            return
        if method != "POST":
            if status != 405:
                failures.add(key, f"a GET of a POST endpoint should be 405; {shown}")
            return
        try:
            assert_documented(path, "POST", response)
        except AssertionError as err:
            failures.add(key + ("undocumented",), f"{err}; {shown}")
        # The oracle: what model.py says of the body the server parsed.
        try:
            # Only an empty body is "no body"; white space alone is not JSON (the document says so).
            payload = json.loads(body) if body else ({} if path != "/contacts.list" else None)
        except ValueError:
            if status != 400:
                failures.add(key + ("not JSON",), f"a body that is not JSON should be a 400; {shown}")
            return
        try:
            _VALIDATORS[path](payload)
            refused = None
        except model.ValidationError as err:
            refused = err
        answer = response.get_json(silent=True) or {}
        if refused is not None and (status != 400 or answer.get("field") != refused.field):
            failures.add(key + ("oracle",), f"the model refuses field {refused.field!r} ({refused.message}); {shown}")
        elif refused is None and status == 400 and answer.get("field") != "cursor":
            failures.add(key + ("oracle",), f"the model accepts it; {shown}")
        if status in (200, 201) and path == "/contacts.create":
            ids.append(answer["id"])
        if status == 200 and path == "/contacts.list":
            cursors.extend(c for c in answer["pagination_data"].values() if isinstance(c, str))
        if status == 200 and path in ("/contacts.search", "/contacts.duplicates"):
            cursors.extend(c for c in answer["pagination_data"].values() if isinstance(c, str))
        if status == 200 and path == "/contacts.merge" and "id" in answer:  # not a dry run
            source = payload["source_id"].lower()
            ids[:] = [i for i in ids if i != source] or [answer["id"]]
            merged_pairs.append((answer["id"], source))
        if status == 200 and path == "/contacts.unmerge":
            merged_pairs[:] = [p for p in merged_pairs if p != (answer["destination"]["id"], answer["restored"]["id"])]
            ids.append(answer["restored"]["id"])
        if status == 202 and path == "/contacts.delete" and len(ids) > 1:
            ids[:] = [i for i in ids if i != payload["id"].lower()] or ids

    seed(FUZZ_SEED)(fuzz)()
    elapsed = time.perf_counter() - started
    _announce(
        capsys,
        f"hypothesis fuzz: {sent} requests in {elapsed:.1f} s (FUZZ_REQUESTS={FUZZ_REQUESTS}, seed {FUZZ_SEED}),"
        f" statuses {dict(sorted(statuses.items()))}",
    )
    assert sent > 0
    assert not failures.seen, failures.report(sent)
