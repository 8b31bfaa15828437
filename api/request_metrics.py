"""The HTTP series of /metrics: requests by route, method and status, and their latency."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from contacts_streams.metrics import Metrics


class RequestMetrics:
    """One place that counts a request, for the Flask hooks and the fast read path alike (so
    both feed the same series)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._series: dict[tuple, tuple] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        counted = self._series.get(key)
        if counted is None:  # labels() costs a lock and a lookup: keep the children
            counted = self._series[key] = (
                self._metrics.http_requests.labels(endpoint=endpoint, method=method, status=str(status)),
                self._metrics.http_latency.labels(endpoint=endpoint),
            )
        counted[0].inc()
        counted[1].observe(seconds)


def register(app: Flask, metrics: Metrics) -> RequestMetrics:
    """Time every request from its first hook to its answer (so registered before the others)."""
    counter = RequestMetrics(metrics)

    def start() -> None:
        g.started = time.perf_counter()

    def count(response: Response) -> Response:
        # The rule, not the path: console pages take ids in their paths (one series per rule).
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        counter.observe(
            endpoint, request.method, response.status_code, time.perf_counter() - g.get("started", time.perf_counter())
        )
        return response

    app.before_request(start)
    app.after_request(count)
    return counter
