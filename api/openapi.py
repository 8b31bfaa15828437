"""The OpenAPI 3 document served at /openapi.json.

The request schemas are not written here: each is ``schema()`` of the shape in
``model.REQUESTS`` that also validates that request (``contacts_streams.shapes``), so a field, a
limit or a message cannot change in one and not the other. The served contact's fields come from
the same shapes without the request limits (a merge or auto-creation may grow a contact past
them); the other responses, the error bodies and the paths are declared here, once.
`tests/api/test_openapi.py` keeps it true (every route Flask registers is in it and the other
way round, real responses validate against it, and a fuzz run over every endpoint finds no
answer it does not describe).

Request schemas say what the validation accepts as far as OpenAPI 3.0 can say it; what it
cannot (UUID keys of `conversations`, key lengths, the byte size of `metadata`, a merge of a
contact with itself, a payload whose maps are all empty) is in the descriptions, and the service
answers 400 naming the field. No request schema forbids additional properties: unknown fields
are ignored (DESIGN.md) and named in the X-Contacts-Ignored-Fields response header.
"""

from __future__ import annotations

import copy
from typing import Any

from contacts_streams import model
from contacts_streams.shapes import Uuid
from contacts_streams.shapes import ref as _ref

VERSION = "0.1.0"

_JSON = "application/json"
IGNORED_FIELDS_HEADER = {
    "description": (
        "The request fields the service ignored because it does not know them, as comma-separated paths"
        " (`displayName,address.addressLine1`, `[3].nickname`); characters other than printable ASCII,"
        ' and `%`, `,`, `+`, space, `"` and `\\`, are percent-encoded as UTF-8. At most 1024 characters:'
        " when paths are left out, the last element is `+N`, their number. Absent when nothing was ignored."
    ),
    "schema": {"type": "string", "maxLength": 1024},
}


def _uuid(description: str = "") -> dict:
    return Uuid(description).schema()


def _contact_response(history: str) -> dict:
    """A served contact. ``history``: "none" (a merge_history entry), "optional" or "required"."""
    properties: dict[str, Any] = {"id": _uuid("Set by the service.")}
    properties.update({name: model.CONTACT.fields[name].schema(served=True) for name in model.CONTACT_FIELDS})
    properties["created_at"] = {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 UTC with milliseconds (2021-11-16T13:21:03.580Z); never changes.",
    }
    properties["updated_at"] = {"type": "string", "format": "date-time"}
    if history != "none":
        properties["merge_history"] = {
            "type": "array",
            "items": _ref("MergedContact"),
            "maxItems": model.MAX_MERGE_HISTORY,
            "description": (
                "The contacts merged into this one (oldest first, a merged contact's own entries"
                " included), each as it was when merged plus merged_at, merged_into and gained."
                f" At most {model.MAX_MERGE_HISTORY}: a merge past that is refused with 413."
            ),
        }
    else:
        properties["merged_at"] = {"type": "string", "format": "date-time", "description": "When it was merged."}
        properties["merged_into"] = _uuid(
            "The contact it was merged into then: this contact, or one merged into it later (the entry came along)."
        )
        properties["gained"] = {
            "type": "array",
            "items": {"type": "string"},
            "description": (
                "The field paths the destination took from it: `display_name` (any scalar field),"
                " `via.<key>`, `address.<key>`, `metadata.<top-level key>`, `conversations.<id>`; the"
                " part after the first dot is the whole key. merged_at, merged_into and gained are"
                " absent in entries written before they existed."
            ),
        }
    required = ["id", "created_at"] + (["merge_history"] if history == "required" else [])
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


# --- requests (from model.REQUESTS), responses and errors --------------------------------------

