"""The service's Prometheus metrics, in a registry of its own (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "contacts_http_requests", "HTTP requests served", ["endpoint", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "contacts_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.records_applied = Counter(
            "contacts_materializer_records_applied", "Contacts-topic records applied to the store", registry=r
        )
        self.poison_records = Counter(
            "contacts_poison_records", "Records skipped because they could not be decoded", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "contacts_dead_letters",
            "Records a stream stage could never process, sent to the dead-letter topic",
            ["stage", "topic"],
            registry=r,
        )
        self.stage_stalled = Gauge(
            "contacts_stage_stalled_seconds",
            "How long input has waited for a stream stage without it committing past it (0: idle)",
            ["stage"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "contacts_consumer_lag_records", "Records behind the end of a partition", ["topic", "partition"], registry=r
        )
        self.auto_created = Counter("contacts_auto_created", "Contacts created for new conversations", registry=r)
        self.auto_updated = Counter(
            "contacts_auto_updated", "Auto-created contacts filled from later conversation metadata", registry=r
        )
        self.store_contacts = Gauge("contacts_store_contacts", "Live contacts in the store", registry=r)
        self.produce_errors = Counter("contacts_produce_errors", "Writes the broker did not acknowledge", ["reason"], registry=r)
        self.import_size = Histogram(
            "contacts_import_size_contacts",
            "Contacts in one /contacts.import request",
            buckets=(1, 10, 100, 1000, 5000, 10000),
            registry=r,
        )
        self.store_rebuilds = Counter("contacts_store_rebuilds", "Store rebuilds from the contacts topic", ["reason"], registry=r)
        self.erase_rolls = Counter(
            "contacts_erase_rolls",
            "Records of erases the writer wrote again so their segments roll (see README, Erase)",
            registry=r,
        )
        self.writer = Gauge("contacts_writer", "1 while this replica is the writer (holds the commands partition)", registry=r)
        self.commands = Counter("contacts_commands", "Commands the writer answered", ["type", "status"], registry=r)
        self.writer_failed_commands = Counter(
            "contacts_writer_failed_commands",
            "Commands the writer could not apply (answered 500, partition not stalled)",
            registry=r,
        )
        self.writer_batch_seconds = Histogram(
            "contacts_writer_batch_seconds",
            "Time the writer takes for one batch of commands, decisions to commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.write_wait_seconds = Histogram(
            "contacts_write_wait_seconds",
            "Time an HTTP write waits, by stage: reply from the writer, then the own store",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


def report_lag(consumer, metrics: Metrics, positions) -> None:
    """Records behind the end per partition, from the watermarks the fetches already brought."""
    for tp in positions:
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and tp.offset >= 0:
            metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - tp.offset))
