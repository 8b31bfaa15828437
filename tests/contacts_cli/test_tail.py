"""`contacts tail` against the real broker: the events of writes made through the service, as a
person runs it (a subprocess, --from-beginning, --json) and following from now (lines)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

from contacts_cli.tail import follow
from support import post


def test_tail_prints_the_events_from_the_beginning_as_json_lines(service, client):
    ada = post(client, "/contacts.create", {"display_name": "Ada", "via": {"email": "ada@example.org"}}, 201)
    post(client, "/contacts.update", {"id": ada["id"], "title": "Countess"}, 202)
    post(client, "/contacts.delete", {"id": ada["id"]}, 202)
    config = service.config
    command = [sys.executable, "-m", "contacts_cli", "tail", "--brokers", config.kafka_brokers, "--topic", config.events_topic,
               "--from-beginning", "--json", "--max-events", "3", "--timeout", "30"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(text) for text in done.stdout.splitlines()]
    assert [(e["contact_id"], e["operation"]) for e in events] == [(ada["id"], "created"), (ada["id"], "updated"), (ada["id"], "deleted")]
    assert [c["path"] for c in events[1]["changes"]] == ["title", "updated_at"]


def test_tail_follows_from_now_one_line_per_event(service, client):
    before = post(client, "/contacts.create", {"display_name": "Before"}, 201)
    config = service.config
    out, assigned, stop = io.StringIO(), threading.Event(), threading.Event()
    tail = threading.Thread(
        target=follow, args=(config.kafka_brokers, config.events_topic, out),
        kwargs={"max_events": 3, "idle_timeout": 30, "on_assigned": assigned.set, "stop": stop},
    )  # fmt: skip
    tail.start()
    try:
        assert assigned.wait(30)
        bob = post(client, "/contacts.create", {"display_name": "Bob", "title": "Dr"}, 201)
        post(client, "/contacts.merge", {"source_id": bob["id"], "destination_id": before["id"]}, 200)
        tail.join(60)
    finally:
        stop.set()
        tail.join(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert before["id"] not in lines[0] and "created" in lines[0] and bob["id"] in lines[0] and "anonymous/http" in lines[0]
    assert "display_name" in lines[0] and "title" in lines[0]
    merged = next(text for text in lines if text.split()[1] == "merged")
    assert before["id"] in merged and f"from {bob['id']}" in merged and "title" in merged
    away = next(text for text in lines if text.split()[1] == "merged_away")
    assert f"to {before['id']}" in away


def test_tail_without_a_broker_says_how_to_get_one(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CONTACTS_RUN_DIR": str(tmp_path / "nothing")}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "contacts_cli", "tail"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "start `make run`" in done.stderr and "--brokers" in done.stderr
