"""The topics the service writes: their names, creation when missing, and record size limits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, OffsetSpec, ResourceType

from contacts_streams import commands
from contacts_streams.config import Config
from contacts_streams.kafka_security import BrokerRefused, StartupErrors

log = logging.getLogger(__name__)


HOUR_MS = 3600 * 1000
POSITION_SEGMENT_BYTES = 8 * 1024 * 1024
REPLIES_RETENTION_MS = HOUR_MS
IDEMPOTENCY_RETENTION_MS = commands.IDEMPOTENCY_TTL_MS
# Above the largest command (a 16 MiB request body and its envelope).
COMMANDS_MAX_MESSAGE_BYTES = commands.MAX_COMMAND_BYTES + 1024 * 1024
# librdkafka's default message.max.bytes and the broker's default max.message.bytes.
PRODUCER_MAX_BYTES = 1_000_000
TOPIC_MAX_BYTES = 1_048_588
# A record batch's header (61 bytes) and one record's varints and attributes, with room to spare.
RECORD_OVERHEAD = 256
# An event names before and after of every changed path: a merge's carries the destination's
# merge_history twice, so it may be about twice the contact record. Room for that, and the
# writer's producer takes records this large (it checks contact records against the contacts
# topic's own limit itself).
EVENTS_MAX_MESSAGE_BYTES = 4 * TOPIC_MAX_BYTES


def commands_topic(config: Config) -> str:
    """Every write, from HTTP replicas and the conversation routers, to the one writer."""
    return f"{config.application_id}-commands"


def replies_topic(config: Config) -> str:
    return f"{config.application_id}-replies"


def idempotency_topic(config: Config) -> str:
    return f"{config.application_id}-idempotency"


def writer_position_topic(config: Config) -> str:
    """Where the writer is in the commands topic, one record committed in each of its
    transactions (instead of the group's offsets: two round trips fewer a transaction)."""
    return f"{config.application_id}-writer-position"


def conversations_topic(config: Config) -> str:
    """Auto-create's join state: conversation id -> {source, display_name, avatar_url} (JSON)."""
    return f"{config.application_id}-conversations"


def dismissed_topic(config: Config) -> str:
    """Groups people said are not duplicates: sorted contact ids joined by "," -> a marker."""
    return f"{config.application_id}-dismissed"


def dead_letter_topic(config: Config) -> str:
    """Records a stream stage can never process, as received, with the error in headers."""
    return f"{config.application_id}-dead-letter"


# --- erase: how long the topics keep what an erase removed (DESIGN.md, "Erase") ------------------

MAX_FILE_DELETE_DELAY_MS = 60_000  # the broker's default file.delete.delay.ms
TOMBSTONE_RETENTION_MS = 24 * HOUR_MS  # the broker's default delete.retention.ms
# What the broker does when these are not set on the topic (Kafka's defaults).
BROKER_DEFAULTS = {"log.cleaner.backoff.ms": 15_000, "log.retention.check.interval.ms": 300_000}
NEVER = 2**63 - 1  # Long.MAX_VALUE: Kafka's "no limit"
# The broker's own cadence: how often its cleaner looks for work, how often it deletes expired
# segments.
CLEANER_BACKOFF, RETENTION_CHECK = "log.cleaner.backoff.ms", "log.retention.check.interval.ms"


def compacted_segment_ms(config: Config) -> int:
    """segment.ms of the compacted topics: the writer appends an erase's records again after
    it, so their segments roll even in a partition nothing else writes to."""
    return max(1, config.erase_within_ms // 2)


def _file_delete_delay_ms(config: Config) -> int:
    return min(MAX_FILE_DELETE_DELAY_MS, config.erase_within_ms // 10)


def compacted_settings(config: Config) -> dict[str, str]:
    """A compacted topic keeps an overwritten or tombstoned value at most about
    segment.ms (then the segment rolls: by the next append, the writer's own at the latest) +
    file.delete.delay.ms (the cleaned segment's old files), and the cleaner's backoff: the
    compaction lag is at most segment.ms, so a rolled segment is cleanable at once."""
    segment = compacted_segment_ms(config)
    return {
        "segment.ms": str(segment),
        "max.compaction.lag.ms": str(segment),
        "min.compaction.lag.ms": "0",
        # Tombstones carry nothing personal: consumers get the broker's usual day to see them.
        "delete.retention.ms": str(min(TOMBSTONE_RETENTION_MS, config.erase_within_ms)),
        "file.delete.delay.ms": str(_file_delete_delay_ms(config)),
    }


def deleted_settings(config: Config, retention_ms: int) -> dict[str, str]:
    """A delete-policy topic keeps a record at most retention.ms after its segment's newest
    record: segment.ms + retention.ms + file.delete.delay.ms, and the broker's retention check.
    An active segment whose records are all past retention is deleted too (the broker rolls
    it first), so a quiet partition needs nothing from the service."""
    retention = max(1, min(retention_ms, config.erase_within_ms * 8 // 10))
    return {
        "retention.ms": str(retention),
        "segment.ms": str(max(1, min(retention, config.erase_within_ms // 10))),
        "file.delete.delay.ms": str(_file_delete_delay_ms(config)),
    }


def erase_settings(config: Config) -> dict[str, dict[str, str]]:
    """topic -> the settings that bound how long it keeps personal data, for every topic the
    service writes (the events topic included; the platform's messages and metadata are not
    the service's). The idempotency topic keeps its 24 h retention: its entries hold no bodies,
    and an erase tombstones those that name the contact."""
    from contacts_streams.events import events_topic  # events imports config, not this module

    compacted = compacted_settings(config)
    return {
        config.contacts_topic: compacted,
        conversations_topic(config): compacted,
        dismissed_topic(config): compacted,
        # Offsets only, nothing personal. One record a writer transaction: small segments, so
        # the cleaner keeps the one key's history short whatever segment.ms allows.
        writer_position_topic(config): {**compacted, "segment.bytes": str(POSITION_SEGMENT_BYTES)},
        idempotency_topic(config): {**compacted, "retention.ms": str(IDEMPOTENCY_RETENTION_MS)},
        commands_topic(config): deleted_settings(config, HOUR_MS),
        replies_topic(config): deleted_settings(config, REPLIES_RETENTION_MS),
        dead_letter_topic(config): deleted_settings(config, config.erase_within_ms),
        events_topic(config): deleted_settings(config, config.erase_within_ms),
    }


@dataclass
class EraseBound:
    """How long after an erase the topics may still hold what it removed: the longest bound of
    any topic's settings as the broker has them, plus the broker's cadence. None: a topic keeps
    data without a time limit (its settings could not be changed)."""

    bound_ms: int | None
    # topic -> why its bound is what it is (for the log and the README's operators).
    topics: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # topic -> its segment.ms as the broker has it (when the writer's rolls are due).
    segment_ms: dict[str, int] = field(default_factory=dict)


def _bound_of(settings: dict[str, str], cadence: dict[str, int], writer_rolls: bool) -> int | None:
    def ms(name: str) -> int | None:
        raw = settings.get(name)
        if raw is None:
            return None
        value = int(raw)
        return None if value < 0 or value >= NEVER else value

    delay = ms("file.delete.delay.ms") or 0
    bounds: list[int] = []
    policy = settings.get("cleanup.policy", "delete")
    if "compact" in policy:
        segment, lag, min_lag = ms("segment.ms"), ms("max.compaction.lag.ms"), ms("min.compaction.lag.ms") or 0
        if segment is None or lag is None:
            bounds.append(-1)
        else:
            # A segment rolls by the next append after segment.ms: the writer's own when it
            # wrote the erase, else whatever comes (unbounded when nothing does).
            roll = segment + 500 if writer_rolls else segment
            bounds.append(max(roll, lag, min_lag) + cadence[CLEANER_BACKOFF] + delay)
    if "delete" in policy and "compact" not in policy:
        retention, segment = ms("retention.ms"), ms("segment.ms")
        if retention is None or segment is None:
            bounds.append(-1)
        else:
            bounds.append(retention + segment + cadence[RETENTION_CHECK] + delay)
    if not bounds or -1 in bounds:
        return None
    return max(bounds)


def apply_erase_settings(config: Config, timeout: float = 30.0) -> EraseBound:
    """Give the service's existing topics the erase settings where they differ (an
    IncrementalAlterConfigs; topics this version creates have them already) and return the
    bound the broker's actual settings give. A broker that refuses (no AlterConfigs
    permission, a managed service) leaves a topic as it is: the bound says the truth and the
    log warns."""
    admin = AdminClient(config.kafka())
    wanted = erase_settings(config)
    existing = admin.list_topics(timeout=timeout)
    present = [topic for topic in wanted if topic in existing.topics]
    warnings: list[str] = []
    resources = {topic: ConfigResource(ResourceType.TOPIC, topic) for topic in present}
    current = _describe(admin, list(resources.values()), timeout, warnings)
    changes = []
    for topic in resources:
        have = current.get(topic, {})
        differs = {k: v for k, v in wanted[topic].items() if have.get(k) != v}
        if differs:
            changes.append(
                ConfigResource(
                    ResourceType.TOPIC,
                    topic,
                    incremental_configs=[
                        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differs.items()
                    ],
                )
            )
    if changes:
        for resource, future in admin.incremental_alter_configs(changes, request_timeout=timeout).items():
            try:
                future.result(timeout)
                log.info("set the erase settings of %s", resource.name)
            except KafkaException as err:
                warnings.append(f"cannot set the erase settings of {resource.name}: {err}")
        current = _describe_applied(admin, resources, wanted, timeout, warnings)
    cadence = dict(BROKER_DEFAULTS)
    brokers = sorted(existing.brokers)
    if brokers:
        resource = ConfigResource(ResourceType.BROKER, str(brokers[0]))
        try:
            entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
            for name in cadence:
                if name in entries and entries[name].value is not None:
                    cadence[name] = int(entries[name].value)
        except KafkaException as err:
            warnings.append(f"cannot read the broker's cleaner settings, assuming Kafka's defaults: {err}")
    writer_rolls = {config.contacts_topic, conversations_topic(config), dismissed_topic(config), idempotency_topic(config)}
    bounds = {topic: _bound_of(current.get(topic, {}), cadence, topic in writer_rolls) for topic in present}
    for topic, bound in bounds.items():
        if bound is None:
            warnings.append(f"{topic} keeps data without a time limit: an erase is never complete there")
        elif bound > config.erase_within_ms:
            warnings.append(
                f"{topic} may keep an erased value {bound} ms, more than ERASE_WITHIN_MS ({config.erase_within_ms} ms)"
            )
    for warning in warnings:
        log.warning("erase: %s", warning)
    known = [b for b in bounds.values() if b is not None]
    overall = max(known, default=0) if len(known) == len(bounds) else None
    segments = {topic: int(current[topic]["segment.ms"]) for topic in present if "segment.ms" in current.get(topic, {})}
    return EraseBound(overall, bounds, warnings, segments)


def _describe_applied(
    admin: AdminClient,
    resources: dict[str, ConfigResource],
    wanted: dict[str, dict[str, str]],
    timeout: float,
    warnings: list[str],
    settle_s: float = 5.0,
) -> dict[str, dict[str, str]]:
    """The settings after an alter, once the broker shows them: a KRaft broker applies an
    accepted alter from its metadata log a moment later, and a describe in between still
    answers the old values (seen as a bound of "no limit" right after setting one)."""
    deadline = time.monotonic() + settle_s
    while True:
        scratch: list[str] = []
        current = _describe(admin, list(resources.values()), timeout, scratch)
        applied = all(all(current.get(t, {}).get(k) == v for k, v in wanted[t].items()) for t in resources)
        if applied or time.monotonic() >= deadline:
            warnings.extend(scratch)
            return current
        time.sleep(0.1)


def _describe(
    admin: AdminClient, resources: list[ConfigResource], timeout: float, warnings: list[str]
) -> dict[str, dict[str, str]]:
    if not resources:
        return {}
    out: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout)
            out[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
        except KafkaException as err:
            warnings.append(f"cannot read the settings of {resource.name}: {err}")
    return out


def ensure_topics(config: Config, timeout: float = 30.0, errors: StartupErrors | None = None) -> None:
    """The compacted contacts topic, the change-events topic, the dead-letter topic, the writer's commands, replies,
    idempotency, position and dismissed-groups topics, and the join-state topic.

    This is the service's first call to the broker. With `errors`, what librdkafka reports
    meanwhile is judged: refused credentials or certificates raise BrokerRefused within about a
    second instead of being retried (a metadata call only ever says "transport failure")."""
    erase = erase_settings(config)  # every topic keeps personal data at most about ERASE_WITHIN_MS
    wanted = [
        NewTopic(
            config.contacts_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,  # the broker's default.replication.factor
            config={"cleanup.policy": "compact", **erase[config.contacts_topic]},
        ),
        NewTopic(
            # Key: the contact id, partitioned like the contacts topic (murmur2), so one
            # contact's events stay in order. Events carry personal data: gone within
            # ERASE_WITHIN_MS (retention, segment rolls and the file delay inside it).
            config.events_topic,
            num_partitions=config.contacts_partitions,
            replication_factor=-1,
            config={"cleanup.policy": "delete", **erase[config.events_topic], "max.message.bytes": str(EVENTS_MAX_MESSAGE_BYTES)},
        ),
        NewTopic(
            dead_letter_topic(config),
            num_partitions=1,  # a trickle, read by people
            replication_factor=-1,
            # Dead letters hold the records as received, personal data included.
            config={"cleanup.policy": "delete", **erase[dead_letter_topic(config)]},
        ),
    ]
    # The writer's topics: one partition each (one writer applies every command in order).
    # Commands and replies carry personal data for their retention only.
    wanted += [
        NewTopic(
            commands_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={
                "cleanup.policy": "delete",
                **erase[commands_topic(config)],
                "max.message.bytes": str(COMMANDS_MAX_MESSAGE_BYTES),
            },
        ),
        NewTopic(
            replies_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "delete", **erase[replies_topic(config)]},
        ),
        NewTopic(
            idempotency_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact,delete", **erase[idempotency_topic(config)]},
        ),
        # The writer's next commands offset, one key, written in each writer transaction.
        NewTopic(
            writer_position_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact", **erase[writer_position_topic(config)]},
        ),
        # Contact ids only: kept for good, one record per dismissed group (an erase tombstones
        # the groups naming the contact).
        NewTopic(
            dismissed_topic(config),
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact", **erase[dismissed_topic(config)]},
        ),
    ]
    # Made with auto-create off too: an erase writes its conversations' markers there (so
    # turning auto-create on later never re-creates an erased person from old messages), and a
    # transaction producing to a missing topic would hang the writer.
    wanted.append(
        NewTopic(
            conversations_topic(config),
            num_partitions=config.contacts_partitions,
            replication_factor=-1,
            config={"cleanup.policy": "compact", **erase[conversations_topic(config)]},
        )
    )
    admin = AdminClient(config.kafka(**({"error_cb": errors} if errors is not None else {})))
    existing = _list_topics(admin, timeout, errors)
    missing = [topic for topic in wanted if topic.topic not in existing]
    if not missing:
        return
    deadline = time.monotonic() + timeout
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created %s", name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, missing, deadline)


def _wait_for_leaders(admin: AdminClient, created: list[NewTopic], deadline: float) -> None:
    """A created topic's partitions take their leaders a moment after CreateTopics answers; a
    consumer asking for offsets meanwhile gets NOT_LEADER_FOR_PARTITION (seen on a busy machine,
    where it stopped the materializer). Return once every partition answers an offset request,
    or at the deadline (the caller's retries take over from there)."""
    wanted = {TopicPartition(t.topic, p): OffsetSpec.latest() for t in created for p in range(t.num_partitions)}
    while time.monotonic() < deadline:
        try:
            futures = admin.list_offsets(wanted, request_timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            for future in futures.values():
                future.result()
            return
        except KafkaException:
            time.sleep(0.1)


def _list_topics(admin: AdminClient, timeout: float, errors: StartupErrors | None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic()))).topics
        except KafkaException:
            if errors is None or time.monotonic() >= deadline:
                raise
            admin.poll(0)  # serves error_cb
            if errors.fatal is not None:
                raise BrokerRefused(errors.fatal) from None


def max_record_bytes(config: Config, topic: str, timeout: float = 10.0, producer_max: int | None = None) -> int:
    """The largest record (key + value + headers) this service's producers can write to `topic`:
    the smaller of the topic's max.message.bytes and the producer's message.max.bytes (or
    `producer_max`), less the overhead of a batch that holds only that record."""
    if producer_max is None:
        producer_max = int(config.kafka().get("message.max.bytes", PRODUCER_MAX_BYTES))
    topic_max = TOPIC_MAX_BYTES
    admin = AdminClient(config.kafka())
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
        if "max.message.bytes" in entries and entries["max.message.bytes"].value is not None:
            topic_max = int(entries["max.message.bytes"].value)
    except KafkaException as err:  # not allowed to describe it: assume the broker's default
        log.warning("cannot read max.message.bytes of %s, assuming %d: %s", topic, topic_max, err)
    return min(producer_max, topic_max) - RECORD_OVERHEAD


def record_bytes(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]] | None = None) -> int:
    """What a record counts against max_record_bytes."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers or [])
