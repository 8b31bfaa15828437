"""`make run` as a person runs it: what you made survives Ctrl-C and a hard kill, nothing is
rebuilt, `make demo` shows auto-create at work, and `make reset` starts over.

The run folder and the service's port are this test's own (``CONTACTS_RUN_DIR``, ``PORT``),
never the developer's ``.run/``; the broker is the embedded one `make run` keeps in that folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from contacts_dev.demo import make_plan
from contacts_streams import model

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "contacts_dev.run"]  # the Makefile's `run` recipe, with its venv's python
READY_S = 120.0
STOP_S = 60.0

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="make run's embedded broker needs a JDK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MakeRun:
    """`make run` in a terminal of its own: start it, Ctrl-C it, kill it."""

    def __init__(self, folder: Path, port: int, log_dir: Path):
        self.folder, self.port, self.log_dir = folder, port, log_dir
        self.url = f"http://localhost:{port}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BROKERS", "STATE_DIR", "KAFKA_SCHEMA_REGISTRY_URL")}
        self.env.update(CONTACTS_RUN_DIR=str(folder), PORT=str(port), HTTP_THREADS="4", LOG_LEVEL="INFO")
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.output = Path()

    def start(self) -> None:
        self.starts += 1
        self.output = self.log_dir / f"make-run-{self.starts}.log"
        with open(self.output, "wb") as out:
            # A session of its own, as a terminal's: Ctrl-C goes to its whole process group.
            self.proc = subprocess.Popen(COMMAND, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"make run exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            try:
                if get(self.url + "/actuator/health/readiness")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        pytest.fail(f"make run not ready within {READY_S:.0f}s:\n{self.log()}", pytrace=False)

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self._wait()

    def kill_hard(self) -> int:
        self.proc.kill()  # kill -9 of make run's own process
        return self._wait()

    def _wait(self) -> int:
        try:
            return self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"make run did not stop within {STOP_S:.0f}s:\n{self.log()}", pytrace=False)

    def children(self) -> list[int]:
        """make run's descendants: the service's processes and the broker's JVM."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    kids = [int(k) for k in (task / "children").read_text().split()]
                except OSError:
                    continue
                found += kids
                todo += kids
        return [pid for pid in found if pid != self.broker_pid()]

    def broker_pid(self) -> int:
        marker = str(self.folder / "kafka" / "server.properties").encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if marker in cmdline.read_bytes():
                    return int(cmdline.parent.name)
            except OSError:
                continue
        raise AssertionError("no broker runs on the run folder")

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def rebuilds(run: MakeRun) -> float:
    _, text = get(run.url + "/metrics")
    return sum(float(m) for m in re.findall(r"^contacts_store_rebuilds_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("make-run")
    run = MakeRun(base / "run", _free_port(), base)
    run.start()
    yield run
    run.close()


def test_the_makefile_runs_this_entry_point():
    recipe = re.search(r"^run:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert recipe.split() == ["$(PY)", "-m", "contacts_dev.run"]


def test_what_you_made_survives_ctrl_c_and_a_hard_kill_without_a_rebuild(make_run):
    status, grace = post(make_run.url + "/contacts.create", {"display_name": "Grace Hopper", "via": {"email": "grace@example.org"}})
    assert status == 201, grace
    grace["merge_history"] = []  # as contacts.info serves it
    brokers = json.loads((make_run.folder / "run.json").read_text())["brokers"]

    assert make_run.ctrl_c() == 0
    assert not (make_run.folder / "run.json").exists()  # the demo no longer finds a stopped run
    make_run.start()
    assert post(make_run.url + "/contacts.info", {"id": grace["id"]}) == (200, grace)
    assert json.loads((make_run.folder / "run.json").read_text())["brokers"] == brokers  # its ports were free
    assert rebuilds(make_run) == 0
    assert "rebuilding the store" not in make_run.log()

    # kill -9 of make run and of its broker; the service goes by itself (its parent died).
    service = make_run.children()
    make_run.kill_hard()
    os.kill(make_run.broker_pid(), signal.SIGKILL)
    deadline = time.monotonic() + STOP_S
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in service) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in service), "the service outlived make run"
    # Meanwhile something else took the broker's port: the broker moves, the service follows.
    old_port = int(brokers.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        make_run.start()
        assert json.loads((make_run.folder / "run.json").read_text())["brokers"] != brokers
        assert post(make_run.url + "/contacts.info", {"id": grace["id"]}) == (200, grace)
        assert rebuilds(make_run) == 0
        assert "rebuilding the store" not in make_run.log()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_demo_gives_one_contact_per_conversation_and_the_crms_duplicates(make_run):
    _, before = post(make_run.url + "/contacts.list", {"page_size": 1})
    seed, conversations, groups = 20240611, 40, 3
    contacts = Path(sys.executable).with_name("contacts")
    command = [str(contacts)] if contacts.exists() else [sys.executable, "-m", "contacts_cli"]
    # No --brokers, no --url: it finds make run by itself.
    done = subprocess.run(
        command + ["demo", "--seed", str(seed), "--conversations", str(conversations), "--duplicate-groups", str(groups), "--wait", "90"],
        env=make_run.env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"all {conversations} conversations have their contact" in done.stdout
    assert "contacts.info -d '{\"conversation_id\"" in done.stdout

    plan = make_plan(seed, conversations, duplicate_groups=groups)
    status, page = post(make_run.url + "/contacts.list", {"page_size": 1000})
    assert status == 200
    assert page["pagination_data"]["total"] == before["pagination_data"]["total"] + conversations + len(plan.people)
    owners: dict[str, list[dict]] = {}
    for contact in page["data"]:
        for conversation_id in contact.get("conversations") or {}:
            owners.setdefault(conversation_id, []).append(contact)
    for conversation in plan.conversations:
        [contact] = owners[conversation.id]  # exactly one
        assert contact["id"] == model.contact_id_for_conversation(conversation.id)
        assert contact["display_name"] == conversation.expected_name
        assert contact["conversations"] == {conversation.id: conversation.source}
        assert "via" not in contact  # auto-create fills names and avatars only
        if conversation.avatar_url:
            assert contact["avatar_url"] == conversation.avatar_url
    crm = [c for c in page["data"] if (c.get("metadata") or {}).get("crm") == "demo"]
    assert sorted(c["display_name"] for c in crm) == sorted(p["display_name"] for p in plan.people)
    emails = [c["via"]["email"].strip().casefold() for c in crm if "email" in c.get("via", {})]
    assert len(emails) > len(set(emails))  # the same person more than once


def test_make_reset_refuses_while_it_runs_and_then_wipes_everything(make_run):
    env = {**make_run.env, "PYTHON": sys.executable}
    refused = subprocess.run(["make", "-s", "reset"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "stop it" in refused.stderr
    assert (make_run.folder / "kafka").exists()
    assert make_run.ctrl_c() == 0
    wiped = subprocess.run(["make", "-s", "reset"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert wiped.returncode == 0, wiped.stderr
    assert f"wiped {make_run.folder}" in wiped.stdout
    assert not make_run.folder.exists()
