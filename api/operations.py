"""What operators and tools read: the health probes, the Prometheus metrics and the OpenAPI
document. Open without a token, for probes and scrapers."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.openapi import OPENAPI
from api.wire import json_response, service

operations = Blueprint("operations", __name__)


def _health(check) -> Response:
    ok, reason = check()
    return json_response({"status": "UP" if ok else "DOWN", "reason": reason}, 200 if ok else 503)


@operations.get("/actuator/health")
@operations.get("/actuator/health/readiness")
def readiness():
    alive, _reason = service().alive()
    return _health(service().ready if alive else service().alive)


@operations.get("/actuator/health/liveness")
def liveness():
    return _health(service().alive)


@operations.get("/metrics")
@operations.get("/actuator/prometheus")
def prometheus():
    return Response(generate_latest(service().metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@operations.get("/openapi.json")
def openapi():
    return json_response(OPENAPI, 200)
