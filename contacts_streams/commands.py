"""Commands, replies, idempotency entries and position tokens: the formats that move a write to
the writer and its answer back (DESIGN.md, "Writes: commands and the writer").

Pure data and JSON; no Kafka here. Values are compact JSON (internal topics, one version field
so a later format can be told apart); keys are the command id (commands, replies) or the
idempotency key (caller, endpoint, key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from contacts_streams import model

# HTTP writes
CREATE, IMPORT, UPDATE, DELETE, MERGE = "create", "import", "update", "delete", "merge"
UNMERGE, DISMISS_DUPLICATES, ERASE = "unmerge", "dismiss_duplicates", "erase"
# From the conversation routers: one command carries a whole batch of conversations.
AUTO_CREATE = "auto_create"
TYPES = (CREATE, IMPORT, UPDATE, DELETE, MERGE, UNMERGE, DISMISS_DUPLICATES, ERASE, AUTO_CREATE)

# Who (actor) and how (origin) wrote: carried to the change events. Commands written before
# these fields existed decode with the defaults.
SYSTEM, ANONYMOUS = "system", "anonymous"
ORIGIN_HTTP, ORIGIN_IMPORT, ORIGIN_AUTO_CREATE, ORIGIN_CLI = "http", "import", "auto-create", "cli"

VERSION = 1
# A 16 MiB request body becomes a command a little larger; the commands topic and the producers
# take up to this, anything bigger is refused with 413 before it is produced.
MAX_COMMAND_BYTES = 20 * 1024 * 1024
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000


class BadCommand(ValueError):
    """A record of the commands topic that is not a command this writer understands."""


def _dumps(value: Any) -> bytes:
    # A float in a payload (metadata, timezone) may be spelled otherwise than json.dumps would
    # (model.json_bytes): the writer reads the same value back, nothing compares the bytes.
    return model.json_bytes(value)


@dataclass(frozen=True)
class Idempotency:
    caller: str
    endpoint: str
    key: str
    body_hash: str

    @property
    def record_key(self) -> bytes:
        # NUL cannot appear in a header value or a JWT subject, so the three parts stay apart.
        return f"{self.caller}\x00{self.endpoint}\x00{self.key}".encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    payload: dict
    sender: str = ""
    deadline_ms: int | None = None  # None: never expires (router commands)
    actor: str = SYSTEM
    origin: str = ORIGIN_HTTP
    idempotency: Idempotency | None = None

    @classmethod
    def new(cls, type_: str, payload: dict, **kwargs) -> Command:
        return cls(id=model.random_uuid(), type=type_, payload=payload, **kwargs)

    def encode(self) -> bytes:
        value = {
            "v": VERSION,
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "sender": self.sender,
            "deadline": self.deadline_ms,
            "actor": self.actor,
            "origin": self.origin,
        }
        if self.idempotency is not None:
            i = self.idempotency
            value["idempotency"] = {"caller": i.caller, "endpoint": i.endpoint, "key": i.key, "hash": i.body_hash}
        return _dumps(value)

    @classmethod
    def decode(cls, raw: bytes | None) -> Command:
        if raw is None:
            raise BadCommand("undecodable command: no value (a tombstone)")
        try:
            value = model.json_loads(raw)
            if not isinstance(value, dict) or value.get("v") != VERSION:
                raise BadCommand(f"not a version {VERSION} command")
            type_ = value["type"]
            if type_ not in TYPES:
                raise BadCommand(f"unknown command type {type_!r}")
            payload = value["payload"]
            if not isinstance(payload, dict):
                raise BadCommand("the payload is not an object")
            deadline = value.get("deadline")
            if deadline is not None and not isinstance(deadline, int):
                raise BadCommand("the deadline is not a number")
            idem = value.get("idempotency")
            idempotency = None
            if idem is not None:
                idempotency = Idempotency(str(idem["caller"]), str(idem["endpoint"]), str(idem["key"]), str(idem["hash"]))
            return cls(
                id=str(value["id"]),
                type=type_,
                payload=payload,
                sender=str(value.get("sender", "")),
                deadline_ms=deadline,
                actor=str(value.get("actor", SYSTEM)),
                origin=str(value.get("origin", ORIGIN_HTTP)),
                idempotency=idempotency,
            )
        except BadCommand:
            raise
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError) as err:
            raise BadCommand(f"undecodable command: {err!r}"[:300]) from None


_UNDECODABLE = (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError)


def _positions(value) -> dict[int, int]:
    return {int(p): int(o) for p, o in (value or {}).items()}


def _answer_of(value: dict) -> dict:
    """What a reply and an idempotency entry both say, read back from JSON."""
    return {
        "status": int(value["status"]),
        "ids": [str(i) for i in value.get("ids") or []],
        "error": value.get("error"),
        "offsets": _positions(value.get("offsets")),
        "updated": [int(i) for i in value.get("updated") or []],
    }


@dataclass(frozen=True)
class Reply:
    """What the writer decided: the status, the ids the answer is about, the error, and the
    contacts-topic offsets (partition -> offset of the last record it produced there). Never a
    body: the answering replica builds it from its own store once it has applied the offsets."""

    status: int
    ids: list[str] = field(default_factory=list)
    error: dict | None = None  # {"message", "field"?, "merged_into"?}
    offsets: dict[int, int] = field(default_factory=dict)
    # The dismissed-groups topic's offsets it produced (partition -> offset), if any.
    dismissed: dict[int, int] = field(default_factory=dict)
    # An upsert import: the indexes of the elements that updated a contact.
    updated: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "v": VERSION,
            "status": self.status,
            "ids": self.ids,
            "offsets": {str(p): o for p, o in self.offsets.items()},
        }
        if self.error is not None:
            value["error"] = self.error
        if self.dismissed:
            value["dismissed"] = {str(p): o for p, o in self.dismissed.items()}
        if self.updated:
            value["updated"] = self.updated
        return _dumps(value)

    @classmethod
    def decode(cls, raw: bytes | None) -> Reply:
        if raw is None:
            raise BadCommand("undecodable reply: no value (a tombstone)")
        try:
            value = model.json_loads(raw)
            return cls(**_answer_of(value), dismissed=_positions(value.get("dismissed")))
        except _UNDECODABLE as err:
            raise BadCommand(f"undecodable reply: {err!r}"[:300]) from None


@dataclass(frozen=True)
class Remembered:
    """An Idempotency-Key's first answer (no body), kept 24 h on the idempotency topic."""

    status: int
    ids: list[str]
    error: dict | None
    offsets: dict[int, int]
    body_hash: str
    at_ms: int
    updated: list[int] = field(default_factory=list)

    def reply(self) -> Reply:
        return Reply(self.status, list(self.ids), self.error, dict(self.offsets), updated=list(self.updated))

    def encode(self) -> bytes:
        value = {
            "v": VERSION,
            "status": self.status,
            "ids": self.ids,
            "error": self.error,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "hash": self.body_hash,
            "at": self.at_ms,
        }
        if self.updated:
            value["updated"] = self.updated
        return _dumps(value)

    @classmethod
    def decode(cls, raw: bytes) -> Remembered:
        try:
            value = model.json_loads(raw)
            return cls(**_answer_of(value), body_hash=str(value["hash"]), at_ms=int(value["at"]))
        except _UNDECODABLE as err:
            raise BadCommand(f"undecodable idempotency entry: {err!r}"[:300]) from None


