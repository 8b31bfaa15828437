"""The contact model: payload validation and the rules of contacts, as functions of plain data.

A contact is a plain dict in the HTTP API's JSON shape (snake_case). Absent fields are omitted,
never None, and so are empty maps. Keys, in this order::

    id, display_name, avatar_url, title, timezone, gender, locale, organization_name,
    via, address, conversations, metadata, created_at, updated_at, merge_history

``timezone`` is a str (possibly ""), an int or a float, served back as sent; ``via`` is
str -> str; ``address`` has a subset of ADDRESS_FIELDS (str values); ``conversations`` is
conversation id (lowercase UUID) -> source; ``metadata`` is any JSON object without arrays;
``created_at`` / ``updated_at`` are ISO 8601 UTC with milliseconds (``2021-11-16T13:21:03.580Z``);
``merge_history`` is a list of entries, oldest first, one per contact merged into this one
(flattened: a source's own entries come along), each the source as it was when merged (its
fields, ``id``, ``created_at``, ``updated_at``, never its own ``merge_history``) plus:

- ``merged_at``: when it was merged (ISO 8601, like ``updated_at``);
- ``merged_into``: the contact it was merged into then (an entry that came along with a later
  merge names the contact it first went into, so an unmerge knows which entries go back);
- ``gained``: the field paths the destination took from it: ``display_name`` (and the other
  scalars), ``via.<key>``, ``address.<key>``, ``metadata.<top-level key>``,
  ``conversations.<id>``; the part after the first dot is the whole key (keys may hold dots).

Entries written before these three fields existed (full snapshots) have none of them: absent
means unknown, not "nothing gained".

Unknown fields are ignored, not refused (DESIGN.md, "HTTP API"): at the top level of every
request and inside ``address``; ``via``, ``metadata`` and ``conversations`` keys are the
client's own, so nothing there is unknown. Each ``validate_*`` takes an optional ``ignored``
list and appends the path of every field it ignored (``displayName``, ``address.addressLine1``,
``[3].nickname``); the API names them in the ``X-Contacts-Ignored-Fields`` header. The fields
the service sets (``SERVED_FIELDS``: ``id`` where it is not the request's own, ``created_at``,
``updated_at``, ``merge_history``) are accepted and ignored too, so a fetched contact can be
sent back as it is; they are known fields and not named as ignored. ``pageSize`` (the inbox's
spelling) is read as ``page_size``; when both are given ``page_size`` wins and ``pageSize`` is
named as ignored (it is still checked: a known field with a wrong value is a 400).

Validation (``validate_*``) raises only :class:`ValidationError`, whatever the input: its
``field`` is the path of the offending value (``via.email``, ``address.postcode``,
``[3].display_name`` inside an import, ``""`` for the request body as a whole) and its message
names that path. The API layer turns it into ``400 {"message": ...}``. Each request body is
declared once as a shape (``REQUESTS``, built from ``contacts_streams.shapes``): ``validate_*``
check with it and api/openapi.py documents it, so the two cannot disagree.

Limits (each refused with a ValidationError naming the field; lengths count characters):

=============================  ===========  ==================================================
name                           value        applies to
=============================  ===========  ==================================================
MAX_STRING_LENGTH              2048         every string field, via/address values,
                                            conversation sources, timezone strings
MAX_KEY_LENGTH                 256          via and metadata keys (at any depth)
MAX_VIA_KEYS                   100          keys in via (also after an update that adds
                                            keys: merges may pass it, and a contact past
                                            it still takes updates that do not grow it)
MAX_CONVERSATIONS              1000         conversations in one create/import/update payload
                                            (merges and auto-creation may grow a contact past
                                            it: conversations are never refused there)
MAX_METADATA_BYTES             65536        metadata as compact UTF-8 JSON (also after an
                                            update that grows it; merges may pass it)
MAX_METADATA_DEPTH             8            nesting of objects inside metadata (metadata
                                            itself is depth 1)
MAX_METADATA_STRING_LENGTH     16384        a string value inside metadata
MAX_TIMEZONE_OFFSET            86400        absolute value of a numeric timezone (any unit up
                                            to seconds fits)
metadata integers              int64        -2**63 .. 2**63-1
MAX_IMPORT                     10000        contacts in one import
MAX_PAGE_SIZE                  1000         contacts.list page_size (DEFAULT_PAGE_SIZE 20)
MAX_CURSOR_LENGTH              1024         contacts.list cursor
MAX_MERGE_HISTORY              1000         merge_history entries of one contact: a merge past
                                            it is refused with TooLarge (413), never truncated
=============================  ===========  ==================================================

A contact's encoded size is bounded too, by the contacts topic's record limit (about 1 MB):
the publisher refuses a record over it (TooLarge, 413) before anything is produced. These
limits alone do not keep a contact under it (100 via values of 2048 four-byte characters are
800 KB; merges add the source and its snapshot), so that check is what bounds a contact.

No string (value or key, at any depth) may contain U+0000 (the sort key uses it as a separator)
or an unpaired surrogate (it could not be encoded as UTF-8). Numbers must be finite.

Rules worth knowing, where DESIGN.md leaves room:

- create/import store values as sent, "" included (the seed's ``"timezone": ""`` comes back
  as ""); only an update reads "" as "remove". Empty maps are dropped.
- update: a field set to "" is removed; ``via``, ``address``, ``metadata`` *and*
  ``conversations`` update key by key (top-level keys of metadata; a nested object value
  replaces the previous value whole), "" removes a key, and a map set to "" is removed whole.
  Conversations follow the same rule so that linking one conversation never drops the others.
- merge: a destination value that is present and not "" wins; "" counts as a gap the source
  fills (that is what "" means to an update). Maps key by key with the same rule (top-level
  metadata keys), conversations united (the destination's source string wins a conflict).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import threading
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contacts_streams.shapes import (
    Anything,
    Boolean,
    Choice,
    Custom,
    Integer,
    Object,
    Removable,
    Shape,
    StringMap,
    Text,
    Uuid,
    ValidationError,
    check_key,
    check_text,
    is_uuid,
    key_path,
    normalize_uuid,
    ref,
    require_object,
    type_name,
    where,
)

__all__ = [
    "ADDRESS_FIELDS",
    "CONTACT_FIELDS",
    "DEFAULT_PAGE_SIZE",
    "MAX_CONVERSATIONS",
    "MAX_CURSOR_LENGTH",
    "MAX_IMPORT",
    "MAX_KEY_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_STRING_LENGTH",
    "MAX_PAGE_SIZE",
    "MAX_STRING_LENGTH",
    "MAX_TIMEZONE_OFFSET",
    "MAX_VIA_KEYS",
    "MAX_MERGE_HISTORY",
    "SERVED_FIELDS",
    "TooLarge",
    "ValidationError",
    "apply_update",
    "contact_id_for_conversation",
    "default_display_name",
    "iso_to_millis",
    "is_uuid",
    "merge_contacts",
    "millis_to_iso",
    "new_contact",
    "normalize_uuid",
    "now_ms",
    "same_json",
    "sort_key",
    "validate_create",
    "validate_id",
    "validate_import",
    "validate_info",
    "validate_list",
    "validate_merge",
    "validate_merge_request",
    "validate_lookup",
    "validate_search",
    "validate_duplicates",
    "merge_preview",
    "group_conflicts",
    "unmerge",
    "NotMerged",
    "validate_update",
]

# --- fields and limits --------------------------------------------------------------------------

SCALAR_FIELDS = (
    "display_name",
    "avatar_url",
    "title",
    "timezone",
    "gender",
    "locale",
    "organization_name",
)
MAP_FIELDS = ("via", "address", "conversations", "metadata")
#: The fields a client may write (create, import, update).
CONTACT_FIELDS = SCALAR_FIELDS + MAP_FIELDS
#: The fields only the service sets; sent by a client (a contact it fetched) they are ignored.
SERVED_FIELDS = ("id", "created_at", "updated_at", "merge_history")
ADDRESS_FIELDS = (
    "organization_name",
    "address_line1",
    "address_line2",
    "postcode",
    "city",
    "state",
    "country",
)
_ORDER = ("id",) + CONTACT_FIELDS + ("created_at", "updated_at", "merge_history")

MAX_STRING_LENGTH = 2048
MAX_KEY_LENGTH = 256
MAX_VIA_KEYS = 100
MAX_CONVERSATIONS = 1000
MAX_METADATA_BYTES = 65_536
MAX_METADATA_DEPTH = 8
MAX_METADATA_STRING_LENGTH = 16_384
MAX_TIMEZONE_OFFSET = 86_400
MAX_IMPORT = 10_000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 20
MAX_CURSOR_LENGTH = 1024
MAX_MERGE_HISTORY = 1000
#: What a merge_history entry adds to the source's fields.
HISTORY_ENTRY_FIELDS = ("merged_at", "merged_into", "gained")

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class TooLarge(ValueError):
    """A write that would make a contact too large to store (413): ``field`` may be None."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


