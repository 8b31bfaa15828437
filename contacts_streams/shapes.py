"""A small declaration layer: each shape both validates a JSON value and says itself as an
OpenAPI 3.0 schema, so that the API's request shapes are written once (in ``model``) and the
validation and ``/openapi.json`` cannot drift apart.

Why our own and not Pydantic: the API's errors are sentences naming a path (``via.email``,
``[3].display_name``) whose wording clients and tests rely on, unknown fields are ignored but
reported by path, "" removes in an update, and the document is OpenAPI 3.0 (``nullable``),
not the JSON Schema 2020-12 Pydantic emits. Wrapping Pydantic would take a translation table for
its error types and a schema converter, and validation is well under 1% of a write's cost (see
``python -m bench.validation``).

A shape's ``check(value, path, ignored)`` returns the value checked and normalized, or raises
:class:`ValidationError` (``field`` the path, ``message`` a sentence naming it), appending the
paths of the fields it ignored to ``ignored`` (when not None). ``schema(served=False)`` is its
OpenAPI schema as a request; ``served=True`` is the same field as the service serves it back,
without the request limits (a merge may grow a contact past them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID_RE = re.compile(UUID_PATTERN.replace("$", r"\Z"))
_UUID_BYTES_RE = re.compile(_UUID_RE.pattern.encode())
UUID_LENGTH = 36
UUID_EXAMPLE = "6b80b10c-ae6e-4995-844d-c56c4da11623"


def is_uuid(text: Any) -> bool:
    """Whether ``text`` (str or bytes) is a UUID: hyphenated 8-4-4-4-12 hex digits, any case."""
    if isinstance(text, str):
        return len(text) == UUID_LENGTH and _UUID_RE.match(text) is not None
    if isinstance(text, (bytes, bytearray)):
        return len(text) == UUID_LENGTH and _UUID_BYTES_RE.match(text) is not None
    return False


class ValidationError(ValueError):
    """Bad input. ``field`` is the path of the offending value, ``message`` a sentence naming it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ValidationError({self.field!r}, {self.message!r})"


# --- paths and primitive checks -----------------------------------------------------------------


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def key_path(prefix: str, key: Any) -> str:
    text = key if isinstance(key, str) else repr(key)
    if len(text) > 64:
        text = text[:64] + "..."
    if not text.isascii():
        # The path goes back to the client in the error: an unpaired surrogate must not make
        # the error itself unencodable.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return join(prefix, text)


def where(prefix: str) -> str:
    return prefix if prefix else "the request body"


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_characters(text: str, path: str, subject: str) -> None:
    """U+0000 is the list index's separator and a lone surrogate cannot be stored as UTF-8."""
    if "\x00" in text:
        raise ValidationError(path, f"{subject} must not contain the character U+0000")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(path, f"{subject} must be valid Unicode (it has an unpaired surrogate)") from None