def body_hash(endpoint: str, body: Any) -> str:
    """The fingerprint of a request body: equal JSON (whatever its spacing or key order) hashes
    equal, so a client that re-serializes its retry is still the same request."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


# --- position tokens --------------------------------------------------------------------------

TOKEN_PREFIX = "p1."
MAX_TOKEN_LENGTH = 4096


class BadPosition(ValueError):
    """An X-Contacts-Min-Position this service did not hand out."""


def encode_position(offsets: dict[int, int]) -> str:
    """An opaque token of contacts-topic offsets (partition -> offset of a record)."""
    text = ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))
    return TOKEN_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_position(token: str) -> dict[int, int]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        raise BadPosition("not a position this service handed out")
    body = token[len(TOKEN_PREFIX) :]
    try:
        text = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadPosition("not a position this service handed out") from None
    offsets: dict[int, int] = {}
    if not text:
        return offsets
    for part in text.split(","):
        partition, sep, offset = part.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit() or len(partition) > 6 or len(offset) > 19:
            raise BadPosition("not a position this service handed out")
        offsets[int(partition)] = max(offsets.get(int(partition), -1), int(offset))
    return offsets


def merge_positions(*positions: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for offsets in positions:
        for p, o in offsets.items():
            out[p] = max(out.get(p, -1), o)
    return out
