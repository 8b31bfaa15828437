"""Configuration from the environment, validated once at start.

The first group comes from the platform's config maps (`kafka-config`, `security`) under the names
the platform uses; the rest is the component's own. Defaults make `make run` work with nothing set.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

import phonenumbers

from contacts_streams.kafka_security import PLATFORM_KEYSTORE, PLATFORM_TRUSTSTORE, SecurityConfigError, settings_from_env


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it."""


def bounded_int(name: str, raw: str, low: int, high: int) -> int:
    """The whole number a setting holds, within [low, high]; a ConfigError naming it otherwise."""
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


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
        Setting("AUTH_JAAS", "", 'SASL PLAIN over TLS: a JAAS line `...PlainLoginModule required username="u" password="p";`'),
        Setting(
            "KAFKA_KEY_TRUST_SECRET",
            "",
            "certificate auth (mTLS): password of the truststore, keystore and key; wins over AUTH_JAAS",
        ),
        Setting(
            "KAFKA_TRUSTSTORE_LOCATION",
            PLATFORM_TRUSTSTORE,
            "with KAFKA_KEY_TRUST_SECRET: the CA certificates (JKS, PKCS12 or PEM)",
        ),
        Setting(
            "KAFKA_KEYSTORE_LOCATION",
            PLATFORM_KEYSTORE,
            "with KAFKA_KEY_TRUST_SECRET: the client key and certificate (PKCS12 or PEM)",
        ),
        Setting(
            "KAFKA_CONFIG_<NAME>",
            "",
            "any librdkafka property, dots as underscores (KAFKA_CONFIG_SSL_CA_LOCATION: ssl.ca.location)",
        ),
        Setting(
            "SCHEMA_REGISTRY_CHECK_MS",
            "30000",
            "with a registry: how long a registration of the contact schema is trusted; the next write after it registers again "
            "(a registry that lost it gets it back) and answers 503 if the registry cannot be reached",
        ),
        Setting(
            "KAFKA_COMMIT_INTERVAL_MS",
            "100",
            "longest the auto-create stream loops wait in one poll for new records; each batch commits its"
            " own transaction as soon as it is processed, so this delays no commit",
        ),
        Setting("systemToken", "", "system token accepted as `Authorization: Bearer <token>`"),
        Setting("jwtSecret", "", "HS256 secret of accepted JWTs"),
        Setting("allowedOrigins", "", "CORS origins, comma-separated, `*` for any; empty: no CORS headers"),
        Setting("CONTACTS_TOPIC", "application.communication.contacts", "the compacted contacts topic"),
        Setting(
            "CONTACT_EVENTS_TOPIC",
            "application.communication.contact-events",
            "the change-events topic (one event per contact change)",
        ),
        Setting("MESSAGES_TOPIC", "application.communication.messages", "the messages topic auto-create reads"),
        Setting("METADATA_TOPIC", "application.communication.metadata", "the metadata topic auto-create reads"),
        # One writer writes these topics: see contacts_partitions below for why one is the default.
        Setting(
            "CONTACTS_PARTITIONS", "1", "partitions of the contacts, events and join-state topics when this service creates them"
        ),
        Setting("APPLICATION_ID", "contacts-streams", "consumer group id and transactional id prefix"),
        Setting("INSTANCE_ID", "", "this instance's stable name in transactional ids [default: the host name]"),
        Setting("STATE_DIR", "state", "folder of the RocksDB store"),
        Setting("PORT", "8080", "HTTP port"),
        Setting("HTTP_THREADS", "32", "threads serving HTTP requests"),
        Setting(
            "HTTP_SERVER",
            "granian",
            "the HTTP server of `python -m api`: `gunicorn` (gthread) or `granian` (Rust HTTP, WSGI on HTTP_THREADS threads)",
        ),
        Setting("WRITE_TIMEOUT_MS", "10000", "longest a write waits for the broker before answering 503"),
        Setting("AUTO_CREATE_ENABLED", "true", "create a contact for every new conversation (false: a CRM owns contacts)"),
        Setting(
            "DEFAULT_PHONE_REGION",
            "US",
            "region (ISO 3166 code, like DE) of phone numbers written without a country code, for lookup, duplicates and "
            "search; empty: such numbers match by their digits only",
        ),
        Setting(
            "ERASE_WITHIN_MS",
            "604800000",
            "longest time personal data stays anywhere the service keeps it (its topics by compaction or retention, its store): "
            "the bound of contacts.erase's complete_by",
        ),
        Setting(
            "LIVENESS_STALL_MS",
            "300000",
            "liveness fails when a stream stage has made no progress on waiting input for this long",
        ),
        Setting("LOG_FORMAT", "text", "`text` or `json` (one object a line)"),
        Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ]
}


