"""Avro serialization of contacts and of Airy's Message / Metadata records (fastavro).

Two framings, and readers accept both whatever the configuration:

- **single-object encoding** (no schema registry configured): ``C3 01`` + the writer schema's
  8-byte CRC-64-AVRO fingerprint (little-endian, as the Avro spec and Java write it) + the Avro
  binary body. A codec keeps a table fingerprint -> writer schema: the current schema, the
  older versions the project ships (``schemas/history/<name>-v*.avsc``, loaded by
  ContactCodec) and whatever ``add_writer_schema`` registered.
- **Confluent wire format** (``registry_url`` given, the platform's ``KAFKA_SCHEMA_REGISTRY_URL``):
  magic byte ``0`` + the 4-byte big-endian schema id + the body. ``register`` registers the
  current schema under the codec's subject (``POST /subjects/{subject}/versions``; the service
  calls it at start, so a subject that refuses the schema stops it there) and ``encode`` frames
  with that id. With ``confirm_every`` the registration is repeated by the first encode after
  that many seconds: a registry that lost its schemas (restarted empty, redeployed) gets ours
  back, and records never carry an id the registry has not confirmed lately. ``decode``
  fetches an unknown id's writer schema once (``GET /schemas/ids/{id}``) through
  confluent-kafka's SchemaRegistryClient and keeps it for good (ids are immutable), so records
  written under an id the registry has since forgotten still decode. The framing is done here,
  not by confluent-kafka's AvroSerializer, so that both framings share one fast code path.

A writer schema other than the current one is resolved against the current (reader) schema by
Avro's rules (fields added since get their defaults; removed ones are skipped).

Logical types are not converted: schemas are parsed once with ``logicalType`` stripped (it is
not part of the canonical form, so fingerprints and bytes are unchanged), and timestamps stay
int milliseconds; ContactCodec turns them into the API's ISO strings itself.

Errors: anything undecodable (bad magic, unknown fingerprint or schema id, truncated or
trailing bytes, bytes that do not fit the schema) raises :class:`DecodeError`. A registry that
cannot be reached, times out or answers 5xx raises :class:`RegistryError` instead: the record
may be fine, so a consumer should retry rather than skip it, and a writer answer "unavailable".
A registration the registry refuses (an incompatible or invalid schema, refused credentials)
raises :class:`SchemaRefused`, a RegistryError no retry fixes. A record that does not fit the
schema on encode raises :class:`EncodeError`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fingerprint_of
from fastavro.schema import to_parsing_canonical_form

from . import model
from .avro_reader import compile_reader
from .avro_writer import compile_writer

__all__ = [
    "CONTACTS_SUBJECT",
    "ContactCodec",
    "DecodeError",
    "EncodeError",
    "AvroCodec",
    "RegistryError",
    "SCHEMA_DIR",
    "SchemaRefused",
    "contact_to_record",
    "message_codec",
    "metadata_codec",
    "record_to_contact",
    "shared_registry_client",
]

#: Where the .avsc files live: $CONTACTS_SCHEMA_DIR, else the repository's schemas/.
SCHEMA_DIR = Path(os.environ.get("CONTACTS_SCHEMA_DIR") or Path(__file__).resolve().parent.parent / "schemas")

#: Default registry subjects (TopicNameStrategy of the default topics).
CONTACTS_SUBJECT = "application.communication.contacts-value"
MESSAGES_SUBJECT = "application.communication.messages-value"
METADATA_SUBJECT = "application.communication.metadata-value"

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0

#: After a failed registration, encodes fail at once for this long instead of each waiting for
#: its own timeout against a registry that just did not answer.
REGISTRY_RETRY_PAUSE_S = 1.0

#: SchemaRegistryClient settings: its own defaults wait for ever on a registry that accepts the
#: connection but does not answer (no timeout) and retry three times with back-off.
REGISTRY_CLIENT_DEFAULTS = {"timeout": 5.0, "max.retries": 1, "retries.wait.ms": 100, "retries.max.wait.ms": 500}

log = logging.getLogger(__name__)


class DecodeError(ValueError):
    """The bytes are not a record this codec can read."""


class EncodeError(ValueError):
    """The record does not fit the schema."""


class RegistryError(RuntimeError):
    """The schema registry could not be reached, timed out or failed (5xx): retry later."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status, when the registry answered
        self.code = code  # the registry's error_code, when it gave one


