"""SIGTERM, as Kubernetes sends it: in-flight writes drain, nothing acknowledged is lost, the store
closes cleanly (the next start replays nothing) and the process exits 0. Logs leak no secrets."""

from __future__ import annotations

import json
import threading
import time

import requests
from faultkit import figures, read_store, wait_for


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
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's and librdkafka's too
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"] == "closed" for entry in entries)
    figures("sigterm", acknowledged=len(acknowledged), refused_after_close=refused, lost=len(missing), stop_seconds=round(stopped_in, 2))