@dataclass(frozen=True)
class Config:
    kafka_brokers: str = "localhost:9092"
    schema_registry_url: str | None = None
    schema_registry_check_ms: int = 30_000
    commit_interval_ms: int = 100
    system_token: str | None = field(default=None, repr=False)
    jwt_secret: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    contacts_topic: str = "application.communication.contacts"
    events_topic: str = "application.communication.contact-events"
    messages_topic: str = "application.communication.messages"
    metadata_topic: str = "application.communication.metadata"
    # Partitions of the contacts, events and join-state topics when this service creates them.
    # One: the one writer gains nothing from more, and each partition a writer transaction
    # touches costs the broker a produce request and a verification of its own. Measured at 16
    # clients (10k contacts): CPU a create 6.2-6.4 ms with 10, 4.9-5.0 with 1; and consumers of
    # the events topic read every change in the writer's order.
    contacts_partitions: int = 1
    application_id: str = "contacts-streams"
    instance_id: str = "local"
    state_dir: str = "state"
    port: int = 8080
    http_threads: int = 32
    http_server: str = "granian"
    write_timeout_ms: int = 10000
    auto_create_enabled: bool = True
    default_phone_region: str | None = "US"
    erase_within_ms: int = 7 * 24 * 3600 * 1000
    liveness_stall_ms: int = 300_000
    log_format: str = "text"
    log_level: str = "INFO"
    # librdkafka settings from AUTH_JAAS, KAFKA_KEY_TRUST_SECRET and KAFKA_CONFIG_<NAME> (a
    # KafkaSettings: its repr hides passwords).
    extra_kafka: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, SETTINGS[name].default).strip()

        def integer(name: str, low: int, high: int) -> int:
            return bounded_int(name, get(name), low, high)

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

        def phone_region() -> str | None:
            raw = get("DEFAULT_PHONE_REGION").upper()
            if raw and raw not in phonenumbers.SUPPORTED_REGIONS:
                raise ConfigError(
                    f"DEFAULT_PHONE_REGION must be a region code phone numbers know (like US or DE) or empty, got {raw!r}"
                )
            return raw or None

        registry = get("KAFKA_SCHEMA_REGISTRY_URL")
        if registry and not registry.startswith(("http://", "https://")):
            raise ConfigError(f"KAFKA_SCHEMA_REGISTRY_URL must be an http(s) URL, got {registry!r}")
        origins = tuple(o.strip() for o in get("allowedOrigins").split(",") if o.strip())
        try:
            extra_kafka = settings_from_env(env)
        except SecurityConfigError as err:
            raise ConfigError(str(err)) from None
        return cls(
            kafka_brokers=required("KAFKA_BROKERS"),
            schema_registry_url=registry or None,
            schema_registry_check_ms=integer("SCHEMA_REGISTRY_CHECK_MS", 100, 86_400_000),
            commit_interval_ms=integer("KAFKA_COMMIT_INTERVAL_MS", 1, 600_000),
            system_token=get("systemToken") or None,
            jwt_secret=get("jwtSecret") or None,
            allowed_origins=origins,
            contacts_topic=required("CONTACTS_TOPIC"),
            events_topic=required("CONTACT_EVENTS_TOPIC"),
            messages_topic=required("MESSAGES_TOPIC"),
            metadata_topic=required("METADATA_TOPIC"),
            contacts_partitions=integer("CONTACTS_PARTITIONS", 1, 10_000),
            application_id=required("APPLICATION_ID"),
            instance_id=get("INSTANCE_ID") or socket.gethostname(),
            state_dir=required("STATE_DIR"),
            port=integer("PORT", 1, 65535),
            http_threads=integer("HTTP_THREADS", 1, 1024),
            http_server=one_of("HTTP_SERVER", ("gunicorn", "granian"), fold=str.lower),
            write_timeout_ms=integer("WRITE_TIMEOUT_MS", 100, 600_000),
            auto_create_enabled=boolean("AUTO_CREATE_ENABLED"),
            default_phone_region=phone_region(),
            erase_within_ms=integer("ERASE_WITHIN_MS", 1000, 10 * 365 * 24 * 3600 * 1000),
            liveness_stall_ms=integer("LIVENESS_STALL_MS", 1000, 7 * 24 * 3600 * 1000),
            log_format=one_of("LOG_FORMAT", ("text", "json")),
            log_level=one_of("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), fold=str.upper),
            extra_kafka=extra_kafka,
        )

    def kafka(self, **overrides) -> dict:
        """librdkafka settings shared by every client of this service (consumers, producers,
        admin), security included; its logs go through Python's logging (and so LOG_FORMAT)
        instead of straight to stderr. A client's own overrides win: they are what its
        guarantees rest on (idempotence, isolation, transactional ids)."""
        return {
            "bootstrap.servers": self.kafka_brokers,
            "log_level": 4,
            "logger": logging.getLogger("librdkafka"),
            **self.extra_kafka,
            **overrides,
        }

    def producer(self, **overrides) -> dict:
        """librdkafka settings of every producer of the service (``kafka`` and so security
        included): idempotent (a retry never duplicates or reorders), acks from every in-sync
        replica, and Java's murmur2 partitioner so JVM clients agree on a key's partition.
        A transactional id in the overrides makes it transactional."""
        return self.kafka(**{"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random", **overrides})


def describe() -> str:
    """The `--help` text: every variable with its default."""
    width = max(len(name) for name in SETTINGS)
    lines = ["Configuration (environment variables):"]
    for s in SETTINGS.values():
        default = f" [default: {s.default}]" if s.default else ""
        lines.append(f"  {s.env.ljust(width)}  {s.help}{default}")
    return "\n".join(lines)
