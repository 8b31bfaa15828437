"""The HTTP series of /metrics: requests by route, method and status, and their latency."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from contacts_streams.metrics import Metrics


def register(app: Flask, metrics: Metrics) -> None:
    """Time every request from its first hook to its answer (so registered before the others)."""
    series: dict[tuple, tuple] = {}

    def start() -> None:
        g.started = time.perf_counter()

    def count(response: Response) -> Response:
        # The rule, not the path: console pages take ids in their paths (one series per rule).
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        key = (endpoint, request.method, response.status_code)
        counted = series.get(key)
        if counted is None:  # labels() costs a lock and a lookup: keep the children
            counted = series[key] = (
                metrics.http_requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)),
                metrics.http_latency.labels(endpoint=endpoint),
            )
        counted[0].inc()
        counted[1].observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    app.before_request(start)
    app.after_request(count)
