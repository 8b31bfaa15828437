"""The receiver `python -m bench.webhooks --receiver granian` runs in a process of its own: granian
(HTTP in Rust) serving an RSGI app that checks every signature with the README's snippet, like
tests/webhookkit.Receiver. The threaded http.server receiver spends more CPU per request than the
webhooks process now does, so on a 2-core machine it is what a throughput figure would measure.

`GET /count`: distinct events accepted; `GET /report`: the event ids each contact's events were
accepted in (first acceptance), the signatures that failed and the duplicates (JSON)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from webhookkit import readme_verifier  # noqa: E402

SECRET = os.environ.get("BENCH_RECEIVER_SECRET", "bench-secret")
LATENCY = float(os.environ.get("BENCH_RECEIVER_LATENCY_MS", "0")) / 1000  # a remote CRM's answer time
verify = readme_verifier()
seen: set[str] = set()
order: dict[str, list[str]] = {}
stats = {"bad_signatures": 0, "duplicates": 0, "requests": 0}
HEADERS = [("content-type", "application/json")]


async def app(scope, proto) -> None:
    if scope.method == "POST":
        body = await proto()
        if LATENCY:
            await asyncio.sleep(LATENCY)
        stats["requests"] += 1
        if not verify(SECRET, body, scope.headers.get("x-contacts-signature", "")):
            stats["bad_signatures"] += 1
        event = json.loads(body)
        event_id = event["event_id"]
        if event_id in seen:
            stats["duplicates"] += 1
        else:
            seen.add(event_id)
            order.setdefault(event["contact_id"], []).append(event_id)
        proto.response_bytes(200, HEADERS, b'{"ok": true}')
    elif scope.path == "/count":
        proto.response_bytes(200, HEADERS, str(len(seen)).encode())
    else:
        proto.response_bytes(200, HEADERS, json.dumps({"per_contact": order, **stats}).encode())
