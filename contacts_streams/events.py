"""The contact-events topic's records: one change of one contact (``schemas/contact-event.avsc``).

An event is a dict shaped like the schema: ``event_id``, ``contact_id``, ``operation``, ``time``,
``actor``, ``origin``, ``other_contact_id`` (or None) and ``changes``, a list of
``{"path", "before", "after"}`` whose values are JSON text or None (absent). This module only
says how events travel; what a change becomes is decided where the contact record is written
(the writer), so both land in one transaction.
"""

from __future__ import annotations

from typing import Any, Iterable

from contacts_streams.config import Config
from contacts_streams.serialization import SCHEMA_DIR, AvroCodec

EVENTS_SUBJECT = "application.communication.contact-events-value"


def events_topic(config: Config) -> str:
    return config.events_topic


class EventCodec:
    """Events (dicts) <-> bytes; the Confluent wire format with a registry, else single-object."""

    def __init__(self, registry_url: str | None = None, subject: str | None = EVENTS_SUBJECT, *, registry_client: Any = None,
                 schema: Any = None, history: Iterable[Any] = (), confirm_every: float | None = None):
        self.avro = AvroCodec(
            schema if schema is not None else SCHEMA_DIR / "contact-event.avsc",
            registry_url,
            subject,
            registry_client=registry_client,
            history=history,
            confirm_every=confirm_every,
        )

    def encode(self, event: dict) -> bytes:
        record = dict(event)
        record.setdefault("other_contact_id", None)
        record["changes"] = [
            {"path": c["path"], "before": c.get("before"), "after": c.get("after")} for c in event.get("changes", ())
        ]
        return self.avro.encode(record)

    def decode(self, data: bytes) -> dict:
        return self.avro.decode(data)
