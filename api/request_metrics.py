"""The HTTP series of /metrics: requests by route, method and status, and their latency."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from contacts_streams.metrics import Metrics


class RequestMetrics:
    """One place that counts a request, for the Flask hooks and the fast read path alike (so
    both feed the same series): `Metrics.http`, which counts without a lock."""

    def __init__(self, metrics: Metrics):
        self.observe = metrics.http.observe


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