_SCHEMAS: dict[str, dict] = {
    **{name: shape.schema() for name, shape in model.REQUESTS.items()},
    "UnmergeResponse": {
        "type": "object",
        "properties": {"destination": _ref("ContactWithHistory"), "restored": _ref("ContactWithHistory")},
        "required": ["destination", "restored"],
        "additionalProperties": False,
    },
    "EraseResponse": {
        "type": "object",
        "properties": {
            "erased": _uuid("The erased contact's id."),
            "complete_by": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": (
                    "When no copy of the erased data is left anywhere the service keeps data (its topics and every"
                    " replica's store), from the broker's actual topic settings; null when a topic keeps data without"
                    " a time limit (settings the service could not change)."
                ),
            },
        },
        "required": ["erased", "complete_by"],
        "additionalProperties": False,
    },
    "MergePreview": {
        "type": "object",
        "properties": {
            "destination": _ref("ContactWithHistory"),
            "conflicts": {
                "type": "array",
                "description": "The source's values that would lose: a field path (display_name, via.email, conversations.<id>), the destination's value kept and the source's lost.",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "kept": {}, "lost": {}},
                    "required": ["field", "kept", "lost"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["destination", "conflicts"],
        "additionalProperties": False,
    },
    "LookupResponse": {
        "type": "object",
        "properties": {"data": {"type": "array", "items": _ref("Contact")}},
        "required": ["data"],
        "additionalProperties": False,
    },
    "SearchResponse": {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref("Contact")},
            "pagination_data": {
                "type": "object",
                "properties": {
                    "previous_cursor": {"type": "string", "nullable": True, "description": "Always null: search pages forward."},
                    "next_cursor": {"type": "string", "nullable": True},
                    "total": {
                        "type": "integer",
                        "minimum": 0,
                        "description": (
                            "An estimate: the contacts among the first 1000 index entries of the query's longest word. Exact for"
                            " a one-word query with fewer matches; for several words an upper bound; never above 1000."
                        ),
                    },
                },
                "required": ["previous_cursor", "next_cursor", "total"],
                "additionalProperties": False,
            },
        },
        "required": ["data", "pagination_data"],
        "additionalProperties": False,
        "description": "Exact word matches first, then prefix matches, each by display name. A page may be short (even empty) with a next_cursor when few of the entries it read matched every word.",
    },
    "ContactEvent": {
        "type": "object",
        "description": "One change of one contact, as on the contact-events topic (schemas/contact-event.avsc).",
        "properties": {
            "event_id": {"type": "string", "description": "A UUID, unique per event."},
            "contact_id": {"type": "string"},
            "operation": {
                "type": "string",
                "description": "created, imported, auto_created, updated, merged, unmerged, restored, deleted, merged_away, erased.",
            },
            "time": {"type": "string", "description": "When the writer applied it: ISO 8601 UTC with milliseconds."},
            "actor": {"type": "string", "description": "Who: system, the JWT's sub, anonymous, auto-create."},
            "origin": {"type": "string", "description": "How: http, import, auto-create, cli."},
            "other_contact_id": {"type": "string", "nullable": True, "description": "The other contact of a merge or unmerge."},
            "changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {
                            "type": "string",
                            "description": "A field (display_name, merge_history) or one key of via, address, metadata, conversations (via.email).",
                        },
                        "before": {"type": "string", "nullable": True, "description": "JSON text; null: absent."},
                        "after": {"type": "string", "nullable": True, "description": "JSON text; null: absent (removed)."},
                    },
                    "required": ["path", "before", "after"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["event_id", "contact_id", "operation", "time", "actor", "origin", "other_contact_id", "changes"],
        "additionalProperties": False,
    },
    "HistoryResponse": {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref("ContactEvent")},
            "pagination_data": {
                "type": "object",
                "properties": {
                    "previous_cursor": {
                        "type": "string",
                        "nullable": True,
                        "description": "Always null: history pages back in time.",
                    },
                    "next_cursor": {"type": "string", "nullable": True, "description": "Older events; null at the oldest kept."},
                },
                "required": ["previous_cursor", "next_cursor"],
                "additionalProperties": False,
            },
        },
        "required": ["data", "pagination_data"],
        "additionalProperties": False,
    },
    "DuplicatesResponse": {
        "type": "object",
        "properties": {
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "contacts": {"type": "array", "items": _ref("Contact"), "minItems": 2},
                        "reasons": {
                            "type": "array",
                            "description": "The normalized identities every contact of the group has (kind: email, phone or the via key); the first is the one the group was found by.",
                            "items": {
                                "type": "object",
                                "properties": {"kind": {"type": "string"}, "value": {"type": "string"}},
                                "required": ["kind", "value"],
                                "additionalProperties": False,
                            },
                        },
                        "conflicts": {
                            "type": "array",
                            "description": "For each field (display_name, via.<key>, address.<key>, metadata.<key>) where the group's values differ: the distinct values.",
                            "items": {
                                "type": "object",
                                "properties": {"field": {"type": "string"}, "values": {"type": "array", "items": {}}},
                                "required": ["field", "values"],
                                "additionalProperties": False,
                            },
                        },
                    },
                    "required": ["contacts", "reasons", "conflicts"],
                    "additionalProperties": False,
                },
            },
            "pagination_data": {
                "type": "object",
                "properties": {
                    "previous_cursor": {
                        "type": "string",
                        "nullable": True,
                        "description": "Always null: duplicates page forward.",
                    },
                    "next_cursor": {"type": "string", "nullable": True},
                },
                "required": ["previous_cursor", "next_cursor"],
                "additionalProperties": False,
            },
        },
        "required": ["data", "pagination_data"],
        "additionalProperties": False,
        "description": "One group per set of live contacts sharing a normalized identity (groups people dismissed are left out). A page may be short with a next_cursor.",
    },
    "MergeResponse": {"anyOf": [_ref("ContactWithHistory"), _ref("MergePreview")]},
    "Contact": _contact_response("optional"),
    "ContactWithHistory": _contact_response("required"),
    "MergedContact": _contact_response("none"),
    "ImportResponse": {
        "type": "object",
        "properties": {
            "data": {
                "type": "array",
                "items": _ref("Contact"),
                "description": "For each element, in order, the contact it created or updated.",
            },
            "created": {
                "type": "integer",
                "minimum": 0,
                "description": "How many elements created a contact (object form only).",
            },
            "updated": {
                "type": "integer",
                "minimum": 0,
                "description": "How many elements updated one (object form, or `Prefer: return=minimal`).",
            },
            "ids": {
                "type": "array",
                "items": {"type": "string", "format": "uuid"},
                "description": "With `Prefer: return=minimal` only (instead of data): for each element, in order, the id of"
                " the contact it created or updated.",
            },
        },
        "additionalProperties": False,
    },
    "ListResponse": {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref("Contact")},
            "pagination_data": {
                "type": "object",
                "properties": {
                    "previous_cursor": {"type": "string", "nullable": True},
                    "next_cursor": {"type": "string", "nullable": True},
                    "total": {"type": "integer", "minimum": 0},
                },
                "required": ["previous_cursor", "next_cursor", "total"],
                "additionalProperties": False,
            },
        },
        "required": ["data", "pagination_data"],
        "additionalProperties": False,
    },
    "ValidationError": {
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "A sentence that names the offending field."},
            "field": {
                "type": "string",
                "description": 'The path of the offending value (`via.email`, `[3].display_name`; "" for the body).',
            },
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    "NotFound": {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "merged_into": _uuid("Set when the contact was merged away: where it lives now."),
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    "Conflict": {
        "type": "object",
        "properties": {"message": {"type": "string"}, "field": {"type": "string"}},
        "required": ["message", "field"],
        "additionalProperties": False,
    },
    "TooLargeError": {
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "What is too large, its size and the limit."},
            "field": {"type": "string", "description": "The element or id that causes it (`[3]`, `source_id`), when one does."},
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["UP", "DOWN"]}, "reason": {"type": "string"}},
        "required": ["status", "reason"],
        "additionalProperties": False,
    },
}