def check_text(value: Any, path: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(path, f"{path} must be a string, not {type_name(value)}")
    if len(value) > max_length:
        raise ValidationError(path, f"{path} must be at most {max_length} characters long")
    check_characters(value, path, path)
    return value


def check_key(key: Any, path: str, max_length: int) -> str:
    """A map key: a non-empty string; ``path`` is the map's path."""
    if not isinstance(key, str):
        raise ValidationError(path, f"{path} keys must be strings")
    if key == "":
        raise ValidationError(path, f"{path} keys must not be empty")
    if len(key) > max_length:
        raise ValidationError(path, f"{path} keys must be at most {max_length} characters long")
    check_characters(key, path, f"{path} keys")
    return key


def normalize_uuid(value: Any, path: str = "id") -> str:
    """A UUID string (any version, hyphenated 8-4-4-4-12, any case) in lowercase canonical form."""
    if not isinstance(value, str):
        raise ValidationError(path, f"{path} must be a UUID string, not {type_name(value)}")
    if not is_uuid(value):
        raise ValidationError(path, f"{path} must be a UUID (like {UUID_EXAMPLE})")
    return value.lower()


def require_object(payload: Any, prefix: str) -> dict:
    if not isinstance(payload, dict):
        raise ValidationError(prefix, f"{where(prefix)} must be a JSON object, not {type_name(payload)}")
    return payload


def _described(schema: dict, doc: str) -> dict:
    if doc:
        schema["description"] = doc
    return schema


# --- shapes -------------------------------------------------------------------------------------


class Shape:
    """A JSON value: ``check`` validates it, ``schema`` documents it (see the module docstring)."""

    doc = ""

    def check(self, value: Any, path: str, ignored: list[str] | None = None) -> Any:
        raise NotImplementedError

    def schema(self, served: bool = False) -> dict:
        raise NotImplementedError


class Anything(Shape):
    """A field accepted and ignored whatever its value (the fields the service sets)."""

    def __init__(self, doc: str):
        self.doc = doc

    def check(self, value, path, ignored=None):
        return value

    def schema(self, served=False):
        return {"description": self.doc}


class Text(Shape):
    """A string of at most ``max_length`` characters (the limit is a request's only); ``None``
    passes as None when ``nullable``; ``not_blank`` refuses white space alone."""

    def __init__(self, max_length: int, doc: str = "", *, min_length: int = 0, not_blank: bool = False, nullable: bool = False):
        self.max_length, self.doc, self.min_length = max_length, doc, min_length
        self.not_blank, self.nullable = not_blank, nullable

    def check(self, value, path, ignored=None):
        if value is None and self.nullable:
            return None
        if self.nullable and not isinstance(value, str):
            raise ValidationError(path, f"{path} must be a string or null, not {type_name(value)}")
        check_text(value, path, self.max_length)
        if self.not_blank and not value.strip():
            raise ValidationError(path, f"{path} must not be blank")
        return value

    def schema(self, served=False):
        schema: dict[str, Any] = {"type": "string"}
        if not served:
            schema["maxLength"] = self.max_length
            if self.min_length:
                schema["minLength"] = self.min_length
            if self.not_blank:
                schema["pattern"] = r"\S"
        if self.nullable:
            schema["nullable"] = True
        return _described(schema, self.doc)


class Uuid(Shape):
    """A UUID in any case, served in lowercase."""

    def __init__(self, doc: str = "", *, nullable: bool = False):
        self.doc, self.nullable = doc, nullable

    def check(self, value, path, ignored=None):
        if value is None and self.nullable:
            return None
        return normalize_uuid(value, path)

    def schema(self, served=False):
        schema: dict[str, Any] = {
            "type": "string",
            "format": "uuid",
            "pattern": UUID_PATTERN,
            "minLength": UUID_LENGTH,
            "maxLength": UUID_LENGTH,
        }
        _described(schema, self.doc)
        if self.nullable:
            schema["nullable"] = True
        return schema


class Integer(Shape):
    """An integer from ``minimum`` to ``maximum``; null (when ``nullable``) passes as None."""

    def __init__(self, minimum: int, maximum: int, doc: str = "", *, default: int | None = None, nullable: bool = False):
        self.minimum, self.maximum, self.doc, self.default, self.nullable = minimum, maximum, doc, default, nullable

    def check(self, value, path, ignored=None):
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(path, f"{path} must be an integer, not {type_name(value)}")
        if not self.minimum <= value <= self.maximum:
            raise ValidationError(path, f"{path} must be between {self.minimum} and {self.maximum}")
        return value

    def schema(self, served=False):
        schema: dict[str, Any] = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        if self.default is not None:
            schema["default"] = self.default
        if self.nullable:
            schema["nullable"] = True
        return _described(schema, self.doc)


class Boolean(Shape):
    def __init__(self, doc: str = "", *, default: bool | None = None):
        self.doc, self.default = doc, default

    def check(self, value, path, ignored=None):
        if not isinstance(value, bool):
            raise ValidationError(path, f"{path} must be a boolean, not {type_name(value)}")
        return value

    def schema(self, served=False):
        schema: dict[str, Any] = {"type": "boolean"}
        if self.default is not None:
            schema["default"] = self.default
        return _described(schema, self.doc)


class Choice(Shape):
    """One of ``values`` (strings), or null."""

    def __init__(self, values: tuple[str, ...], doc: str = ""):
        self.values, self.doc = values, doc

    def check(self, value, path, ignored=None):
        if value is not None and value not in self.values:
            raise ValidationError(path, f"{path} must be one of {', '.join(self.values)} (or null)")
        return value

    def schema(self, served=False):
        return _described({"type": "string", "enum": [*self.values, None], "nullable": True}, self.doc)


class StringMap(Shape):
    """An object of the client's own keys (non-empty, at most ``max_key_length``) to strings;
    ``min_keys`` refuses fewer keys."""

    def __init__(
        self, values: Text, max_keys: int, max_key_length: int, doc: str = "", *, min_keys: int = 0, request_doc: str = ""
    ):
        self.values, self.max_keys, self.max_key_length = values, max_keys, max_key_length
        self.doc, self.min_keys, self.request_doc = doc, min_keys, request_doc

    def check(self, value, path, ignored=None):
        if not isinstance(value, dict):
            raise ValidationError(path, f"{path} must be an object of strings, not {type_name(value)}")
        if len(value) > self.max_keys:
            raise ValidationError(path, f"{path} must have at most {self.max_keys} keys")
        out = {}
        for key, item in value.items():
            check_key(key, path, self.max_key_length)
            out[key] = self.values.check(item, key_path(path, key))
        if len(out) < self.min_keys:
            raise ValidationError(path, f"{path} must have at least one key")
        return out

    def schema(self, served=False):
        schema: dict[str, Any] = {"type": "object"}
        if not served and self.min_keys:
            schema["minProperties"] = self.min_keys
        schema["additionalProperties"] = self.values.schema(served)
        if not served:
            schema["maxProperties"] = self.max_keys
        return _described(schema, self.doc + ("" if served else self.request_doc))


class Removable(Shape):
    """A map field of an update: "" removes it whole, else it updates key by key."""

    def __init__(self, shape: Shape, doc: str):
        self.shape, self.doc = shape, doc

    def check(self, value, path, ignored=None):
        if value == "":
            return ""
        return self.shape.check(value, path, ignored)

    def schema(self, served=False):
        inner = self.shape.schema(served)
        return {"anyOf": [inner, {"type": "string", "enum": [""]}], "description": inner.get("description", "") + self.doc}


class Object(Shape):
    """A JSON object of declared ``fields`` (name -> shape), checked in their order.

    Unknown keys are ignored and their paths noted (``quiet`` names are known but not noted:
    the fields the service sets). ``required`` names are refused when absent ("X is required");
    ``first`` names are checked before unknown keys are noted (an update's id); ``one_of``: a
    pair of which exactly one must be given. ``drop_empty`` leaves out empty maps (a create);
    ``strict_served``: the served form refuses keys it does not declare; ``request_doc`` is added
    to ``doc`` in the request form only; ``noun`` names what a non-object should have been.
    """

    def __init__(
        self,
        fields: dict[str, Shape],
        doc: str = "",
        *,
        required: tuple[str, ...] = (),
        first: tuple[str, ...] = (),
        quiet: tuple[str, ...] = (),
        one_of: tuple[str, str] | None = None,
        drop_empty: bool = False,
        nullable: bool = False,
        request_doc: str = "",
        strict_served: bool = False,
        extra_schema: dict | None = None,
        noun: str = "a JSON object",
    ):
        self.fields, self.doc, self.required, self.first, self.quiet = fields, doc, required, first, quiet
        self.one_of, self.drop_empty, self.nullable = one_of, drop_empty, nullable
        self.request_doc, self.strict_served, self.extra_schema = request_doc, strict_served, extra_schema or {}
        self.noun = noun
        self.known = frozenset(fields) | frozenset(quiet)
        self._checked = tuple((name, shape) for name, shape in fields.items() if not isinstance(shape, Anything))

    def note_unknown(self, payload: dict, prefix: str, ignored: list[str] | None) -> None:
        if ignored is None:
            return
        known = self.known
        for key in payload:
            if key not in known:
                ignored.append(key_path(prefix, key))

    def check(self, value, path, ignored=None):
        """The declared fields present in ``value``, checked, in declaration order."""
        if not isinstance(value, dict):
            raise ValidationError(path, f"{where(path)} must be {self.noun}, not {type_name(value)}")
        payload = value
        out: dict[str, Any] = {}
        for name in self.first:
            out[name] = self._field(payload, name, path, ignored)
        self.note_unknown(payload, path, ignored)
        if self.one_of:
            a, b = self.one_of
            if a in payload and b in payload:
                raise ValidationError(b, f"give either {a} or {b}, not both")
            if a not in payload and b not in payload:
                raise ValidationError(a, f"{a} or {b} is required")
        for name, shape in self._checked:
            if name in self.first:
                continue
            if name not in payload:
                if name in self.required:
                    raise ValidationError(join(path, name), f"{join(path, name)} is required")
                continue
            checked = shape.check(payload[name], join(path, name), ignored)
            if self.drop_empty and isinstance(checked, dict) and not checked:
                continue
            out[name] = checked
        return out

    def _field(self, payload: dict, name: str, path: str, ignored: list[str] | None) -> Any:
        if name not in payload:
            raise ValidationError(join(path, name), f"{join(path, name)} is required")
        return self.fields[name].check(payload[name], join(path, name), ignored)

    def schema(self, served=False):
        if self.one_of and not served:
            a, b = self.one_of
            return _described(
                {
                    "oneOf": [
                        {"type": "object", "properties": {a: self.fields[a].schema(), b: {"not": {}}}, "required": [a]},
                        {"type": "object", "properties": {b: self.fields[b].schema(), a: {"not": {}}}, "required": [b]},
                    ]
                },
                self.doc,
            )
        schema: dict[str, Any] = {"type": "object"}
        if self.nullable:
            schema["nullable"] = True
        schema["properties"] = {name: shape.schema(served) for name, shape in self.fields.items()}
        if self.required:
            schema["required"] = list(self.required)
        if served and self.strict_served:
            schema["additionalProperties"] = False
        schema.update(self.extra_schema)
        return _described(schema, self.doc + ("" if served else self.request_doc))


def ref(name: str) -> dict:
    """A reference to the document's component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


class Custom(Shape):
    """A shape whose check and schema are functions: for the few values a combination of the
    shapes above cannot say (metadata's nesting, conversations' UUID keys)."""

    def __init__(self, check: Callable[[Any, str, list[str] | None], Any], schema: Callable[[bool], dict]):
        self._check, self._schema = check, schema

    def check(self, value, path, ignored=None):
        return self._check(value, path, ignored)

    def schema(self, served=False):
        return self._schema(served)