# --- the request shapes -------------------------------------------------------------------------
# Declared once: `validate_*` below check with them and api/openapi.py documents them.

_NO_NUL = "No string may contain U+0000 or an unpaired surrogate."
_IGNORED = (
    "Unknown fields (here and inside `address`) are ignored and named in the X-Contacts-Ignored-Fields"
    " response header; the fields the service sets ({served}) are accepted and ignored, so a fetched"
    " contact can be sent back as it is."
)
_UPDATED_BY_KEY = ' Updated key by key: a key set to "" is removed; the field set to "" is removed whole.'
_SELF_MERGE = "destination_id must differ from source_id: a contact cannot be merged into itself"
UPSERT_KINDS = ("email", "phone")
MIN_DISMISSED, MAX_DISMISSED = 2, 100
MAX_QUERY_LENGTH = 256


def _text(doc: str = "") -> Text:
    return Text(MAX_STRING_LENGTH, doc)


def _check_timezone(value: Any, path: str, ignored: list[str] | None = None) -> str | int | float:
    if isinstance(value, str):
        return check_text(value, path, MAX_STRING_LENGTH)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(path, f"{path} must be a string or a number, not {type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(path, f"{path} must be a finite number")
    if abs(value) > MAX_TIMEZONE_OFFSET:
        raise ValidationError(path, f"{path} must be between -{MAX_TIMEZONE_OFFSET} and {MAX_TIMEZONE_OFFSET}")
    return value


def _timezone_schema(served: bool) -> dict:
    number: dict[str, Any] = {"type": "number"}
    if not served:
        number.update(minimum=-MAX_TIMEZONE_OFFSET, maximum=MAX_TIMEZONE_OFFSET)
    return {
        "anyOf": [_text().schema(served), number],
        "description": 'Offset from GMT, a number or a string, served back as sent (`""` included).',
    }


def _conversations(removals: bool) -> Custom:
    """Conversation id (a UUID, given once in any case, kept in lowercase) -> its source, which
    only an update may set to "" (removing that conversation)."""

    def check(value: Any, path: str, ignored: list[str] | None = None) -> dict:
        if not isinstance(value, dict):
            raise ValidationError(path, f"{path} must be an object of conversation id -> source, not {type_name(value)}")
        if len(value) > MAX_CONVERSATIONS:
            raise ValidationError(path, f"{path} must have at most {MAX_CONVERSATIONS} conversations")
        out = {}
        for key, source in value.items():
            item_path = key_path(path, key)
            if not is_uuid(key):
                raise ValidationError(item_path, f"{item_path}: conversation ids must be UUIDs")
            conversation_id = key.lower()
            if conversation_id in out:
                raise ValidationError(item_path, f"{item_path}: conversation {conversation_id} is given twice")
            check_text(source, item_path, MAX_STRING_LENGTH)
            if source == "" and not removals:
                raise ValidationError(item_path, f"{item_path} must name the conversation's source (e.g. facebook)")
            out[conversation_id] = source
        return out

    def schema(served: bool) -> dict:
        source = _text().schema(served)
        if not served and not removals:
            source["minLength"] = 1
        doc = "Conversation id (a UUID) -> its source (`facebook`, `twilio.sms`, ...)."
        out: dict[str, Any] = {"type": "object", "additionalProperties": source, "description": doc}
        if not served:
            out["maxProperties"] = MAX_CONVERSATIONS
            out["description"] += (
                f" Keys must be UUIDs, each given once (in any case; served in lowercase), at most"
                f" {MAX_CONVERSATIONS} in one request; a conversation that belongs to another contact is a 409."
            )
        return out

    return Custom(check, schema)


def _check_json_object(obj: dict, path: str, depth: int) -> None:
    """Checks a JSON object of metadata in place (nothing is copied); depth 1 is metadata itself."""
    for key, item in obj.items():
        check_key(key, path, MAX_KEY_LENGTH)
        item_path = key_path(path, key)
        if item is None or item is True or item is False:
            continue
        if isinstance(item, str):
            check_text(item, item_path, MAX_METADATA_STRING_LENGTH)
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise ValidationError(item_path, f"{item_path} must be an integer that fits in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(item_path, f"{item_path} must be a finite number")
        elif isinstance(item, dict):
            if depth >= MAX_METADATA_DEPTH:
                raise ValidationError(item_path, f"{item_path} nests objects deeper than {MAX_METADATA_DEPTH} levels")
            _check_json_object(item, item_path, depth + 1)
        elif isinstance(item, (list, tuple)):
            raise ValidationError(item_path, f"{item_path} is an array; arrays are not allowed in metadata")
        else:
            raise ValidationError(item_path, f"{item_path} must be a JSON value, not {type_name(item)}")


# How the service writes JSON (commands, the identities header, the store's entries, webhook
# bodies, the API's answers): compact, UTF-8 as it is. One encoder for all: json.dumps with
# options builds a new one a call, on paths taken once per contact. Its values come from JSON or
# from the service's own code, never cyclic.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def compact_json(value: Any) -> str:
    return _COMPACT_JSON.encode(value)


def json_bytes(value: Any) -> bytes:
    """``compact_json(value).encode()``, byte for byte, for any value without floats, at a
    tenth of the CPU (orjson): the commands, replies, identities headers and store entries
    the writer and every store make once a contact. A float reads back as the same float but
    may be spelled otherwise (orjson writes 1e-05 as 0.00001), so where the spelling is seen
    (answers, the events' JSON texts, the contact's metadata) ``compact_json`` stays.
    What orjson refuses (strings with lone surrogates, integers past 64 bits, keys that are
    not strings, deep nesting) goes the old way, to the same result or the same error."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return _COMPACT_JSON.encode(value).encode("utf-8")


_MAX_WALK = 100_000


def holds_float(value: Any) -> bool:
    """Whether a JSON value holds a float anywhere (where orjson and json.dumps may differ), or a
    value of any other type than JSON's, or more than MAX_WALK values (then too the stdlib
    decides, which also tells a cyclic value apart)."""
    pending = [value]
    budget = _MAX_WALK
    while pending:
        budget -= 1
        if budget < 0:
            return True
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif not (kind is str or kind is int or kind is bool or item is None):
            return True
    return False


def exact_json_bytes(value: Any) -> bytes:
    """``compact_json(value).encode()``, byte for byte, whatever the value: orjson when it holds
    no float (a walk over a small value costs less than the stdlib's encode), else the stdlib."""
    if not holds_float(value):
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return _COMPACT_JSON.encode(value).encode("utf-8")


def json_loads(raw: bytes | str) -> Any:
    """``json.loads(raw)`` for the service's own formats (commands, replies, headers, store
    entries), mostly through orjson: the same value, or the same error. What orjson does not
    read (NaN, numbers past float range, lone surrogates, bytes that are not UTF-8) is read by
    ``json.loads``. One difference: orjson reads an integer past 64 bits as a float, and these
    formats hold none (every number of a request is validated to int64 or less)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


# 19 digits in a row: an integer orjson may read as a float (it does past 64 bits), or a long
# fraction; json.loads reads such a text instead.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
# The same test for bytes at memory speed (a page of 1000 contacts: the regex took 4 ms): every
# ASCII digit made "0", every other byte " ", then a substring search.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_NINETEEN_ZEROS = b"0" * 19


def json_loads_exact(text: str | bytes) -> Any:
    """``json.loads(text)``, the same value or the same error, for JSON of any origin (a stored
    contact's metadata, an answer of the service): orjson, except for what it would read
    otherwise (integers past 64 bits) or not at all (then ``json_loads`` hands it to the stdlib)."""
    if isinstance(text, str):
        if _LONG_DIGITS.search(text) is not None:
            return json.loads(text)
    elif _NINETEEN_ZEROS in text.translate(_DIGITS_AS_ZEROS):
        return json.loads(text)
    return json_loads(text)


def _metadata_size(value: dict) -> int:
    return len(exact_json_bytes(value))


def _check_metadata(value: Any, path: str, ignored: list[str] | None = None) -> dict:
    if not isinstance(value, dict):
        raise ValidationError(path, f"{path} must be an object, not {type_name(value)}")
    _check_json_object(value, path, 1)
    if _metadata_size(value) > MAX_METADATA_BYTES:
        raise ValidationError(path, f"{path} must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return _copy_json(value)


def _metadata_schema(served: bool, depth: int = 1) -> dict:
    """A metadata object at nesting ``depth`` (metadata itself is 1), spelled out level by level
    down to MAX_METADATA_DEPTH, so that the depth limit is part of the schema."""
    values: list[dict] = [
        Text(MAX_METADATA_STRING_LENGTH).schema(served),
        {"type": "integer", "format": "int64", "minimum": _INT64_MIN, "maximum": _INT64_MAX},
        {"type": "number", "format": "double"},
        # OpenAPI 3.0 has no null type and `nullable` counts only beside `type`: JSON null rides here.
        {"type": "boolean", "nullable": True},
    ]
    if depth < MAX_METADATA_DEPTH:
        values.append(_metadata_schema(served, depth + 1))
    schema: dict[str, Any] = {"type": "object", "additionalProperties": {"anyOf": values}}
    if depth == 1:
        schema["description"] = "Any JSON object; arrays are refused at any depth." + (
            ""
            if served
            else f" Objects nest at most {MAX_METADATA_DEPTH} levels deep (metadata itself is the first);"
            f" keys are non-empty, at most {MAX_KEY_LENGTH} characters; integers fit in 64 bits;"
            f" numbers are finite; the whole is at most {MAX_METADATA_BYTES} bytes as compact UTF-8"
            " JSON (also after an update)."
        )
    return schema


def _contact_fields(*, update: bool) -> dict[str, Shape]:
    """The contact fields (CONTACT_FIELDS) of a create (""  is a value) or an update ("" removes)."""
    fields: dict[str, Shape] = {
        "display_name": _text("The contact's name; `contacts.list` orders by it (case-insensitively)."),
        "avatar_url": _text("URL of the contact's picture."),
        "title": _text("Job title."),
        "timezone": Custom(_check_timezone, _timezone_schema),
        "gender": _text("`female`, `male` or any other value."),
        "locale": _text("For example `en_US`."),
        "organization_name": _text("The contact's organization."),
        "via": StringMap(
            _text(),
            MAX_VIA_KEYS,
            MAX_KEY_LENGTH,
            "How to reach the contact: a flat map of strings (`phone`, `email`, any key). Arrays are refused.",
            request_doc=f" At most {MAX_VIA_KEYS} keys (also after an update), each non-empty and at most {MAX_KEY_LENGTH} characters.",
        ),
        "address": Object(
            {name: _text() for name in ADDRESS_FIELDS},
            "Postal address.",
            request_doc=" Other keys are ignored.",
            strict_served=True,
            noun="an object",
        ),
        "conversations": _conversations(removals=update),
        "metadata": Custom(_check_metadata, _metadata_schema),
    }
    if update:
        fields.update({name: Removable(fields[name], _UPDATED_BY_KEY) for name in MAP_FIELDS})
    return fields


def _served_fields(names: tuple[str, ...]) -> dict[str, Shape]:
    return {name: Anything("Set by the service: accepted and ignored.") for name in names}


def _request(fields: dict[str, Shape], doc: str = "Other fields are ignored.", **options: Any) -> Object:
    """A request body: the served fields are known (not named as ignored) in every one."""
    return Object(fields, doc, quiet=SERVED_FIELDS, **options)


#: The served form of a contact's fields (api/openapi.py's Contact) comes from these too.
CONTACT = _request(
    {**_contact_fields(update=False), **_served_fields(SERVED_FIELDS)},
    (
        "Contact fields, all optional; at least one must be given (a payload whose only fields"
        f" are empty maps is refused too). {_IGNORED.format(served=', '.join(SERVED_FIELDS))} {_NO_NUL}"
    ),
    drop_empty=True,
    extra_schema={"anyOf": [{"required": [name]} for name in CONTACT_FIELDS]},
)


def _validate_contact_payload(payload: Any, prefix: str, ignored: list[str] | None) -> dict:
    require_object(payload, prefix)
    if not payload:
        raise ValidationError(prefix, f"{where(prefix)} must not be empty: give at least one contact field")
    unknown: list[str] = []  # named only when the contact's fields are fine
    fields = CONTACT.check(payload, prefix, unknown)
    if ignored is not None:
        ignored.extend(unknown)
    if not fields:
        why = "its maps are all empty" if any(name in payload for name in CONTACT_FIELDS) else "it has no contact field"
        message = f"{where(prefix)} sets no field ({why})"
        if unknown:
            message += f"; ignored unknown fields: {', '.join(unknown[:10])}"
        raise ValidationError(prefix, message)
    return fields


#: A create body: CONTACT, not empty and setting at least one field.
CREATE = Custom(_validate_contact_payload, CONTACT.schema)


def _check_contacts(payload: Any, prefix: str, ignored: list[str] | None = None) -> list[dict]:
    if not isinstance(payload, list):
        raise ValidationError(prefix, f"{where(prefix)} must be a JSON array of contacts, not {type_name(payload)}")
    if len(payload) > MAX_IMPORT:
        raise ValidationError("", f"an import may hold at most {MAX_IMPORT} contacts, not {len(payload)}")
    # "[3]" in both forms of an import: the element, wherever the array is.
    return [_validate_contact_payload(item, f"[{index}]", ignored) for index, item in enumerate(payload)]


CONTACTS = Custom(
    _check_contacts,
    lambda served: {
        "type": "array",
        "items": ref("ContactFields"),
        "maxItems": MAX_IMPORT,
        "description": (
            f"Up to {MAX_IMPORT} create payloads, all written or none (`[]` writes nothing); an error"
            " names the element (`[3].display_name`), and so do ignored fields (`[3].nickname`)."
        ),
    },
)
UPSERT_BY = Choice(
    UPSERT_KINDS,
    "An element whose via.<upsert_by> (normalized) exactly one live contact has updates that"
    " contact key by key, as contacts.update would; the others are created. Elements apply in"
    " order, so two with one identity make one contact. Several contacts with that identity:"
    " 409 naming the element.",
)
_IMPORT_OBJECT = _request(
    {"contacts": Custom(_check_contacts, lambda served: ref("ImportContacts")), "upsert_by": UPSERT_BY}, required=("contacts",)
)


def _check_import(payload: Any, path: str = "", ignored: list[str] | None = None) -> tuple[list[dict], str | None]:
    if isinstance(payload, list):
        return _check_contacts(payload, "", ignored), None
    if not isinstance(payload, dict) or "contacts" not in payload:
        raise ValidationError(
            "",
            f'the request body must be a JSON array of contacts or {{"contacts": [...], "upsert_by"?}}, not {type_name(payload)}',
        )
    _IMPORT_OBJECT.note_unknown(payload, "", ignored)
    if not isinstance(payload["contacts"], list):  # before upsert_by: the body's main part first
        _check_contacts(payload["contacts"], "contacts")
    upsert_by = UPSERT_BY.check(payload.get("upsert_by"), "upsert_by")
    return _check_contacts(payload["contacts"], "", ignored), upsert_by


IMPORT = Custom(
    _check_import,
    lambda served: {
        "anyOf": [ref("ImportContacts"), {k: v for k, v in _IMPORT_OBJECT.schema().items() if k != "description"}],
        "description": "The create payloads, or an object with them and upsert_by; errors name the element as `[3].via.email` in both forms.",
    },
)


class _Cursor(Text):
    """An opaque cursor (the store checks it); null and "" count as no cursor."""

    def __init__(self, doc: str):
        super().__init__(MAX_CURSOR_LENGTH, doc, nullable=True)

    def check(self, value, path, ignored=None):
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValidationError(path, f"{path} must be a string or null, not {type_name(value)}")
        if len(value) > MAX_CURSOR_LENGTH:
            raise ValidationError(path, f"{path} is not a cursor this service gave out")
        return value or None  # its characters are the store's to judge: it decodes the cursor


def _paging(cursor_doc: str, camel_doc: str = "") -> dict[str, Shape]:
    return {
        "cursor": _Cursor(cursor_doc),
        "page_size": Integer(1, MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE, nullable=True),
        "pageSize": Integer(1, MAX_PAGE_SIZE, camel_doc, nullable=True),
    }


def _page(checked: dict, payload: dict, ignored: list[str] | None) -> tuple[str | None, int]:
    """(cursor, page_size): ``page_size`` wins over the inbox's ``pageSize``, which is then named."""
    page_size, camel = checked.get("page_size"), checked.get("pageSize")
    if page_size is not None and "pageSize" in payload and ignored is not None:
        ignored.append("pageSize")
    size = page_size if page_size is not None else camel
    return checked.get("cursor"), DEFAULT_PAGE_SIZE if size is None else size


UPDATE = _request(
    {"id": Uuid(), **_contact_fields(update=True), **_served_fields(SERVED_FIELDS[1:])},
    (
        'The contact\'s id and the fields to change; a field set to "" is removed.'
        f" {_IGNORED.format(served=', '.join(SERVED_FIELDS[1:]))} {_NO_NUL}"
    ),
    required=("id",),
    first=("id",),
)
LIST = _request(
    _paging(
        'An opaque cursor from pagination_data; null or "" for the first page; any other string is a 400.',
        "The platform inbox's spelling of page_size, read the same way; when both are given,"
        " page_size wins and pageSize is named in X-Contacts-Ignored-Fields.",
    ),
    "An empty body, null or {} lists the first page of DEFAULT_PAGE_SIZE contacts."
    " Unknown fields are ignored and named in X-Contacts-Ignored-Fields.",
    nullable=True,
)
INFO = _request(
    {"id": Uuid(), "conversation_id": Uuid()},
    "A contact id or a conversation id, not both. Other fields are ignored.",
    one_of=("id", "conversation_id"),
)
ID = _request({"id": Uuid()}, required=("id",))
MERGE = _request(
    {
        "source_id": Uuid(),
        "destination_id": Uuid(),
        "dry_run": Boolean(
            "true: nothing is written; the answer is what the destination would become and the conflicts.", default=False
        ),
    },
    "Merges source into destination; the two must differ (else 400 naming destination_id). Other fields are ignored.",
    required=("source_id", "destination_id"),
)
UNMERGE = _request(
    {"destination_id": Uuid(), "source_id": Uuid()},
    "Undoes the latest merge of source_id into destination_id; the two must differ (else 400 naming source_id). Other fields are ignored.",
    required=("destination_id", "source_id"),
)


def _check_ids(given: Any, path: str, ignored: list[str] | None = None) -> list[str]:
    if not isinstance(given, list):
        raise ValidationError(path, f"{path} must be an array of contact ids, not {type_name(given)}")
    if not MIN_DISMISSED <= len(given) <= MAX_DISMISSED:
        raise ValidationError(path, f"{path} must hold {MIN_DISMISSED} to {MAX_DISMISSED} contact ids, not {len(given)}")
    ids = [normalize_uuid(value, f"{path}[{index}]") for index, value in enumerate(given)]
    if len(set(ids)) != len(ids):
        raise ValidationError(path, f"{path} must name each contact once")
    return sorted(ids)


DISMISS = _request(
    {
        "ids": Custom(
            _check_ids,
            lambda served: {
                "type": "array",
                "items": Uuid().schema(),
                "minItems": MIN_DISMISSED,
                "maxItems": MAX_DISMISSED,
                "uniqueItems": True,
                "description": "The contacts of one group from contacts.duplicates, in any order.",
            },
        )
    },
    "Other fields are ignored. Ids that differ only in case are the same contact (400).",
    required=("ids",),
)
LOOKUP = _request(
    {
        "via": StringMap(
            _text(),
            MAX_VIA_KEYS,
            MAX_KEY_LENGTH,
            "Keys and values as in a contact's via; every one must match. Matching is normalized: email trimmed and"
            " case-folded, phone as E.164 (DEFAULT_PHONE_REGION for numbers without a country code), other"
            " keys and values trimmed and case-folded.",
            min_keys=1,
        )
    },
    required=("via",),
)
SEARCH = _request(
    {
        "query": Text(
            MAX_QUERY_LENGTH,
            "Words of the display name and organization by prefix, an email whole or its local part, or a phone's"
            " last digits (4 at least; a query of only digits and + - ( ) . / spaces is a phone query); case and"
            " accents do not matter; several words must all match.",
            not_blank=True,
        ),
        **_paging("An opaque cursor from this query's pagination_data."),
    },
    required=("query",),
)
DUPLICATES = _request(
    {
        "id": Uuid("Only the groups of this contact (all of them, on one page); null or absent: every group.", nullable=True),
        **_paging("An opaque cursor from pagination_data."),
    },
    "An empty body or {} gives the first page of all groups. Other fields are ignored.",
    nullable=True,
)
HISTORY = _request(
    {"id": Uuid("A live, merged-away or deleted contact's id."), **_paging("An opaque cursor from pagination_data.")},
    required=("id",),
)

#: The request bodies by their names in the OpenAPI document.
REQUESTS: dict[str, Shape] = {
    "ContactFields": CREATE,
    "ImportContacts": CONTACTS,
    "ImportRequest": IMPORT,
    "ListRequest": LIST,
    "InfoRequest": INFO,
    "UpdateRequest": UPDATE,
    "IdRequest": ID,
    "MergeRequest": MERGE,
    "UnmergeRequest": UNMERGE,
    "DismissRequest": DISMISS,
    "LookupRequest": LOOKUP,
    "SearchRequest": SEARCH,
    "HistoryRequest": HISTORY,
    "DuplicatesRequest": DUPLICATES,
}


# --- payload validators -------------------------------------------------------------------------


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    return value


def validate_create(payload: Any, ignored: list[str] | None = None) -> dict:
    """The writable fields of a ``contacts.create`` payload, checked and normalized."""
    return _validate_contact_payload(payload, "", ignored)


def validate_import(payload: Any, ignored: list[str] | None = None) -> list[dict]:
    """The contacts of a ``contacts.import`` payload (a JSON array of create payloads; ``[]`` is
    fine and imports nothing)."""
    return _check_contacts(payload, "", ignored)


def validate_import_request(payload: Any, ignored: list[str] | None = None) -> tuple[list[dict], str | None]:
    """(contacts, upsert_by) of a ``contacts.import`` payload: a JSON array of create payloads,
    or ``{"contacts": [...], "upsert_by"?: "email" | "phone" | null}``. Elements' errors name
    them as ``[3].via.email`` in both forms."""
    return _check_import(payload, "", ignored)


def validate_update(payload: Any, ignored: list[str] | None = None) -> tuple[str, dict]:
    """(id, changes) of a ``contacts.update`` payload; changes keep "" as removal markers."""
    changes = UPDATE.check(payload, "", ignored)
    return changes.pop("id"), changes


def validate_id(payload: Any, ignored: list[str] | None = None) -> str:
    """The id of a ``{"id"}`` payload (``contacts.delete``)."""
    return ID.check(payload, "", ignored)["id"]


def validate_info(payload: Any, ignored: list[str] | None = None) -> tuple[str, str]:
    """``("id", id)`` or ``("conversation_id", id)`` for ``contacts.info``: exactly one of them."""
    ((kind, value),) = INFO.check(payload, "", ignored).items()
    return kind, value


def validate_merge(payload: Any, ignored: list[str] | None = None) -> tuple[str, str]:
    """(source_id, destination_id) of a ``contacts.merge`` payload that merges for real; they
    must differ. A ``"dry_run": true`` is refused here: a caller of this function merges, and
    ignoring the flag would merge what the client only wanted to preview (the API reads it with
    ``validate_merge_request``)."""
    source_id, destination_id, dry_run = validate_merge_request(payload, ignored)
    if dry_run:
        raise ValidationError("dry_run", "dry_run is not honoured by this operation: nothing was merged")
    return source_id, destination_id


def validate_merge_request(payload: Any, ignored: list[str] | None = None) -> tuple[str, str, bool]:
    """(source_id, destination_id, dry_run) of a ``contacts.merge`` payload. ``dry_run`` (a
    boolean, default false) asks for ``merge_preview`` instead of a merge."""
    checked = MERGE.check(payload, "", ignored)
    if checked["source_id"] == checked["destination_id"]:
        raise ValidationError("destination_id", _SELF_MERGE)
    return checked["source_id"], checked["destination_id"], checked.get("dry_run", False)


def validate_unmerge(payload: Any, ignored: list[str] | None = None) -> tuple[str, str]:
    """(destination_id, source_id) of a ``contacts.unmerge`` payload."""
    checked = UNMERGE.check(payload, "", ignored)
    if checked["source_id"] == checked["destination_id"]:
        raise ValidationError("source_id", "source_id must differ from destination_id: a contact is never merged into itself")
    return checked["destination_id"], checked["source_id"]


def validate_dismiss(payload: Any, ignored: list[str] | None = None) -> list[str]:
    """The sorted, distinct ids of a ``contacts.dismiss_duplicates`` payload: a group of 2 to
    MAX_DISMISSED contacts (the ids of a group from ``contacts.duplicates``)."""
    return DISMISS.check(payload, "", ignored)["ids"]


def validate_lookup(payload: Any, ignored: list[str] | None = None) -> dict[str, str]:
    """The ``via`` of a ``contacts.lookup`` payload: at least one key, string values. Keys are
    the client's own (free-form), as in a contact's ``via``."""
    return LOOKUP.check(payload, "", ignored)["via"]


def validate_search(payload: Any, ignored: list[str] | None = None) -> tuple[str, str | None, int]:
    """(query, cursor, page_size) of a ``contacts.search`` payload; the query is a non-blank
    string of at most MAX_QUERY_LENGTH characters."""
    checked = SEARCH.check(payload, "", ignored)
    return (checked["query"], *_page(checked, payload, ignored))


def validate_duplicates(payload: Any = None, ignored: list[str] | None = None) -> tuple[str | None, str | None, int]:
    """(id or None, cursor, page_size) of a ``contacts.duplicates`` payload; {} is fine."""
    if payload is None:
        return None, None, DEFAULT_PAGE_SIZE
    checked = DUPLICATES.check(payload, "", ignored)
    return (checked.get("id"), *_page(checked, payload, ignored))


def validate_history(payload: Any, ignored: list[str] | None = None) -> tuple[str, str | None, int]:
    """(id, cursor, page_size) of a ``contacts.history`` payload."""
    checked = HISTORY.check(payload, "", ignored)
    return (checked["id"], *_page(checked, payload, ignored))


def validate_list(payload: Any = None, ignored: list[str] | None = None) -> tuple[str | None, int]:
    """(cursor or None, page_size) of a ``contacts.list`` payload; an empty body or {} is fine.

    The cursor is opaque here (the store checks it); null and "" count as no cursor.
    ``pageSize`` is the inbox's spelling of ``page_size``; ``page_size`` wins when both are given.
    """
    if payload is None:
        return None, DEFAULT_PAGE_SIZE
    return _page(LIST.check(payload, "", ignored), payload, ignored)


# --- rules --------------------------------------------------------------------------------------


def _ordered(contact: dict) -> dict:
    return {name: contact[name] for name in _ORDER if name in contact}


def new_contact(fields: dict, contact_id: str, now_ms: int) -> dict:
    """A new contact of validated ``fields`` (from validate_create/validate_import)."""
    stamp = millis_to_iso(now_ms)
    contact: dict[str, Any] = {"id": normalize_uuid(contact_id, "id")}
    for name in CONTACT_FIELDS:
        if name in fields:
            value = fields[name]
            if isinstance(value, dict):
                if not value:
                    continue
                value = _copy_json(value)
            contact[name] = value
    contact["created_at"] = stamp
    contact["updated_at"] = stamp
    return contact


def apply_update(contact: dict, changes: dict, now_ms: int) -> dict:
    """The contact after validated ``changes`` (from validate_update), as a new dict.

    A field (or map key) set to "" is removed; maps update key by key; a map left empty is
    removed. ``id``, ``created_at`` and ``merge_history`` never change. ``updated_at`` is set
    when anything changed, types included (``same_json``: ``1`` -> ``true`` is a change); an
    update that changes nothing returns a dict equal to ``contact`` (so the caller can tell and
    skip publishing). Raises ValidationError when the result would break a size limit (``via``
    keys, ``metadata`` bytes).
    """
    updated = dict(contact)
    for name, value in changes.items():
        if name not in CONTACT_FIELDS:
            raise ValidationError(name, f"{name} cannot be updated")
        if name in MAP_FIELDS:
            if value == "":
                updated.pop(name, None)
                continue
            merged = dict(updated.get(name) or {})
            for key, item in value.items():
                if item == "":
                    merged.pop(key, None)
                else:
                    merged[key] = _copy_json(item)
            if merged:
                updated[name] = merged
            else:
                updated.pop(name, None)
        elif value == "":
            updated.pop(name, None)
        else:
            updated[name] = value
    # A merge may leave a contact past these limits: an update that does not grow the field
    # further (another field, a removal) must still go through, or the contact is stuck.
    keys_before, keys_after = len(contact.get("via") or ()), len(updated.get("via") or ())
    if keys_after > MAX_VIA_KEYS and keys_after > keys_before:
        raise ValidationError("via", f"via would have more than {MAX_VIA_KEYS} keys")
    if "metadata" in changes and "metadata" in updated:
        size = _metadata_size(updated["metadata"])
        if size > MAX_METADATA_BYTES and size > (_metadata_size(contact["metadata"]) if "metadata" in contact else 0):
            raise ValidationError("metadata", f"metadata would be larger than {MAX_METADATA_BYTES} bytes as JSON")
    if same_json(updated, contact):
        return _ordered(updated)
    updated["updated_at"] = millis_to_iso(now_ms)
    return _ordered(updated)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included: Python's ``1 == True == 1.0`` would make an update
    that changes a value's type look like a no-op, and the change would be dropped."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a == 0.0 == b:
        return math.copysign(1.0, a) == math.copysign(1.0, b)  # -0.0 and 0.0 are different JSON
    return a == b


def _present(value: Any) -> bool:
    """Whether a value counts as set for a merge: present and not ""."""
    return value is not None and not (isinstance(value, str) and value == "")


def _merge_maps(destination: dict | None, source: dict | None, name: str, gained: list[str]) -> dict:
    merged = _copy_json(destination) if destination else {}
    for key, item in (source or {}).items():
        if key not in merged or (not _present(merged[key]) and _present(item)):
            merged[key] = _copy_json(item)
            gained.append(f"{name}.{key}")
    return merged


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type: timezone 2 and 2.0 are different values."""
    return type(a) is type(b) and a == b


def merge_contacts(destination: dict, source: dict, now_ms: int) -> dict:
    """The destination after merging ``source`` into it (DESIGN.md's merge paragraph).

    The destination keeps ``id`` and ``created_at``; each field it has (present, not "") wins
    and the source fills the gaps; ``via``, ``address`` and ``metadata`` the same way key by
    key; conversations are united (shared ones allowed, the destination's source wins);
    ``merge_history`` = destination's + source's + an entry for the source (see the module
    docstring): the source as it was without its own history, when, into which contact, and
    what the destination gained from it. Deleting the source is the caller's job.

    Raises ValidationError (field ``destination_id``) for a merge of a contact into itself,
    and TooLarge when the history would hold more than MAX_MERGE_HISTORY entries. Entries are
    never dropped to make room: each names a merged-away id the store must keep finding, and
    what an unmerge needs.
    """
    if str(destination["id"]).lower() == str(source["id"]).lower():
        raise ValidationError("destination_id", _SELF_MERGE)
    history = list(destination.get("merge_history") or ())
    carried = list(source.get("merge_history") or ())
    if len(history) + len(carried) + 1 > MAX_MERGE_HISTORY:
        raise TooLarge(
            f"merging {source['id']} into {destination['id']} would give contact {destination['id']} "
            f"{len(history) + len(carried) + 1} merged contacts in its merge_history, more than {MAX_MERGE_HISTORY}",
            "source_id",
        )
    gained: list[str] = []
    merged: dict[str, Any] = {"id": destination["id"]}
    for name in SCALAR_FIELDS:
        mine, theirs = destination.get(name), source.get(name)
        if _present(mine):
            merged[name] = mine
        elif theirs is not None:
            merged[name] = theirs
            if not (name in destination and _same(mine, theirs)):
                gained.append(name)
        elif mine is not None:
            merged[name] = mine
    for name in ("via", "address", "metadata"):
        value = _merge_maps(destination.get(name), source.get(name), name, gained)
        if value:
            merged[name] = value
    conversations = dict(destination.get("conversations") or {})
    for conversation_id, channel in (source.get("conversations") or {}).items():
        if conversation_id not in conversations:
            conversations[conversation_id] = channel
            gained.append(f"conversations.{conversation_id}")
    if conversations:
        merged["conversations"] = conversations
    merged["created_at"] = destination["created_at"]
    merged["updated_at"] = millis_to_iso(now_ms)
    entry = {name: _copy_json(value) for name, value in source.items() if name != "merge_history"}
    entry.update(merged_at=millis_to_iso(now_ms), merged_into=destination["id"], gained=gained)
    # Entries written before merged_into existed came with the source, so they go back with it.
    carried = [item if "merged_into" in item else {**item, "merged_into": source["id"]} for item in carried]
    merged["merge_history"] = history + carried + [entry]
    return merged


def default_display_name(conversation_id: str, source: str) -> str:
    """Airy's default name of an auto-created contact: ``"<Source> <last 5 chars of the id>"``.

    Source is the last dot-separated part of the source with its first letter capitalised
    (``facebook`` -> ``Facebook 4ecb3``, ``twilio.sms`` -> ``Sms 4ecb3``); an empty source gives
    ``Contact``.
    """
    part = (source or "").rsplit(".", 1)[-1]
    name = part[:1].upper() + part[1:] if part else "Contact"
    return f"{name} {conversation_id[-5:]}"


# A random (version 4) UUID's bits: 122 random, the version and the RFC 4122 variant set.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class _RandomPool(threading.local):
    """os.urandom in 4 KiB draws, one per 256 ids, per thread. Each os.urandom call releases the
    GIL around its getrandom() syscall, and getting it back waits behind every busy thread (up to
    the 5 ms switch interval each time): per id, that was 11% of the writer's wall time at 48
    clients. The pool remembers its process, so a forked worker never reuses its parent's bytes."""

    pid = -1
    bytes_ = b""
    at = 0


_POOL_BYTES = 4096
_pool = _RandomPool()


def _random_16() -> bytes:
    pool = _pool
    if pool.at >= len(pool.bytes_) or pool.pid != os.getpid():
        pool.bytes_, pool.at, pool.pid = os.urandom(_POOL_BYTES), 0, os.getpid()
    at = pool.at
    pool.at = at + 16
    return pool.bytes_[at : at + 16]


def random_uuid() -> str:
    """``str(uuid.uuid4())`` (the same randomness, os.urandom) without building a UUID object:
    a fresh id per imported contact, command and change event, where uuid4 showed in profiles."""
    text = ((int.from_bytes(_random_16(), "big") & _UUID4_CLEAR) | _UUID4_SET).to_bytes(16, "big").hex()
    return "-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:]))


def contact_id_for_conversation(conversation_id: str) -> str:
    """The id of the contact auto-created for a conversation: Airy's ``UUIDv5.fromName``.

    SHA-1 over the UTF-8 bytes of the name with no namespace (unlike ``uuid.uuid5``), the first
    16 bytes with version 5 and the RFC 4122 variant set.
    ``"testtest"`` -> ``51abb963-6078-5efb-b888-d8457a7c76f8``.
    """
    digest = bytearray(hashlib.sha1(conversation_id.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def sort_key(contact: dict) -> bytes:
    """The ``contacts.list`` order as bytes: display name case-folded, then id; unnamed last.

    Case folds: the name is NFKC-normalized, stripped of surrounding white space and
    ``str.casefold()``-ed, so "anna", "Anna" and "ANNA" sort together (ties by id). Named
    contacts get ``0x01 + name (UTF-8) + 0x00 + id``, so "ab" sorts before "abc" (validation
    refuses U+0000, the separator); contacts without a display name (absent, "" or only white
    space) get ``0x02 + id`` and come after every named one. UTF-8 byte order is code point
    order.
    """
    contact_id = str(contact.get("id", "")).lower().encode("utf-8")
    name = contact.get("display_name")
    if isinstance(name, str) and name:
        folded = unicodedata.normalize("NFKC", name).strip().casefold()
        if folded:
            return b"\x01" + folded.encode("utf-8", "surrogatepass") + b"\x00" + contact_id
    return b"\x02" + contact_id


# --- time ---------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    """Milliseconds since the epoch, now."""
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=4096)
def _iso_date(days: int) -> str:
    return (_EPOCH_NAIVE + timedelta(days=days)).date().isoformat()


@functools.lru_cache(maxsize=4096)  # a batch stamps many contacts with one instant
def millis_to_iso(ms: int) -> str:
    """``1637068863580`` -> ``"2021-11-16T13:21:03.580Z"`` (UTC, always with milliseconds)."""
    seconds, millis = divmod(int(ms), 1000)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_iso_date(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def iso_to_millis(text: str) -> int:
    """An ISO 8601 timestamp (``Z`` or an offset; none means UTC) -> milliseconds since the epoch."""
    if type(text) is str:
        # The contacts of a batch mostly share their timestamps (the writer's now), and every
        # contact record written converts two of them.
        return _iso_to_millis_cached(text)
    return _iso_to_millis(text)


def _iso_to_millis(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


_iso_to_millis_cached = functools.lru_cache(maxsize=1024)(_iso_to_millis)


# --- previews, groups and unmerge -----------------------------------------------------------------


def _paths(contact: dict) -> dict[str, Any]:
    """Field path -> value of what a merge compares: scalars, and via/address/metadata keys."""
    out: dict[str, Any] = {name: contact[name] for name in SCALAR_FIELDS if name in contact}
    for name in ("via", "address", "metadata"):
        for key, value in (contact.get(name) or {}).items():
            out[f"{name}.{key}"] = value
    return out


def merge_preview(destination: dict, source: dict, now_ms: int) -> dict:
    """What ``contacts.merge`` would make of the destination, and the source's values that would
    lose: ``{"destination", "conflicts": [{"field", "kept", "lost"}]}``. Writes nothing.

    A conflict is a field (or via/address/metadata key, or conversation) both have a value for
    (present, not "") where the values differ; the destination's wins. Raises what
    ``merge_contacts`` raises.
    """
    merged = merge_contacts(destination, source, now_ms)
    mine, theirs = _paths(destination), _paths(source)
    conflicts = []
    for path, lost in theirs.items():
        kept = mine.get(path)
        if _present(kept) and _present(lost) and not same_json(kept, lost):
            conflicts.append({"field": path, "kept": _copy_json(kept), "lost": _copy_json(lost)})
    for conversation_id, channel in (source.get("conversations") or {}).items():
        kept = (destination.get("conversations") or {}).get(conversation_id)
        if kept is not None and kept != channel:
            conflicts.append({"field": f"conversations.{conversation_id}", "kept": kept, "lost": channel})
    return {"destination": merged, "conflicts": conflicts}


def group_conflicts(contacts: list[dict]) -> list[dict]:
    """For each field (scalar, or via/address/metadata key) where the contacts' present values
    differ: ``{"field", "values"}`` with the distinct values in the contacts' order."""
    values: dict[str, list] = {}
    for contact in contacts:
        for path, value in _paths(contact).items():
            if not _present(value):
                continue
            seen = values.setdefault(path, [])
            if not any(same_json(value, other) for other in seen):
                seen.append(_copy_json(value))
    return [{"field": path, "values": found} for path, found in sorted(values.items()) if len(found) > 1]


class NotMerged(LookupError):
    """The destination's history has no merge of that source into it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _entry_for(destination: dict, source_id: str) -> dict:
    """The latest merge of that source into this destination."""
    wanted = source_id.lower()
    for entry in reversed(destination.get("merge_history") or ()):
        if str(entry.get("id", "")).lower() == wanted and entry.get("merged_into", destination["id"]) == destination["id"]:
            return entry
    raise NotMerged(f"contact {source_id} was never merged into contact {destination['id']}")


def _get_path(contact: dict, path: str) -> tuple[bool, Any]:
    name, _, key = path.partition(".")
    if not key:
        return name in contact, contact.get(name)
    container = contact.get(name) or {}
    return key in container, container.get(key)


def _drop_path(contact: dict, path: str) -> None:
    name, _, key = path.partition(".")
    if not key:
        contact.pop(name, None)
        return
    container = dict(contact.get(name) or {})
    container.pop(key, None)
    if container:
        contact[name] = container
    else:
        contact.pop(name, None)


def unmerge(destination: dict, entry_or_source_id: dict | str, now_ms: int) -> tuple[dict, dict]:
    """(the restored source, the destination after) undoing a merge (DESIGN.md, "Unmerge").

    The entry is the latest of that source merged into this destination (or the entry itself).
    The source comes back as the entry kept it: its id, fields, conversations and the history
    entries that came along with it (``merged_into`` its id). The destination loses each path
    the entry says it ``gained`` whose value is still the source's (a value changed since the
    merge stays), and the entry and the source's entries leave its history.

    Entries from before ``gained`` existed (full snapshots) do not say what the destination
    gained: the source's conversations go back with it, every other value stays with the
    destination, and the history entries that came with the source cannot be told apart, so they
    stay too. Where the destination held "" (or null) at a path it gained, it comes back without
    the path: the entry does not keep that difference (both mean "no value" to a merge).

    Raises NotMerged when the history has no such merge.
    """
    entry = entry_or_source_id if isinstance(entry_or_source_id, dict) else _entry_for(destination, entry_or_source_id)
    source_id = entry["id"]
    stamp = millis_to_iso(now_ms)
    history = list(destination.get("merge_history") or ())
    position = next((i for i in range(len(history) - 1, -1, -1) if history[i] is entry or history[i] == entry), None)
    if position is None:
        raise NotMerged(f"contact {source_id} was never merged into contact {destination['id']}")
    del history[position]
    known = "gained" in entry and entry["gained"] is not None
    carried = [item for item in history if known and item.get("merged_into") == source_id]
    kept = [item for item in history if not (known and item.get("merged_into") == source_id)]

    restored = {name: _copy_json(value) for name, value in entry.items() if name not in HISTORY_ENTRY_FIELDS}
    if carried:
        restored["merge_history"] = [_copy_json(item) for item in carried]
    restored["updated_at"] = stamp
    restored = _ordered(restored)

    after = _copy_json({name: value for name, value in destination.items() if name != "merge_history"})
    gained = list(entry["gained"]) if known else [f"conversations.{c}" for c in (entry.get("conversations") or {})]
    for path in gained:
        if path.startswith("conversations."):
            if (after.get("conversations") or {}).get(path.partition(".")[2]) is not None:
                _drop_path(after, path)
            continue
        present, value = _get_path(after, path)
        was_present, was = _get_path(entry, path)
        if present and was_present and same_json(value, was):
            _drop_path(after, path)
    if kept:
        after["merge_history"] = kept
    after["updated_at"] = stamp
    return restored, _ordered(after)