_POSITION_HEADER = {
    "description": "An opaque token of what the write produced. Send it back as X-Contacts-Min-Position to read"
    " it from any replica (the answering one already has).",
    "schema": {"type": "string"},
}
_PREFERENCE_APPLIED_HEADER = {
    "description": "`return=minimal` when the answer honoured that preference.",
    "schema": {"type": "string"},
}
_PARAMETERS = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "1 to 255 printable ASCII characters. The first answer to this key (per caller and endpoint) is"
        " remembered 24 h, across replicas and failovers: a retry gets it again instead of writing twice. The same key"
        " with another body is a 422.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    "MinPosition": {
        "name": "X-Contacts-Min-Position",
        "in": "header",
        "required": False,
        "description": "A write's X-Contacts-Position: the read waits (up to the write timeout, then 503) until this"
        " replica applied that write. A token the service did not hand out is a 400 naming the header.",
        "schema": {"type": "string"},
    },
    "Prefer": {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "RFC 7240. `return=minimal`: the answer holds created, updated and ids instead of the contacts"
        " (Preference-Applied says so); the write is applied on the answering replica all the same.",
        "schema": {"type": "string"},
    },
}


def _json_response(description: str, schema: str, headers: bool = False) -> dict:
    response: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = {"X-Contacts-Ignored-Fields": IGNORED_FIELDS_HEADER}
    return response


