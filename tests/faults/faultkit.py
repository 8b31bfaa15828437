"""Helpers of the fault tests: the service as a real separate process (`python -m api`, the HTTP server's master + worker, HTTP_SERVER)
that the tests kill, restart, starve of its broker or damage the store of.

Heavy parts scale with the environment:

- ``SOAK=1``: the long version (more kill cycles, clients, records, longer outages);
- ``FAULT_CYCLES``: kill / outage cycles per test (default 1, 5 with SOAK);
- ``FAULT_CLIENTS``: client threads of the load (default 6, 16 with SOAK);
- ``FAULT_RECORDS``: contacts / conversations / merges a test starts from (default 1, 4 with SOAK,
  a multiplier).

Every test prints its figures (faults injected, writes acknowledged, records checked, lost); run
with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from contacts_dev.airy import airy_message, airy_metadata
from streamkit import read_records

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("SOAK", "").lower() in ("1", "true", "yes", "on")


def knob(name: str, default: int, soak: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else (soak if SOAK else default)


CYCLES = knob("FAULT_CYCLES", 1, 5)
CLIENTS = knob("FAULT_CLIENTS", 6, 16)
SCALE = knob("FAULT_RECORDS", 1, 4)

READY_TIMEOUT_S = 90.0


def figures(test: str, **numbers) -> None:
    """The numbers a fault test ends with, one line, for `pytest -s`."""
    print(f"\n[faults] {test}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- the service as a process ---------------------------------------------------------------


class ServiceProcess:
    """`python -m api` in a session (process group) of its own, so a kill takes the server's
    master and its worker together, as a crash of the pod would."""

    def __init__(self, env: dict[str, str], log_file: Path):
        self.env = env
        self.port = int(env["PORT"])
        self.state_dir = Path(env["STATE_DIR"])
        self.log_file = log_file
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.health_seen: list[int] = []  # statuses /actuator/health answered during the last start
        self.health_reasons: list[str] = []  # the reasons it gave for not being ready

    # lifecycle

    def start(self) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            out.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api"],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        self.health_seen = []
        self.health_reasons = []
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session: the master leads its own group

    def group_pids(self) -> list[int]:
        """Live (not zombie) processes of this service's process group."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            state, pgrp = fields[0], int(fields[2])
            if pgrp == self.pgid and state not in ("Z", "X"):
                pids.append(int(entry.name))
        return pids

    def worker_pids(self) -> list[int]:
        return [pid for pid in self.group_pids() if pid != self.pgid]

    def kill(self) -> None:
        """SIGKILL to the whole group (master and worker), then wait until none of it is left."""
        if self.proc is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        wait_for(lambda: not self.group_pids(), 30, "the killed service's processes to go")

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM (the HTTP server drains, the worker closes the service and its store); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.pgid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the service did not stop within {timeout}s of SIGTERM; log: {self.log_file}")
        wait_for(lambda: not self.group_pids(), 30, "the stopped service's processes to go")
        return code

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> list[int]:
        """Poll /actuator/health until 200; returns the statuses seen (0: no answer yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"the service exited with {self.proc.returncode}; log {self.log_file}:\n{self.tail()}")
            try:
                answer = requests.get(self.base + "/actuator/health", timeout=5)
                status = answer.status_code
                reason = answer.json().get("reason", "") if status != 200 else ""
            except (requests.RequestException, ValueError):
                status, reason = 0, ""
            if not self.health_seen or self.health_seen[-1] != status:
                self.health_seen.append(status)
            if reason and reason not in self.health_reasons:
                self.health_reasons.append(reason)
            if status == 200:
                return self.health_seen
            time.sleep(0.05)
        raise AssertionError(f"the service was not ready after {timeout:.0f}s (health {self.health_seen}, reasons {self.health_reasons[-3:]}); log {self.log_file}:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # HTTP

    def post(self, path: str, body, timeout: float = 30.0, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).post(self.base + path, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout)

    def info(self, contact_id: str) -> requests.Response:
        return self.post("/contacts.info", {"id": contact_id})

    def metric(self, name: str) -> float:
        """The sum of a Prometheus metric's samples (all labels)."""
        text = requests.get(self.base + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def list_all(self, page_size: int = 1000, quiet: bool = True) -> list[dict]:
        """Every contact by walking /contacts.list to its end; quiet=True (nothing writes
        meanwhile) also checks that the walk found `total` contacts."""
        contacts, cursor, pages = [], None, 0
        while True:
            body = {"page_size": page_size} if cursor is None else {"page_size": page_size, "cursor": cursor}
            answer = self.post("/contacts.list", body, timeout=60)
            assert answer.status_code == 200, f"/contacts.list answered {answer.status_code}: {answer.text[:300]}"
            page = answer.json()
            contacts.extend(page["data"])
            pages += 1
            cursor = page["pagination_data"]["next_cursor"]
            if cursor is None:
                break
            assert pages < 100_000
        if quiet:
            assert len(contacts) == page["pagination_data"]["total"], f"the list walk found {len(contacts)} contacts, total says {page['pagination_data']['total']}"
        return contacts


@dataclass
class Names:
    """The topics, group and ids one test's services share."""

    kafka: str
    prefix: str
    contacts_topic: str = ""
    messages_topic: str = ""
    metadata_topic: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.contacts_topic = self.contacts_topic or f"{self.prefix}.contacts"
        self.messages_topic = self.messages_topic or f"{self.prefix}.messages"
        self.metadata_topic = self.metadata_topic or f"{self.prefix}.metadata"


def new_service(names: Names, state_dir: Path | str, log_dir: Path, instance_id: str = "fault", start: bool = True, **env) -> ServiceProcess:
    """A ServiceProcess for names' topics (started unless start=False); env overrides settings."""
    settings = {
        "KAFKA_BROKERS": names.kafka,
        "CONTACTS_TOPIC": names.contacts_topic,
        "CONTACT_EVENTS_TOPIC": f"{names.prefix}.contact-events",
        "MESSAGES_TOPIC": names.messages_topic,
        "METADATA_TOPIC": names.metadata_topic,
        "APPLICATION_ID": names.prefix,
        "INSTANCE_ID": instance_id,
        "STATE_DIR": str(state_dir),
        "PORT": str(free_port()),
        "CONTACTS_PARTITIONS": "6",
        "HTTP_THREADS": "32",
        "WRITE_TIMEOUT_MS": "10000",
        "AUTO_CREATE_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        **names.extra,
    }
    settings.update({k: str(v) for k, v in env.items()})
    process = ServiceProcess(settings, Path(log_dir) / f"service-{instance_id}-{settings['PORT']}.log")
    return process.start() if start else process


# --- reading what a store holds ------------------------------------------------------------------

COMPARED_FAMILIES = ("contacts", "conversations", "merged", "names", "counters", "offsets")


def read_store(path: Path | str) -> dict[str, dict[bytes, bytes]]:
    """Every compared column family of a closed store folder, read only."""
    from rocksdict import AccessType, Options, Rdict

    from contacts_streams.store import FAMILIES

    options = Options(raw_mode=True)
    db = Rdict(
        str(path),
        options=options,
        column_families={f: Options(raw_mode=True) for f in FAMILIES},
        access_type=AccessType.read_only(),
    )
    try:
        out = {}
        for family in COMPARED_FAMILIES:
            cf = db.get_column_family(family)
            out[family] = dict(cf.items())
            del cf
        return out
    finally:
        db.close()


def _resolved_merges(merged: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """merged-away id -> the end of its merged_into chain: a hint may name the contact the id
    went into first or the one that contact went into later; both lead to the same place."""
    out = {}
    for key in merged:
        current, steps = key, 0
        while current in merged and steps < 32:
            current, steps = merged[current], steps + 1
        out[key] = current
    return out


def store_differences(actual: dict, expected: dict, families=COMPARED_FAMILIES, limit: int = 12, labels=("store", "expected")) -> list[str]:
    """What differs between two read_store() results, family by family (empty: identical).
    The merged family is compared by where each chain of hints ends."""
    problems = []
    for family in families:
        a, e = actual[family], expected[family]
        if family == "merged":
            a, e = _resolved_merges(a), _resolved_merges(e)
        for key in sorted(set(a) | set(e)):
            if a.get(key) != e.get(key):
                problems.append(f"{family}[{key!r}]: {labels[0]} {_short(a.get(key))}, {labels[1]} {_short(e.get(key))}")
                if len(problems) >= limit:
                    problems.append("...")
                    return problems
    return problems


def _short(value: bytes | None) -> str:
    if value is None:
        return "absent"
    return repr(value if len(value) < 60 else value[:60] + b"...")


def _contacts_ends(names: Names) -> dict[int, int]:
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": names.kafka})
    topic = names.contacts_topic
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
    futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


def _commands_left(names: Names) -> int:
    """Commands on the commands topic the writer group has not committed yet (a command a dead
    replica sent before its kill waits there for the next writer, until its deadline)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = f"{names.prefix}-commands"
    offsets = [offset for partition, offset, *_ in topic_records(names.kafka, topic) if partition == 0]
    if not offsets:
        return 0
    admin = AdminClient({"bootstrap.servers": names.kafka})
    request = [ConsumerGroupTopicPartitions(f"{names.prefix}-writer", [TopicPartition(topic, 0)])]
    committed = admin.list_consumer_group_offsets(request, request_timeout=10)[f"{names.prefix}-writer"].result()
    position = committed.topic_partitions[0].offset
    return sum(1 for offset in offsets if offset >= position)


def wait_until_applied(service: ServiceProcess, ends: dict[int, int], timeout: float = 60.0) -> None:
    """Until the service's store has applied the contacts topic up to `ends` (the read-your-write
    wait of X-Contacts-Min-Position)."""
    from contacts_streams.commands import encode_position

    token = encode_position({p: end - 1 for p, end in ends.items() if end > 0})

    def applied():
        answer = requests.post(
            service.base + "/contacts.list",
            data=json.dumps({"page_size": 1}),
            headers={"Content-Type": "application/json", "X-Contacts-Min-Position": token},
            timeout=30,
        )
        return answer.status_code == 200

    wait_for(applied, timeout, f"{service.log_file.name}'s store to apply the contacts topic up to {ends}", interval=0.5)


def wait_settled(names: Names, service: ServiceProcess) -> None:
    """Wait until nothing more can land: the writer has consumed every command (one sent before
    a kill is applied by the next writer if its deadline has not passed, seconds after the
    restart: ready is not settled) and the service's store has applied the committed end."""
    wait_for(lambda: _commands_left(names) == 0, 60, "the writer to consume every command", interval=0.5)
    wait_until_applied(service, _contacts_ends(names))


def assert_equals_a_fresh_rebuild(spawn, names: Names, live: ServiceProcess, tmp_path: Path, instance_id: str = "rebuild") -> dict:
    """Start a service on a NEW empty state folder against the same topic, let it read the topic,
    stop both, and compare every column family the topic determines: first the contacts' bytes,
    names, counters and offsets, then the conversation and merged-away indexes. Returns
    {"records_checked": ...}.

    Compared once nothing more can land: the writer has consumed every command on the commands
    topic (one sent before a kill is applied by the next writer if its deadline has not passed,
    seconds after the restart) and both stores have applied the contacts topic's committed end."""
    wait_settled(names, live)
    ends = _contacts_ends(names)
    rebuild = spawn(names, state_dir=tmp_path / f"state-{instance_id}", instance_id=instance_id, AUTO_CREATE_ENABLED="false")
    rebuild.wait_ready()
    wait_until_applied(rebuild, ends)
    assert _contacts_ends(names) == ends, "the contacts topic grew while the stores were compared"
    live_count = len(live.list_all())
    rebuilt_count = len(rebuild.list_all())
    rebuild.stop()
    live.stop()
    actual, expected = read_store(live.state_dir), read_store(rebuild.state_dir)
    where = f"({live_count} contacts served live, {rebuilt_count} rebuilt from {names.contacts_topic})"
    problems = store_differences(actual, expected, ("contacts", "names", "counters", "offsets"), labels=("live", "rebuilt"))
    assert not problems, f"the store differs from a fresh rebuild {where}:\n  " + "\n  ".join(problems)
    problems = store_differences(actual, expected, ("conversations", "merged"), labels=("live", "rebuilt"))
    assert not problems, (
        f"the contacts are equal, but the conversation / merged-away indexes differ from a fresh rebuild {where} "
        "(see test_store_damage.py::test_a_rebuilt_store_finds_every_conversation_and_merged_away_contact):\n  " + "\n  ".join(problems)
    )
    return {"records_checked": sum(len(actual[f]) for f in COMPARED_FAMILIES)}


# --- reading the contacts topic ------------------------------------------------------------------


def topic_records(kafka: str, topic: str, timeout: float = 60.0, committed: bool = True) -> list:
    """Every committed record of a topic (committed=False: aborted ones too):
    (partition, offset, key, value, headers dict of str)."""
    return [
        (partition, offset, key, value, {k: (v.decode() if v is not None else None) for k, v in headers})
        for partition, offset, key, value, headers in read_records(kafka, topic, timeout, committed)
    ]


# --- load helpers --------------------------------------------------------------------------------


class Recorder:
    """Thread-safe tallies of what a load did."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


def without(contact: dict, *names: str) -> dict:
    return {k: v for k, v in contact.items() if k not in names}


def check_served_indexes(service: ServiceProcess, contacts: list[dict], workers: int = 8) -> dict:
    """What the contacts themselves say must be findable, asked over HTTP:

    - no conversation belongs to two live contacts;
    - /contacts.info {conversation_id} finds the live contact that holds the conversation;
    - every id in a live contact's merge_history answers 404 with merged_into = that contact.

    Returns the problems found (at most a few of each kind) and how many lookups were made."""
    from concurrent.futures import ThreadPoolExecutor

    holders: dict[str, list[str]] = {}
    absorbed: dict[str, str] = {}
    for contact in contacts:
        for conversation_id in contact.get("conversations") or {}:
            holders.setdefault(conversation_id, []).append(contact["id"])
        for merged in contact.get("merge_history") or []:
            absorbed[merged["id"]] = contact["id"]
    problems = [f"conversation {c} belongs to {ids}" for c, ids in holders.items() if len(ids) > 1][:5]

    def by_conversation(item):
        conversation_id, ids = item
        answer = service.post("/contacts.info", {"conversation_id": conversation_id})
        found = answer.json().get("id") if answer.status_code == 200 else f"{answer.status_code} {answer.text[:80]}"
        return None if found in ids else f"conversation {conversation_id} of {ids[0]}: info answers {found}"

    def by_merged_id(item):
        merged_id, holder = item
        answer = service.post("/contacts.info", {"id": merged_id})
        hint = answer.json().get("merged_into") if answer.status_code == 404 else f"status {answer.status_code}"
        return None if hint == holder else f"merged-away {merged_id} (now in {holder}): info says merged_into={hint}"

    with ThreadPoolExecutor(workers) as pool:
        conversation_problems = [p for p in pool.map(by_conversation, holders.items()) if p]
        merged_problems = [p for p in pool.map(by_merged_id, absorbed.items()) if p]
    problems += conversation_problems[:5] + merged_problems[:5]
    if len(conversation_problems) > 5 or len(merged_problems) > 5:
        problems.append(f"... {len(conversation_problems)} conversation and {len(merged_problems)} merged-away lookups wrong in all")
    return {"problems": problems, "lookups": len(holders) + len(absorbed), "wrong": len(conversation_problems) + len(merged_problems)}


# --- Airy's messages and metadata topics ----------------------------------------------------------


class Airy:
    """A producer of Airy Message / Metadata records (the platform's topics auto-create reads)."""

    def __init__(self, kafka: str, messages_topic: str, metadata_topic: str):
        from confluent_kafka import Producer

        from contacts_streams.serialization import message_codec, metadata_codec

        self.messages_topic, self.metadata_topic = messages_topic, metadata_topic
        self.producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "linger.ms": 5})
        self.messages, self.metadata = message_codec(), metadata_codec()

    def message(self, conversation_id: str, source: str) -> None:
        message_id = str(uuid.uuid4())
        record = airy_message(conversation_id, source, message_id, int(time.time() * 1000))
        self.producer.produce(self.messages_topic, key=message_id.encode(), value=self.messages.encode(record))
        self.producer.poll(0)

    def name(self, conversation_id: str, display_name: str) -> None:
        record = airy_metadata(conversation_id, "contact.display_name", display_name, int(time.time() * 1000))
        key = f"conversation:{conversation_id}:contact.display_name".encode()
        self.producer.produce(self.metadata_topic, key=key, value=self.metadata.encode(record))
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "the messages did not reach the broker"


def create_topics(kafka: str, partitions_by_topic: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka})
    topics = [NewTopic(name, partitions, 1) for name, partitions in partitions_by_topic.items()]
    for future in admin.create_topics(topics).values():
        future.result(30)


def delete_topics(kafka: str, *topics: str) -> None:
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": kafka}).delete_topics(list(topics))


class TransactionWatch:
    """Tells whether a topic holds records of a transaction that is still open: its high
    watermark (read_uncommitted end) lies beyond its last stable offset (read_committed end)."""

    def __init__(self, kafka: str, topic: str):
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient({"bootstrap.servers": kafka})
        self._topic = topic
        partitions = self._admin.list_topics(topic, timeout=10).topics[topic].partitions
        self._partitions = sorted(partitions)

    def _ends(self, isolation) -> dict[int, int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        request = {TopicPartition(self._topic, p): OffsetSpec.latest() for p in self._partitions}
        futures = self._admin.list_offsets(request, isolation_level=isolation, request_timeout=5)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def open(self) -> bool:
        from confluent_kafka import IsolationLevel

        stable = self._ends(IsolationLevel.READ_COMMITTED)
        high = self._ends(IsolationLevel.READ_UNCOMMITTED)
        return any(high[p] > stable[p] for p in self._partitions)
