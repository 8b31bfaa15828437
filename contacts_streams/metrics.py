"""The service's Prometheus metrics, in a registry of its own (no process globals)."""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import _use_created
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import INF, floatToGoString

HTTP_REQUESTS = "contacts_http_requests"
HTTP_LATENCY = "contacts_http_request_duration_seconds"
HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, INF)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = HttpSeries(registry=r)
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


class _Thread:
    """What one thread counted: its request series and its latency histograms. Only that thread
    writes them, so an increment needs no lock; a scrape reads them as they are."""

    __slots__ = ("series", "latency", "__weakref__")

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], list] = {}  # key -> [count, latency cell]
        self.latency: dict[str, list[float]] = {}  # endpoint -> [bucket counts..., sum]


class HttpSeries:
    """`contacts_http_requests` (by endpoint, method, status) and
    `contacts_http_request_duration_seconds` (by endpoint), the samples a prometheus_client
    Counter and Histogram of these names would expose, without their lock per increment (#13:
    the metrics were a tenth of a cached read). Each thread counts into cells of its own; a
    scrape adds them up, and folds in for good the cells of threads that ended."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        # (a weak reference to what a thread's local holds, its cells): dead once the thread ended.
        self._threads: list[tuple[weakref.ref, _Thread]] = []
        self._ended = _Thread()  # the sums of ended threads' cells
        self._created: dict[object, float] = {}  # series key or endpoint -> when first counted
        self._bounds = HTTP_LATENCY_BUCKETS
        registry.register(self)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        try:
            mine = self._local.cells
        except AttributeError:
            mine = self._register_thread()
        cell = mine.series.get((endpoint, method, status))
        if cell is None:
            cell = self._new_series(mine, endpoint, method, status)
        cell[0] += 1
        latency = cell[1]
        latency[bisect_left(self._bounds, seconds)] += 1
        latency[-1] += seconds

    def _register_thread(self) -> _Thread:
        mine = _Thread()
        owner = _Owner(mine)
        self._local.cells = mine
        self._local.owner = owner  # dropped with the thread's locals when the thread ends
        with self._lock:
            self._threads.append((weakref.ref(owner), mine))
        return mine

    def _new_series(self, mine: _Thread, endpoint: str, method: str, status: int) -> list:
        key = (endpoint, method, status)
        now = time.time()
        with self._lock:
            self._created.setdefault(key, now)
            self._created.setdefault(endpoint, now)
        latency = mine.latency.get(endpoint)
        if latency is None:
            latency = mine.latency[endpoint] = [0] * len(self._bounds) + [0.0]
        cell = mine.series[key] = [0, latency]
        return cell

    def describe(self):
        return []  # families appear with their first request, as a labelled metric's do

    def collect(self):
        with self._lock:
            alive = []
            for owner, cells in self._threads:
                if owner() is None:
                    _fold(self._ended, cells)
                else:
                    alive.append((owner, cells))
            self._threads = alive
            created = dict(self._created)
            totals = _Thread()
            _fold(totals, self._ended)
            for _owner, cells in alive:
                _fold(totals, cells)
        requests = Metric(HTTP_REQUESTS, "HTTP requests served", "counter")
        latency = Metric(HTTP_LATENCY, "Time to answer an HTTP request", "histogram")
        for key in created:  # the order series were first counted in, as a Counter's children
            if isinstance(key, tuple):
                endpoint, method, status = key
                labels = {"endpoint": endpoint, "method": method, "status": str(status)}
                requests.add_sample(HTTP_REQUESTS + "_total", labels, float(totals.series.get(key, (0,))[0]))
                if _use_created:
                    requests.add_sample(HTTP_REQUESTS + "_created", labels, created[key])
            elif isinstance(key, str):
                _histogram_samples(latency, key, totals.latency.get(key), created[key], self._bounds)
        return [requests, latency]


class _Owner:
    """Held by a thread's locals only: its weak reference dies with the thread."""

    __slots__ = ("cells", "__weakref__")

    def __init__(self, cells: _Thread) -> None:
        self.cells = cells


def _fold(into: _Thread, cells: _Thread) -> None:
    for key, (count, _latency) in list(cells.series.items()):
        mine = into.series.get(key)
        if mine is None:
            into.series[key] = [count, None]
        else:
            mine[0] += count
    for endpoint, values in list(cells.latency.items()):
        mine = into.latency.get(endpoint)
        if mine is None:
            into.latency[endpoint] = list(values)
        else:
            for i, value in enumerate(values):
                mine[i] += value


def _histogram_samples(family: Metric, endpoint: str, values: list | None, created: float, bounds) -> None:
    values = values or [0] * (len(bounds) + 1)
    labels = {"endpoint": endpoint}
    acc = 0.0
    for bound, count in zip(bounds, values[:-1], strict=True):
        acc += count
        family.add_sample(HTTP_LATENCY + "_bucket", {**labels, "le": floatToGoString(bound)}, acc)
    family.add_sample(HTTP_LATENCY + "_count", labels, acc)
    family.add_sample(HTTP_LATENCY + "_sum", labels, float(values[-1]))
    if _use_created:
        family.add_sample(HTTP_LATENCY + "_created", labels, created)