_RESPONSES = {
    "BadRequest": _json_response(
        "Malformed input: a body that is not JSON, a known field of the wrong type or value, a limit broken. The message names the field.",
        "ValidationError",
        headers=True,
    ),
    "Forbidden": _json_response(
        "Only when a system token or JWT secret is configured: the Authorization header is missing or not valid.",
        "Error",
    ),
    "NotFound": _json_response(
        "No contact has this id (or conversation id); for a merged-away id, merged_into says where it went.",
        "NotFound",
    ),
    "Conflict": _json_response("A conversation in the request already belongs to another contact.", "Conflict"),
    "IdempotencyMismatch": _json_response(
        "This Idempotency-Key was used before with another body (field: Idempotency-Key); nothing was written.",
        "ValidationError",
    ),
    "TooLarge": _json_response(
        "The request body is larger than the service accepts, or the write would make a contact larger than the"
        " contacts topic's record limit (about 1 MB) or its merge_history longer than"
        f" {model.MAX_MERGE_HISTORY} entries. Nothing was written; the message gives the size and the limit.",
        "TooLargeError",
    ),
    "Unavailable": {
        **_json_response(
            "Not now: the store is still catching up with the contacts topic (start-up, rebuild), or a write could"
            " not be made in time (nothing or all of it was written). Retry after Retry-After seconds.",
            "Error",
        ),
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    },
}


