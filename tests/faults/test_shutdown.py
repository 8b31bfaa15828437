"""SIGTERM, as Kubernetes sends it: in-flight writes drain, nothing acknowledged is lost, the store
closes cleanly (the next start replays nothing) and the process exits 0. Logs leak no secrets."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests
from faultkit import figures, read_store, wait_for

from contacts_streams.commands import encode_position


def test_sigterm_during_writes_loses_nothing_and_exits_0(names, spawn, tmp_path):
    service = spawn(names, LOG_FORMAT="json", systemToken="s3cret-system-token", jwtSecret="s3cret-jwt-secret-long-enough-for-hs256")
    service.wait_ready()
    headers = {"Authorization": "Bearer s3cret-system-token", "Content-Type": "application/json"}
    acknowledged: dict[str, str] = {}
    refused = 0
    stop = threading.Event()
    lock = threading.Lock()

    def writer(n: int) -> None:
        nonlocal refused
        session = requests.Session()
        i = 0
        while not stop.is_set() and i < 2000:
            i += 1
            name = f"writer {n} contact {i}"
            try:
                answer = session.post(service.base + "/contacts.create", data=json.dumps({"display_name": name}), headers=headers, timeout=30)
            except requests.RequestException:
                with lock:
                    refused += 1  # the server closed: no promise was made
                return
            if answer.status_code == 201:
                with lock:
                    acknowledged[answer.json()["id"]] = name

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 100, 60, "writes under way")
    started = time.monotonic()
    code = service.stop(timeout=45)
    stopped_in = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(35)
    assert code == 0, service.tail()

    # The store closed cleanly: it holds every acknowledged write without the topic's help.
    stored = read_store(service.state_dir)["contacts"]
    missing = [cid for cid in acknowledged if cid.encode() not in stored]
    assert missing == []

    restarted = spawn(names, state_dir=service.state_dir, instance_id="fault", LOG_FORMAT="json")
    restarted.wait_ready()
    assert restarted.metric("contacts_materializer_records_applied_total") == 0  # nothing replayed
    for contact_id, name in list(acknowledged.items())[:: max(1, len(acknowledged) // 200)]:
        assert restarted.info(contact_id).json()["display_name"] == name

    log = service.log_file.read_text()
    assert "s3cret" not in log
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("=====")]
    entries = [json.loads(line) for line in lines]  # every line, the HTTP server's and librdkafka's too
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"] == "closed" for entry in entries)
    figures("sigterm", acknowledged=len(acknowledged), refused_after_close=refused, lost=len(missing), stop_seconds=round(stopped_in, 2))


@pytest.mark.parametrize("server", ["gunicorn", "granian"])
def test_sigterm_drains_a_request_in_flight_then_closes_and_exits_0(names, spawn, server):
    # A read that waits for a position the store has not applied is in flight for WRITE_TIMEOUT_MS
    # and then answers 503 from the app: SIGTERM during that wait must still get it its answer.
    service = spawn(names, HTTP_SERVER=server, LOG_FORMAT="json", WRITE_TIMEOUT_MS="4000")
    service.wait_ready()
    # No write first: on a loaded machine the first write after ready can outlast a short
    # WRITE_TIMEOUT_MS. The position wait comes before the id is looked up.
    far = encode_position({0: 10**9})
    answers: list = []

    def waiting_read() -> None:
        try:
            answers.append(requests.post(service.base + "/contacts.info", json={"id": str(uuid.uuid4())}, headers={"X-Contacts-Min-Position": far}, timeout=30))
        except requests.RequestException as err:
            answers.append(err)

    reader = threading.Thread(target=waiting_read)
    sent = time.monotonic()
    reader.start()
    time.sleep(1.0)  # the read is waiting in the app (it answers no sooner than 4 s after `sent`)
    assert not answers, "the read answered before the SIGTERM: nothing was in flight"
    code = service.stop(timeout=45)
    reader.join(35)
    assert code == 0, service.tail()
    assert len(answers) == 1 and isinstance(answers[0], requests.Response), f"the in-flight read got {answers!r}"
    answer = answers[0]
    assert answer.status_code == 503 and answer.headers.get("Retry-After") and "X-Contacts-Min-Position" in answer.json()["message"]
    assert answer.elapsed.total_seconds() >= 3.5 and time.monotonic() - sent >= 3.5

    entries = [json.loads(line) for line in service.log_file.read_text().splitlines() if line.strip() and not line.startswith("=====")]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"] == "closed" for entry in entries)
    if server == "granian":
        assert any(entry["logger"] == "_granian" for entry in entries), "granian's own lines in the service's format"
