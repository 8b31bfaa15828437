"""The contact-events topic's records: one change of one contact (``schemas/contact-event.avsc``).

An event is a dict shaped like the schema: ``event_id``, ``contact_id``, ``operation``, ``time``,
``actor``, ``origin``, ``other_contact_id`` (or None) and ``changes``, a list of
``{"path", "before", "after"}`` whose values are JSON text or None (absent).

The writer makes one event per contact record it writes (``event_for``), in the same
transaction, from the contact before and after the change; ``diff`` and its inverse
``apply_changes`` are pure, so replaying a contact's events from its creation onto nothing gives
its current state (what a CRM sync relies on, and what the property tests check).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from contacts_streams import model
from contacts_streams.config import Config
from contacts_streams.serialization import SCHEMA_DIR, AvroCodec

EVENTS_SUBJECT = "application.communication.contact-events-value"

# Fields diffed key by key (``via.email``); every other field, merge_history included, whole.
KEYED_FIELDS = ("via", "address", "metadata", "conversations")
_FIELD_ORDER = {name: n for n, name in enumerate(("id",) + model.CONTACT_FIELDS + ("created_at", "updated_at", "merge_history"))}
# The operations after which the contact no longer exists under its id.
GONE = ("deleted", "merged_away", "erased")
# The contact record's header naming the other contact of a merge or unmerge (decisions.py).
OTHER_CONTACT_HEADERS = ("merged_from", "merged_into", "unmerged_from", "restored_from")


def events_topic(config: Config) -> str:
    return config.events_topic


_JSON_TEXT = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_json_string = json.encoder.encode_basestring  # what that encoder writes for a str


def json_text(value: Any) -> str:
    """A value as the events carry it: compact JSON, keys sorted, UTF-8 as it is."""
    # Most values are strings and ints: written directly, as the encoder would write them.
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is int:
        return int.__repr__(value)
    return _JSON_TEXT.encode(value)


_LAST = len(_FIELD_ORDER)


def _paths(contact: dict | None, order: dict[str, int]) -> dict[str, Any]:
    """Path -> value of everything a contact holds, map fields key by key; each path's place in
    the contact's field order goes into ``order`` (that of the field the path starts with)."""
    out: dict[str, Any] = {}
    for name, value in (contact or {}).items():
        rank = _FIELD_ORDER.get(name.partition(".")[0], _LAST)
        if name in KEYED_FIELDS and isinstance(value, dict):
            for key, item in value.items():
                path = f"{name}.{key}"
                out[path] = item
                order[path] = rank
        elif value is not None:
            out[name] = value
            order[name] = rank
    return out


def diff(before: dict | None, after: dict | None) -> list[dict]:
    """The changes from ``before`` to ``after`` (None: no contact), in the contact's field order:
    ``{"path", "before", "after"}`` with JSON text values, None where the path is absent."""
    order: dict[str, int] = {}
    old, new = _paths(before, order), _paths(after, order)
    changes = []
    paths = list(old) + [p for p in new if p not in old]
    paths.sort(key=order.__getitem__)  # stable: map keys keep their order
    for path in paths:
        if path in old:
            was = json_text(old[path]) if path not in new or not model.same_json(old[path], new[path]) else None
            if was is None:
                continue
            changes.append({"path": path, "before": was, "after": json_text(new[path]) if path in new else None})
        else:
            changes.append({"path": path, "before": None, "after": json_text(new[path])})
    return changes


def apply_changes(contact: dict | None, event: dict) -> dict | None:
    """The contact after ``event`` (the inverse of ``diff``): None after a deleted, merged-away or
    erased event; else ``contact`` (or nothing) with each change's ``after`` set or removed. A
    map field left without keys is removed, as the contacts themselves never hold an empty one."""
    if event["operation"] in GONE:
        return None
    out = {
        name: (dict(value) if name in KEYED_FIELDS and isinstance(value, dict) else value)
        for name, value in (contact or {}).items()
    }
    for change in event.get("changes") or ():
        name, dot, key = change["path"].partition(".")
        after = change.get("after")
        if dot and name in KEYED_FIELDS:
            values = out.setdefault(name, {})
            if after is None:
                values.pop(key, None)
                if not values:
                    del out[name]
            else:
                values[key] = json.loads(after)
        elif after is None:
            out.pop(change["path"], None)
        else:
            out[change["path"]] = json.loads(after)
    return out


def event_for(
    contact_id: str,
    operation: str,
    before: dict | None,
    after: dict | None,
    *,
    actor: str,
    origin: str,
    now_ms: int,
    headers: dict[str, str] | None = None,
) -> dict:
    """The event of one contact record: what changed from ``before`` to ``after`` (every field
    going away for a deleted or merged-away contact), who and how, and the other contact of a
    merge or unmerge (from the record's headers)."""
    headers = headers or {}
    other = next((headers[name] for name in OTHER_CONTACT_HEADERS if headers.get(name)), None) if headers else None
    return {
        "event_id": model.random_uuid(),
        "contact_id": contact_id,
        "operation": operation,
        "time": model.millis_to_iso(now_ms),
        "actor": actor,
        "origin": origin,
        "other_contact_id": other,
        "changes": [] if operation == "erased" else diff(before, after),
    }


def replay(events: Iterable[dict]) -> dict | None:
    """A contact's state after its events, oldest first, from nothing."""
    contact = None
    for event in events:
        contact = apply_changes(contact, event)
    return contact


def changed_paths(event: dict) -> list[str]:
    return [change["path"] for change in event.get("changes") or ()]


class EventCodec:
    """Events (dicts) <-> bytes; the Confluent wire format with a registry, else single-object."""

    def __init__(
        self,
        registry_url: str | None = None,
        subject: str | None = EVENTS_SUBJECT,
        *,
        registry_client: Any = None,
        schema: Any = None,
        history: Iterable[Any] = (),
        confirm_every: float | None = None,
    ):
        self.avro = AvroCodec(
            schema if schema is not None else SCHEMA_DIR / "contact-event.avsc",
            registry_url,
            subject,
            registry_client=registry_client,
            history=history,
            confirm_every=confirm_every,
            fast_reader=True,  # every replica's history reads each event
        )

    def encode(self, event: dict) -> bytes:
        # An event as event_for makes it is written as it is (a missing other_contact_id, before
        # or after is the schema's null default either way); anything else is reshaped first.
        fast = self.avro.encode_fast(event)
        if fast is not None:
            return fast
        record = dict(event)
        record.setdefault("other_contact_id", None)
        record["changes"] = [
            {"path": c["path"], "before": c.get("before"), "after": c.get("after")} for c in event.get("changes", ())
        ]
        return self.avro.encode(record)

    def decode(self, data: bytes) -> dict:
        return self.avro.decode(data)