def _post(
    operation_id: str,
    summary: str,
    request: str,
    ok: tuple[int, str, str | None],
    *,
    body_required: bool = True,
    not_found: bool = False,
    conflict: bool = False,
    write: bool = False,
    waits: bool = False,
    prefer: bool = False,
) -> dict:
    """``write``: a write (Idempotency-Key, X-Contacts-Position, 422); ``waits``: a read of the
    store that takes X-Contacts-Min-Position; ``prefer``: takes Prefer: return=minimal."""
    status, description, schema = ok
    ok_response = _json_response(description, schema) if schema else {"description": description}
    headers: dict[str, Any] = {"X-Contacts-Ignored-Fields": IGNORED_FIELDS_HEADER}
    ok_response["headers"] = headers
    parameters = []
    if write:
        headers["X-Contacts-Position"] = _POSITION_HEADER
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    if waits:
        parameters.append({"$ref": "#/components/parameters/MinPosition"})
    if prefer:
        headers["Preference-Applied"] = _PREFERENCE_APPLIED_HEADER
        parameters.append({"$ref": "#/components/parameters/Prefer"})
    responses: dict[str, Any] = {str(status): ok_response}
    responses["400"] = {"$ref": "#/components/responses/BadRequest"}
    responses["403"] = {"$ref": "#/components/responses/Forbidden"}
    if not_found:
        responses["404"] = {"$ref": "#/components/responses/NotFound"}
    if conflict:
        responses["409"] = {"$ref": "#/components/responses/Conflict"}
    responses["413"] = {"$ref": "#/components/responses/TooLarge"}
    if write:
        responses["422"] = {"$ref": "#/components/responses/IdempotencyMismatch"}
    responses["503"] = {"$ref": "#/components/responses/Unavailable"}
    operation: dict[str, Any] = {"parameters": parameters} if parameters else {}
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            **operation,
            "tags": ["contacts"],
            "requestBody": {"required": body_required, "content": {_JSON: {"schema": _ref(request)}}},
            "responses": responses,
            "security": [{"bearer": []}, {}],
        }
    }


def _get(operation_id: str, summary: str, responses: dict) -> dict:
    return {
        "get": {"operationId": operation_id, "summary": summary, "tags": ["operations"], "responses": responses, "security": []}
    }


_HEALTH = {
    "200": _json_response("Up.", "Health"),
    "503": _json_response("Down; reason says why.", "Health"),
}
_PROMETHEUS = {
    "200": {"description": "Prometheus text exposition format.", "content": {"text/plain": {"schema": {"type": "string"}}}}
}

