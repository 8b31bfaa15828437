"""`Metrics.http` (HttpSeries) counts without a lock, yet /metrics shows exactly what a
prometheus_client Counter and Histogram of the same names, labels and buckets would show for the
same requests, counted from any number of threads, including threads that have ended."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from contacts_streams.metrics import HTTP_LATENCY, HTTP_LATENCY_BUCKETS, HTTP_REQUESTS, Metrics

ENDPOINTS = ["/contacts.info", "/contacts.list", "/metrics", "unmatched"]
observation = st.tuples(
    st.sampled_from(ENDPOINTS),
    st.sampled_from(["POST", "GET"]),
    st.sampled_from([200, 201, 400, 404, 503]),
    st.one_of(st.sampled_from([b for b in HTTP_LATENCY_BUCKETS[:-1]]), st.floats(0, 20, allow_nan=False)),
)


class Reference:
    """The metrics as prometheus_client's own classes count them (what /metrics showed before)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(HTTP_REQUESTS, "HTTP requests served", ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            HTTP_LATENCY, "Time to answer an HTTP request", ["endpoint"], buckets=HTTP_LATENCY_BUCKETS, registry=self.registry
        )

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text format's lines of the HTTP series, creation times masked (they are clock reads)
    and sums rounded (a sum of per-thread sums may differ in the last bits of a float)."""
    lines = []
    for line in generate_latest(registry).decode().splitlines():
        if HTTP_REQUESTS not in line and HTTP_LATENCY not in line:
            continue
        if "_created{" in line:
            line = line.rsplit(" ", 1)[0] + " <time>"
        elif "_sum{" in line:
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value):.9g}"
        lines.append(line)
    return lines


def run_in_threads(observe, batches: list[list[tuple]]) -> None:
    """Each batch counted by a thread of its own, which then ends."""
    threads = [threading.Thread(target=lambda b=batch: [observe(*o) for o in b]) for batch in batches]
    for thread in threads:
        thread.start()
        thread.join()  # one at a time: the series' first-seen order is then the same for both


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(observation, max_size=12), max_size=5), st.lists(observation, max_size=12))
def test_the_exposition_is_a_counter_and_a_histogram(batches, here):
    metrics, reference = Metrics(), Reference()
    for observe in (metrics.http.observe, reference.observe):
        run_in_threads(observe, batches)
        for o in here:  # and on a thread that is still alive
            observe(*o)
    assert exposition(metrics.registry) == exposition(reference.registry)


def test_ended_threads_still_count_and_are_folded():
    metrics = Metrics()
    run_in_threads(metrics.http.observe, [[("/contacts.info", "POST", 200, 0.002)] * 3 for _ in range(50)])
    first = exposition(metrics.registry)
    assert f'{HTTP_REQUESTS}_total{{endpoint="/contacts.info",method="POST",status="200"}} 150.0' in first
    assert len(metrics.http._threads) <= 1  # the ended threads' cells were folded at the scrape
    assert exposition(metrics.registry) == first
    assert f'{HTTP_LATENCY}_bucket{{endpoint="/contacts.info",le="0.0025"}} 150.0' in first


def test_no_requests_no_series():
    assert exposition(Metrics().registry) == exposition(Reference().registry)
