"""Unit and property tests of contacts_streams.shapes, the layer the request shapes are declared
in: one UUID check, and each request's declaration both validates and documents it, so that
whatever the validation accepts, the generated schema accepts too."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from contacts_streams import model, shapes
from contacts_streams.shapes import Object, Text, Uuid, ValidationError, is_uuid

UUID = "6b80b10c-ae6e-4995-844d-c56c4da11623"


@pytest.mark.parametrize("text", [UUID, UUID.upper(), str(uuid.UUID(int=0x2D73F3FA75EE4A8D82C2B57115486355)), UUID.encode()])
def test_a_uuid_in_any_case_str_or_bytes_is_one(text):
    assert is_uuid(text)


@pytest.mark.parametrize(
    "text",
    [UUID + "\n", UUID[:-1], UUID.replace("-", ""), UUID.replace("b", "g"), "x" * 32 + "----", b"x" * 32 + b"----", 5, None, ""],
)
def test_anything_else_is_not_a_uuid(text):
    assert not is_uuid(text)


def test_the_pattern_in_the_document_is_the_check():
    schema = Uuid().schema()
    assert schema["pattern"] == shapes.UUID_PATTERN and schema["minLength"] == schema["maxLength"] == 36
    assert model.UPDATE.schema()["properties"]["id"] == schema


def test_an_object_names_unknown_fields_and_requires_what_it_declares():
    shape = Object({"name": Text(5), "id": Uuid()}, required=("id",), quiet=("created_at",))
    ignored: list[str] = []
    assert shape.check({"id": UUID.upper(), "nick": 1, "created_at": 2}, "", ignored) == {"id": UUID}
    assert ignored == ["nick"]
    with pytest.raises(ValidationError) as missing:
        shape.check({"name": "x"}, "[2]")
    assert (missing.value.field, missing.value.message) == ("[2].id", "[2].id is required")
    with pytest.raises(ValidationError) as long:
        shape.check({"id": UUID, "name": "toolong"}, "")
    assert (long.value.field, long.value.message) == ("name", "name must be at most 5 characters long")
    with pytest.raises(ValidationError) as not_object:
        shape.check([], "")
    assert not_object.value.message == "the request body must be a JSON object, not an array"


def test_served_schemas_drop_the_request_limits():
    via = model.CONTACT.fields["via"]
    assert "maxProperties" in via.schema() and "maxProperties" not in via.schema(served=True)
    assert via.schema(served=True)["additionalProperties"] == {"type": "string"}


# --- validation and document agree: what the validation accepts, the schema accepts ---------------

_COMPONENTS = {name: shape.schema() for name, shape in model.REQUESTS.items()}


def _resolve(node):
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(_COMPONENTS[node["$ref"].rsplit("/", 1)[1]])
        return {key: _resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item) for item in node]
    return node


_VALIDATORS = {name: OAS30Validator(_resolve(schema), format_checker=oas30_format_checker) for name, schema in _COMPONENTS.items()}
_NAMES = sorted({name for shape in model.REQUESTS.values() if isinstance(shape, Object) for name in shape.fields} | {"nickname"})
_OTHER = str(uuid.UUID(int=1))
# Values valid for some field (so that bodies often pass) and a few that are not.
_GOOD = st.sampled_from(
    [
        "x", "", 5, 1, 20, -3.5, True, False, None, UUID, UUID.upper(), [UUID, _OTHER], "email",
        {"email": "a@b.org"}, {"city": "Paris", "zip": "1"}, {UUID: "facebook"}, {"k": {"n": 1, "b": None}},
    ]
)
_ATOMS = st.one_of(_GOOD, st.integers(-(2**64), 2**64), st.floats(allow_nan=False), st.text(max_size=20))
_VALUES = st.recursive(
    _ATOMS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_NAMES) | st.sampled_from([UUID, "city", "k"]), inner, max_size=4),
    max_leaves=12,
)


_VALID = {
    "id": UUID, "conversation_id": UUID.upper(), "source_id": UUID, "destination_id": _OTHER, "ids": [UUID, _OTHER],
    "query": "ada", "cursor": "", "page_size": 5, "pageSize": None, "dry_run": True, "upsert_by": "email",
    "via": {"email": "a@b.org"}, "address": {"city": "Paris", "zip": "1"}, "conversations": {UUID: "facebook"},
    "metadata": {"k": {"n": 1, "b": None}}, "timezone": -3.5, "contacts": [{"title": "x"}, {"nick": 1, "via": {"a": ""}}],
}


def _body(name: str):
    """Bodies made mostly of the request's own fields with values valid for them."""
    shape = model.REQUESTS[name]
    own = sorted(shape.fields) if isinstance(shape, Object) else list(model.CONTACT_FIELDS) + ["contacts", "upsert_by"]
    keys = st.lists(st.sampled_from(own) | st.sampled_from(_NAMES), max_size=5, unique=True)
    obj = keys.flatmap(lambda names: st.fixed_dictionaries({key: st.sampled_from([_VALID.get(key, "x")] * 4 + [None]) | _GOOD | _VALUES for key in names}))
    return st.tuples(st.just(name), obj | st.lists(obj, max_size=3))


_BODIES = st.sampled_from(sorted(model.REQUESTS)).flatmap(_body)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=_BODIES)
def test_what_a_shape_accepts_its_schema_accepts(case):
    name, body = case
    try:
        model.REQUESTS[name].check(body, "", [])
    except ValidationError:
        return
    assert _VALIDATORS[name].is_valid(body), (name, body)