_PATHS = {
    "/contacts.create": _post(
        "createContact",
        "Create a contact",
        "ContactFields",
        (201, "The new contact, with id and created_at.", "Contact"),
        conflict=True,
        write=True,
    ),
    "/contacts.import": _post(
        "importContacts",
        "Create contacts in bulk, all or none",
        "ImportRequest",
        (
            201,
            "The contacts, in the order given; the object form adds how many were created and updated. With"
            " `Prefer: return=minimal`: created, updated and ids only.",
            "ImportResponse",
        ),
        conflict=True,
        write=True,
        prefer=True,
    ),
    "/contacts.list": _post(
        "listContacts",
        "A page of contacts ordered by display name (contacts without one last)",
        "ListRequest",
        (200, "A page; cursors are null at the ends.", "ListResponse"),
        body_required=False,
        waits=True,
    ),
    "/contacts.info": _post(
        "getContact",
        "A contact by id or conversation id",
        "InfoRequest",
        (200, "The contact with its merge_history.", "ContactWithHistory"),
        not_found=True,
        waits=True,
    ),
    "/contacts.update": _post(
        "updateContact",
        "Change fields of a contact",
        "UpdateRequest",
        (202, "Updated (or nothing to change); empty body.", None),
        not_found=True,
        conflict=True,
        write=True,
    ),
    "/contacts.delete": _post(
        "deleteContact",
        "Delete a contact",
        "IdRequest",
        (202, "Deleted; empty body.", None),
        not_found=True,
        write=True,
    ),
    "/contacts.erase": _post(
        "eraseContact",
        "Erase a contact: the right to be forgotten",
        "IdRequest",
        (
            202,
            "Erased: the contact, the contacts merged into it, their history, identity and search entries and their"
            " conversations' join state are gone from every store at once; an `erased` tombstone (nothing personal)"
            " is on the contacts topic. The topics and stores let go of every old copy by complete_by. 404: unknown,"
            " already erased, or merged away (with merged_into).",
            "EraseResponse",
        ),
        not_found=True,
        write=True,
    ),
    "/contacts.merge": _post(
        "mergeContacts",
        "Merge the source contact into the destination",
        "MergeRequest",
        (
            200,
            "The destination after the merge, with merge_history; with dry_run, a MergePreview (nothing written).",
            "MergeResponse",
        ),
        not_found=True,
        write=True,
        waits=True,
    ),
    "/contacts.unmerge": _post(
        "unmergeContacts",
        "Undo the latest merge of the source into the destination",
        "UnmergeRequest",
        (
            200,
            "The destination without what it gained from the source (values changed since stay) and the restored"
            " source with its id, fields and conversations. 404: unknown destination or a pair never merged;"
            " 409: the source id is live again or one of its conversations belongs to another contact now (nothing changed).",
            "UnmergeResponse",
        ),
        not_found=True,
        conflict=True,
        write=True,
    ),
    "/contacts.dismiss_duplicates": _post(
        "dismissDuplicates",
        "Say a group of contacts are not duplicates",
        "DismissRequest",
        (
            202,
            "Dismissed; empty body. contacts.duplicates no longer offers exactly this group (until a contact joins or"
            " leaves it), on every replica. 404: an id that is not a live contact.",
            None,
        ),
        not_found=True,
        write=True,
    ),
    "/contacts.lookup": _post(
        "lookupContacts",
        "The contacts that have every given via value (normalized)",
        "LookupRequest",
        (200, "Matching live contacts (never merged-away or deleted ones), by display name.", "LookupResponse"),
        waits=True,
    ),
    "/contacts.search": _post(
        "searchContacts",
        "A page of contacts found by name, organization, email or phone digits",
        "SearchRequest",
        (200, "A page; next_cursor is null at the end.", "SearchResponse"),
        waits=True,
    ),
    "/contacts.duplicates": _post(
        "duplicateContacts",
        "Groups of contacts that share an email, a phone or another via value",
        "DuplicatesRequest",
        (200, "A page of groups with their reasons and conflicting fields.", "DuplicatesResponse"),
        body_required=False,
        not_found=True,
        waits=True,
    ),
    "/contacts.history": _post(
        "contactHistory",
        "A contact's change events, newest first, within the events topic's retention",
        "HistoryRequest",
        (
            200,
            "A page of events (what changed, who, how, when). A merged-away or deleted id's events still show;"
            " 404 only for an id that was never a contact within the retention.",
            "HistoryResponse",
        ),
        not_found=True,
    ),
    "/actuator/health": _get("health", "Readiness (the path the platform's probes use)", _HEALTH),
    "/actuator/health/readiness": _get("readiness", "Ready: the store has caught up with the contacts topic", _HEALTH),
    "/actuator/health/liveness": _get("liveness", "Alive: the stream threads have not failed", _HEALTH),
    "/metrics": _get("metrics", "Prometheus metrics", _PROMETHEUS),
    "/actuator/prometheus": _get("prometheus", "Prometheus metrics (where the platform scrapes)", _PROMETHEUS),
    "/openapi.json": _get(
        "openapi",
        "This document",
        {"200": {"description": "OpenAPI 3.0 document.", "content": {_JSON: {"schema": {"type": "object"}}}}},
    ),
}

OPENAPI: dict = {
    "openapi": "3.0.3",
    "info": {
        "title": "contacts-streams",
        "version": VERSION,
        "description": (
            "The contacts component of the Airy platform. Every API call is a POST with a JSON body;"
            " malformed input is a 400 naming the field, unknown ids a 404; unknown fields are ignored and"
            " named in the X-Contacts-Ignored-Fields response header. When the platform's"
            " systemToken or jwtSecret is configured, every /contacts.* call needs"
            " `Authorization: Bearer <system token or HS256 JWT>` (else 403)."
        ),
    },
    "tags": [{"name": "contacts"}, {"name": "operations"}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
        "parameters": _PARAMETERS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The platform's system token or an HS256 JWT; required only when one is configured.",
            }
        },
    },
}


def document() -> dict:
    """A copy of the document, for callers that change it."""
    return copy.deepcopy(OPENAPI)
