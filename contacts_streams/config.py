"""Configuration from the environment, validated once at start.

The first group comes from the platform's config maps (`kafka-config`, `security`) under the names
the platform uses; the rest is the component's own. Defaults make `make run` work with nothing set.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Mapping


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in [
        Setting("KAFKA_BROKERS", "localhost:9092", "Kafka bootstrap servers (comma-separated host:port)"),
        Setting("KAFKA_SCHEMA_REGISTRY_URL", "", "Schema Registry URL; empty: Avro single-object encoding"),
        Setting("KAFKA_COMMIT_INTERVAL_MS", "100", "longest time the auto-create consumer keeps a transaction open"),
        Setting("systemToken", "", "system token accepted as `Authorization: Bearer <token>`"),
        Setting("jwtSecret", "", "HS256 secret of accepted JWTs"),
        Setting("allowedOrigins", "", "CORS origins, comma-separated, `*` for any; empty: no CORS headers"),
        Setting("CONTACTS_TOPIC", "application.communication.contacts", "the compacted contacts topic"),
        Setting("MESSAGES_TOPIC", "application.communication.messages", "the messages topic auto-create reads"),
        Setting("METADATA_TOPIC", "application.communication.metadata", "the metadata topic auto-create reads"),
        Setting("CONTACTS_PARTITIONS", "10", "partitions of the contacts topic when this service creates it"),
        Setting("APPLICATION_ID", "contacts-streams", "consumer group id and transactional id prefix"),
        Setting("INSTANCE_ID", "", "this instance's stable name in transactional ids [default: the host name]"),
        Setting("STATE_DIR", "state", "folder of the RocksDB store"),
        Setting("PORT", "8080", "HTTP port"),
        Setting("HTTP_THREADS", "32", "threads serving HTTP requests"),
        Setting("WRITE_TIMEOUT_MS", "10000", "longest a write waits for the broker before answering 503"),
        Setting("AUTO_CREATE_ENABLED", "true", "create a contact for every new conversation (false: a CRM owns contacts)"),
        Setting("ERASE_WITHIN_MS", "604800000", "longest time personal data stays on the topics the service keeps by retention (the dead-letter topic, ...)"),
        Setting("LIVENESS_STALL_MS", "300000", "liveness fails when a stream stage has made no progress on waiting input for this long"),
        Setting("LOG_FORMAT", "text", "`text` or `json` (one object a line)"),
        Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ]
}


@dataclass(frozen=True)
class Config:
    kafka_brokers: str = "localhost:9092"
    schema_registry_url: str | None = None
    commit_interval_ms: int = 100
    system_token: str | None = None
    jwt_secret: str | None = None
    allowed_origins: tuple[str, ...] = ()
    contacts_topic: str = "application.communication.contacts"
    messages_topic: str = "application.communication.messages"
    metadata_topic: str = "application.communication.metadata"
    contacts_partitions: int = 10
    application_id: str = "contacts-streams"
    instance_id: str = "local"
    state_dir: str = "state"
    port: int = 8080
    http_threads: int = 32
    write_timeout_ms: int = 10000
    auto_create_enabled: bool = True
    erase_within_ms: int = 7 * 24 * 3600 * 1000
    liveness_stall_ms: int = 300_000
    log_format: str = "text"
    log_level: str = "INFO"
    extra_kafka: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, SETTINGS[name].default).strip()

        def integer(name: str, low: int, high: int) -> int:
            raw = get(name)
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
            return value

        def boolean(name: str) -> bool:
            raw = get(name).lower()
            if raw in ("true", "1", "yes", "on"):
                return True
            if raw in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{name} must be true or false, got {raw!r}")

        def one_of(name: str, choices: tuple[str, ...], fold=str.lower) -> str:
            raw = fold(get(name))
            if raw not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
            return raw

        def required(name: str) -> str:
            raw = get(name)
            if not raw:
                raise ConfigError(f"{name} must not be empty")
            return raw

        registry = get("KAFKA_SCHEMA_REGISTRY_URL")
        if registry and not registry.startswith(("http://", "https://")):
            raise ConfigError(f"KAFKA_SCHEMA_REGISTRY_URL must be an http(s) URL, got {registry!r}")
        origins = tuple(o.strip() for o in get("allowedOrigins").split(",") if o.strip())
        return cls(
            kafka_brokers=required("KAFKA_BROKERS"),
            schema_registry_url=registry or None,
            commit_interval_ms=integer("KAFKA_COMMIT_INTERVAL_MS", 1, 600_000),
            system_token=get("systemToken") or None,
            jwt_secret=get("jwtSecret") or None,
            allowed_origins=origins,
            contacts_topic=required("CONTACTS_TOPIC"),
            messages_topic=required("MESSAGES_TOPIC"),
            metadata_topic=required("METADATA_TOPIC"),
            contacts_partitions=integer("CONTACTS_PARTITIONS", 1, 10_000),
            application_id=required("APPLICATION_ID"),
            instance_id=get("INSTANCE_ID") or socket.gethostname(),
            state_dir=required("STATE_DIR"),
            port=integer("PORT", 1, 65535),
            http_threads=integer("HTTP_THREADS", 1, 1024),
            write_timeout_ms=integer("WRITE_TIMEOUT_MS", 100, 600_000),
            auto_create_enabled=boolean("AUTO_CREATE_ENABLED"),
            erase_within_ms=integer("ERASE_WITHIN_MS", 60_000, 10 * 365 * 24 * 3600 * 1000),
            liveness_stall_ms=integer("LIVENESS_STALL_MS", 1000, 7 * 24 * 3600 * 1000),
            log_format=one_of("LOG_FORMAT", ("text", "json")),
            log_level=one_of("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), fold=str.upper),
        )

    def kafka(self, **overrides) -> dict:
        """librdkafka settings shared by every client of this service; its logs go through
        Python's logging (and so LOG_FORMAT) instead of straight to stderr."""
        return {
            "bootstrap.servers": self.kafka_brokers,
            "log_level": 4,
            "logger": logging.getLogger("librdkafka"),
            **self.extra_kafka,
            **overrides,
        }


def describe() -> str:
    """The `--help` text: every variable with its default."""
    width = max(len(name) for name in SETTINGS)
    lines = ["Configuration (environment variables):"]
    for s in SETTINGS.values():
        default = f" [default: {s.default}]" if s.default else ""
        lines.append(f"  {s.env.ljust(width)}  {s.help}{default}")
    return "\n".join(lines)