class SchemaRefused(RegistryError):
    """The registry answered a registration with a client error: the subject's compatibility
    rule refuses the schema (409), the schema is invalid (422), the credentials are refused
    (401/403). Retrying does not help; someone has to change the subject or the schema."""


# --- schemas ------------------------------------------------------------------------------------


def _load_schema(schema: Any) -> Any:
    """A schema given as a dict, a path to an .avsc file, or JSON text."""
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, Path) or (isinstance(schema, str) and not schema.lstrip().startswith(("{", "[", '"'))):
        with open(schema, encoding="utf-8") as handle:
            return json.load(handle)
    if isinstance(schema, str):
        return json.loads(schema)
    raise TypeError(f"a schema must be a dict, a path or JSON text, not {type(schema).__name__}")


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: (value if key == "default" else _strip_logical_types(value))
            for key, value in schema.items()
            if key != "logicalType"
        }
    if isinstance(schema, list):
        return [_strip_logical_types(item) for item in schema]
    return schema


def _parse(schema: dict) -> dict:
    parsed = parse_schema(_strip_logical_types(schema))
    if not isinstance(parsed, dict):
        raise TypeError(f"a record schema was expected, not {parsed!r}"[:300])
    return parsed


def _fingerprint(parsed: dict) -> bytes:
    return bytes.fromhex(_fingerprint_of(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


# --- registry -----------------------------------------------------------------------------------

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def shared_registry_client(url: str, **conf: Any):
    """A SchemaRegistryClient for ``url`` (one per URL and configuration, shared by codecs);
    ``conf`` overrides REGISTRY_CLIENT_DEFAULTS (e.g. ``timeout=2.0``)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {**REGISTRY_CLIENT_DEFAULTS, **conf}
    key = json.dumps([url, sorted(conf.items())], default=str)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = SchemaRegistryClient({"url": url, **conf})
        return client


_REFUSALS = {
    409: "it is incompatible with the schemas the subject already holds (the subject's compatibility rule refuses it)",
    422: "the registry finds the schema invalid",
    401: "the registry refuses the credentials",
    403: "the registry refuses the credentials",
}


def _registration_error(name: str, subject: str, err: Exception) -> RegistryError:
    from confluent_kafka.schema_registry import SchemaRegistryError

    if isinstance(err, SchemaRegistryError):
        status, code = err.http_status_code, err.error_code
        said = f"HTTP {status}, error code {code}: {err.error_message}"
        if 400 <= status < 500 and status not in (408, 429):
            why = _REFUSALS.get(status, "the registry refuses it")
            return SchemaRefused(
                f"the schema registry refuses the {name} schema under subject {subject}: {why} ({said})", status, code
            )
        return RegistryError(
            f"the schema registry failed to register the {name} schema under subject {subject} ({said})", status, code
        )
    # httpx's transport errors (refused, reset, timed out) and anything else on the way
    return RegistryError(
        f"the schema registry cannot be reached to register the {name} schema under subject {subject}: {type(err).__name__}: {err}"
    )


# --- the codec ----------------------------------------------------------------------------------


class AvroCodec:
    """Encodes and decodes records of one Avro schema, single-object or Confluent-framed.

    ``schema`` is a dict, a path to an .avsc file or JSON text. With ``registry_url`` (or a
    ready ``registry_client``) ``encode`` writes the Confluent wire format under ``subject``
    (default ``<record full name>-value``); without, single-object encoding. ``history`` lists
    older writer schemas of the same record for single-object decoding. ``confirm_every``
    (seconds; None: never) makes the first encode after that long register the schema again.
    ``fast_reader`` reads records of the current schema with a reader compiled from it
    (``avro_reader``) rather than fastavro's.
    """

    def __init__(
        self,
        schema: Any,
        registry_url: str | None = None,
        subject: str | None = None,
        *,
        registry_client: Any = None,
        history: Iterable[Any] = (),
        confirm_every: float | None = None,
        fast_reader: bool = False,
    ):
        self.schema = _load_schema(schema)
        self.parsed = _parse(self.schema)
        parsed = self.parsed
        self.name = str(parsed.get("name", parsed.get("type")))
        self.fingerprint = _fingerprint(self.parsed)
        self._single_object_header = SINGLE_OBJECT_MAGIC + self.fingerprint
        # The same bytes as fastavro for the records it handles (None: fastavro writes them all).
        self._fast_writer = compile_writer(self.parsed)
        # Of records written with the current schema. Measured faster than fastavro's reader for
        # records of many small records (events: ~2x) and for typical contacts (10.8 against
        # 16.9 us; even for a contact with three merged ones and nested metadata).
        self._fast_reader = compile_reader(self.parsed) if fast_reader else None
        # fingerprint -> parsed writer schema; None means "the current schema" (no resolution).
        self._writers: dict[bytes, dict | None] = {self.fingerprint: None}
        for older in history:
            self.add_writer_schema(older)
        if registry_client is None and registry_url:
            registry_client = shared_registry_client(registry_url)
        self.registry = registry_client
        self.subject = subject or f"{self.name}-value"
        self.confirm_every = confirm_every
        self._schema_id: int | None = None
        self._confluent_header: bytes | None = None
        self._confirmed_at = 0.0  # time.monotonic() of the last registration the registry answered
        self._failure: tuple[float, RegistryError] | None = None  # the last failed registration
        # schema id -> parsed writer schema; None means "the current schema". Never evicted:
        # records keep the id they were written with, whatever the registry says later.
        self._registry_writers: dict[int, dict | None] = {}
        self._lock = threading.Lock()

    # writer schemas

    def add_writer_schema(self, schema: Any) -> str:
        """Registers an older writer schema for single-object decoding; returns its fingerprint (hex)."""
        parsed = _parse(_load_schema(schema))
        fingerprint = _fingerprint(parsed)
        if fingerprint != self.fingerprint:
            self._writers[fingerprint] = parsed
        return fingerprint.hex()

    @property
    def schema_id(self) -> int:
        """The registry id of the current schema (registers it under the subject on first use)."""
        if self._schema_id is None:
            return self.register()
        return self._schema_id

    def register(self) -> int:
        """Register the current schema under the subject and return its id: the one the registry
        already gives it, or a new one. Registration is idempotent, so this also confirms the id
        and gives a registry that lost its schemas ours back. Raises SchemaRefused when the
        registry refuses the schema, RegistryError when it cannot answer."""
        if self.registry is None:
            raise RegistryError("no schema registry is configured")
        from confluent_kafka.schema_registry import Schema

        with self._lock:
            now = time.monotonic()
            if self._schema_id is not None and self._fresh(now):  # another thread just did it
                return self._schema_id
            if self._failure is not None and now - self._failure[0] < REGISTRY_RETRY_PAUSE_S:
                failed = self._failure[1]
                raise type(failed)(str(failed), failed.status, failed.code) from failed
            if self._schema_id is not None:
                # The client answers a repeated registration from its cache: ask the registry.
                self.registry.clear_caches()
            try:
                schema_id = self.registry.register_schema(self.subject, Schema(json.dumps(self.schema), "AVRO"))
            except Exception as err:  # SchemaRegistryError, httpx errors
                failure = _registration_error(self.name, self.subject, err)
                self._failure = (time.monotonic(), failure)
                raise failure from err
            self._failure = None
            if self._schema_id is not None and schema_id != self._schema_id:
                log.warning(
                    "the schema registry gives the %s schema under %s id %d, not %d as before (did it lose its schemas?); "
                    "records written with %d still decode here",
                    self.name,
                    self.subject,
                    schema_id,
                    self._schema_id,
                    self._schema_id,
                )
            self._registry_writers[schema_id] = None
            self._confluent_header = bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
            self._schema_id = schema_id
            self._confirmed_at = time.monotonic()
            return schema_id

    def _fresh(self, now: float) -> bool:
        return self.confirm_every is None or now - self._confirmed_at < self.confirm_every

    def _registry_writer(self, schema_id: int) -> dict | None:
        try:
            return self._registry_writers[schema_id]
        except KeyError:
            pass
        if self.registry is None:
            raise DecodeError(f"a Confluent-framed record (schema id {schema_id}) but no schema registry is configured")
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            registered = self.registry.get_schema(schema_id)
        except SchemaRegistryError as err:
            if err.http_status_code == 404:
                raise DecodeError(f"schema id {schema_id} is unknown to the schema registry") from err
            raise RegistryError(f"schema registry error fetching schema id {schema_id}: {err}") from err
        except Exception as err:
            raise RegistryError(f"could not fetch schema id {schema_id} from the schema registry: {err}") from err
        if registered.schema_type not in (None, "AVRO"):
            raise DecodeError(f"schema id {schema_id} is a {registered.schema_type} schema, not Avro")
        try:
            parsed = _parse(json.loads(registered.schema_str))
        except Exception as err:
            raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {err}") from err
        writer = None if _fingerprint(parsed) == self.fingerprint else parsed
        self._registry_writers[schema_id] = writer
        return writer

    # encode / decode

    def _header(self) -> bytes:
        if self.registry is not None:
            if self._confluent_header is None or not self._fresh(time.monotonic()):
                self.register()
            header = self._confluent_header
            assert header is not None, "register() sets it or raises"
            return header
        return self._single_object_header

    def encode_fast(self, record: dict) -> bytes | None:
        """The record's bytes as ``encode`` writes them, or None when only fastavro writes this
        record (a value of an unusual Python type, or one that does not fit the schema)."""
        if self._fast_writer is None:
            return None
        header = self._header()
        try:
            return header + self._fast_writer(record)
        except Exception:  # noqa: BLE001 - fastavro decides what such a record becomes
            return None

    def encode(self, record: dict) -> bytes:
        """The record's bytes: Confluent-framed with a registry, single-object without."""
        fast = self.encode_fast(record)
        if fast is not None:
            return fast
        out = io.BytesIO()  # fastavro writes it, or says why it cannot
        out.write(self._header())
        try:
            schemaless_writer(out, self.parsed, record, disable_tuple_notation=True)
        except Exception as err:  # fastavro raises ValueError, TypeError, AttributeError, ...
            raise EncodeError(f"the record does not fit the {self.name} schema: {err}") from err
        return out.getvalue()

    def decode(self, data: bytes) -> dict:
        """The record in ``data`` (either framing), resolved against the current schema."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, not {type(data).__name__}")
        size = len(data)
        if size >= 10 and data[0] == 0xC3 and data[1] == 0x01:
            fingerprint = bytes(data[2:10])
            try:
                writer = self._writers[fingerprint]
            except KeyError:
                raise DecodeError(f"unknown writer schema fingerprint {fingerprint.hex()} for {self.name}") from None
            offset = 10
        elif size >= 5 and data[0] == CONFLUENT_MAGIC:
            writer = self._registry_writer(int.from_bytes(data[1:5], "big"))
            offset = 5
        elif size == 0:
            raise DecodeError("empty value (a tombstone is None, not bytes)")
        else:
            raise DecodeError(
                f"not a single-object (C3 01) or Confluent-framed (00) Avro record: starts with {bytes(data[:2]).hex()}"
            )
        if writer is None and self._fast_reader is not None and type(data) is bytes:
            try:
                fast, end = self._fast_reader(data, offset)
                if end == size:
                    return fast
            except Exception:  # noqa: BLE001, S110 - fastavro reads it, or says why it cannot
                pass
        buffer = io.BytesIO(data)
        buffer.seek(offset)
        try:
            if writer is None:
                record = schemaless_reader(buffer, self.parsed, None)
            else:
                record = schemaless_reader(buffer, writer, self.parsed)
        except Exception as err:  # EOFError, UnicodeDecodeError, SchemaResolutionError, ...
            raise DecodeError(f"undecodable {self.name} record: {type(err).__name__}: {err}") from err
        if buffer.tell() != size:
            raise DecodeError(f"{size - buffer.tell()} trailing bytes after the {self.name} record")
        if not isinstance(record, dict):  # a record schema reads records; fastavro types any value
            raise DecodeError(f"the {self.name} schema read no record")
        return record


# --- contacts -----------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(("id",) + model.CONTACT_FIELDS + ("created_at", "updated_at", "merge_history"))
# A merge_history entry: the source's fields without its own history, plus what the merge added.
_ENTRY_FIELDS = (_RECORD_FIELDS - {"merge_history"}) | frozenset(model.HISTORY_ENTRY_FIELDS)
_ADDRESS_FIELDS = frozenset(model.ADDRESS_FIELDS)


_METADATA_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)  # one, not one per record


def _metadata_text(metadata: dict) -> str:
    # The contacts topic's bytes: json.dumps' spelling of floats, so orjson only without them.
    if not model.holds_float(metadata):
        try:
            return orjson.dumps(metadata).decode("utf-8")
        except TypeError:  # keys that are not strings, lone surrogates: as before
            pass
    return _METADATA_JSON.encode(metadata)


def contact_to_record(contact: dict, *, entry: bool = False) -> dict:
    """The Avro record of an API-shaped contact (timestamps to ms, metadata to JSON text);
    ``entry``: a merge_history entry (merged_at/merged_into/gained allowed, merge_history not)."""
    if not isinstance(contact, dict):
        raise EncodeError(f"a contact must be a dict, not {type(contact).__name__}")
    unknown = contact.keys() - (_ENTRY_FIELDS if entry else _RECORD_FIELDS)
    if unknown:
        what = "merge_history entry" if entry else "contact"
        raise EncodeError(f"not {what} fields: {', '.join(sorted(map(str, unknown)))}")
    for name, value in contact.items():
        if value is None:
            raise EncodeError(f"{name} is None: an absent field is omitted, not None")
    record = dict(contact)
    try:
        record["created_at"] = model.iso_to_millis(contact["created_at"])
        for name in ("updated_at", "merged_at"):
            if name in contact:
                record[name] = model.iso_to_millis(contact[name])
    except KeyError:
        raise EncodeError("a contact needs created_at") from None
    except (TypeError, ValueError) as err:
        raise EncodeError(f"created_at/updated_at/merged_at must be ISO 8601 timestamps: {err}") from None
    if "metadata" in contact:
        try:
            record["metadata"] = _metadata_text(contact["metadata"])
        except (TypeError, ValueError) as err:
            raise EncodeError(f"metadata is not JSON: {err}") from None
    if "address" in contact and not (isinstance(contact["address"], dict) and contact["address"].keys() <= _ADDRESS_FIELDS):
        raise EncodeError("address must be a dict of the seven address fields")
    if isinstance(contact.get("timezone"), bool):
        raise EncodeError("timezone must be a string or a number, not a boolean")
    if "merge_history" in contact:
        record["merge_history"] = [contact_to_record(item, entry=True) for item in contact["merge_history"]]
    return record


def _address(value: dict) -> dict:
    return {key: part for key, part in value.items() if part is not None}


def _merge_history(value: list) -> list:
    return [record_to_contact(item) for item in value]


_FROM_RECORD: dict[str, Callable[[Any], Any]] = {
    "address": _address,
    "metadata": model.json_loads_exact,  # the stdlib's value, mostly by orjson
    "created_at": model.millis_to_iso,
    "updated_at": model.millis_to_iso,
    "merged_at": model.millis_to_iso,
    "merge_history": _merge_history,
}


def record_to_contact(record: dict) -> dict:
    """The API-shaped contact of an Avro record (nulls omitted)."""
    contact = {}
    for name, value in record.items():
        if value is None:
            continue
        convert = _FROM_RECORD.get(name)
        contact[name] = value if convert is None else convert(value)
    return contact


class ContactCodec:
    """Contacts (API-shaped dicts) <-> bytes of the contacts topic.

    ``decode_contact(encode_contact(c)) == c`` for every contact the model produces: timezone
    keeps its type (str, int, float), metadata its JSON, created_at its exact string.
    """

    def __init__(
        self,
        registry_url: str | None = None,
        subject: str | None = CONTACTS_SUBJECT,
        *,
        registry_client: Any = None,
        schema: Any = None,
        history: Iterable[Any] | None = None,
        confirm_every: float | None = None,
    ):
        if schema is None:
            schema = SCHEMA_DIR / "contact.avsc"
        if history is None:
            history = sorted((SCHEMA_DIR / "history").glob("contact-v*.avsc"))
        self.avro = AvroCodec(
            schema,
            registry_url,
            subject,
            registry_client=registry_client,
            history=history,
            confirm_every=confirm_every,
            fast_reader=True,  # every read of a contact (info, a page, an export, the rebuild) decodes it
        )

    def add_writer_schema(self, schema: Any) -> str:
        return self.avro.add_writer_schema(schema)

    def encode_contact(self, contact: dict) -> bytes:
        return self.avro.encode(contact_to_record(contact))

    def decode_contact(self, data: bytes) -> dict:
        record = self.avro.decode(data)
        try:
            return record_to_contact(record)
        except Exception as err:  # metadata that is not JSON, a timestamp out of range
            raise DecodeError(f"undecodable contact: {type(err).__name__}: {err}") from err

    def decode_indexable(self, data: bytes) -> dict:
        """The Avro record of a contact as it is (absent fields None, timestamps in ms,
        metadata as JSON text), for a reader that needs only some of its fields (the store's
        indexes): checked to give a contact through ``decode_contact``, without building one."""
        record = self.avro.decode(data)
        try:
            _check_convertible(record)
        except Exception as err:
            raise DecodeError(f"undecodable contact: {type(err).__name__}: {err}") from err
        return record


# The timestamps record_to_contact can write as ISO 8601 (years 1 to 9999).
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_800_000


def _check_convertible(record: dict) -> None:
    """Raise what record_to_contact would raise, at a fraction of its cost."""
    metadata = record.get("metadata")
    if metadata is not None:
        model.json_loads_exact(metadata)
    for name in ("created_at", "updated_at", "merged_at"):
        ms = record.get(name)
        if ms is not None and not _MIN_MS <= ms < _MAX_MS:
            raise OverflowError(f"{name} {ms} is out of the range of dates")
    for entry in record.get("merge_history") or ():
        _check_convertible(entry)


def message_codec(registry_url: str | None = None, subject: str | None = MESSAGES_SUBJECT, **kwargs: Any) -> AvroCodec:
    """A codec of Airy's ``co.airy.avro.communication.Message`` (the messages topic). The
    routers decode every message, so it reads with the compiled reader (fastavro's took an
    eighth of auto-create's time at 1M contacts)."""
    kwargs.setdefault("fast_reader", True)
    return AvroCodec(SCHEMA_DIR / "message.avsc", registry_url, subject, **kwargs)


def metadata_codec(registry_url: str | None = None, subject: str | None = METADATA_SUBJECT, **kwargs: Any) -> AvroCodec:
    """A codec of Airy's ``co.airy.avro.communication.Metadata`` (the metadata topic), read
    with the compiled reader like the messages."""
    kwargs.setdefault("fast_reader", True)
    return AvroCodec(SCHEMA_DIR / "metadata.avsc", registry_url, subject, **kwargs)
