"""The benchmark: the service end to end on a real broker, every figure beside a baseline.

Order of a run:
1. baselines that do not depend on the store size: the HTTP ceiling of every server (a constant
   JSON body, same threads), the load client alone, a bare `acks=all` idempotent produce + flush;
2. for every size, a fresh service (`python -m api`, its own topic, group and state folder):
   fill by `/contacts.import` (the import figure, beside a raw transactional produce of the same
   encoded records), `/contacts.info` under load, `/contacts.list` at three offsets, writes,
   memory, restart (no replay), the other servers on the same store, a cold rebuild from the
   topic (beside a raw read of the topic), and auto-create from a pre-filled messages topic
   (beside a raw read of that topic);
3. `results.json` and `RESULTS.md`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import signal
import threading
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import broker_profile, cli, client, data, procs, raw, report
from bench.client import post
from bench.profile import Sampler
from contacts_dev import embedded_kafka
from contacts_streams.serialization import message_codec

log = logging.getLogger("bench")

ID = re.compile(rb'"id":"([0-9a-f\-]{36})"')
IMPORTED = [("operation", b"imported")]
READY_TARGET_S = 5.0
UNEXPECTED_TOLERANCE = 0.005
WARM_UP_IMPORTS = 2  # one per transactional producer of the service, 10 contacts each
REBUILD_1M_S = 20.0  # #13 (#10: < 60 s)
REPLICAS = 3
WRITER_CEILING_TARGET = 8_000  # commands/s through the writer with three replicas sending (#13; #9: > 5,000)
FAILOVER_TARGET_S = 10.0


@dataclass
class Plan:
    sizes: list[int]
    import_batch: int = 1000
    info_requests: int = 3000  # per server and size, at 16 clients
    write_single: int = 100  # requests per write figure with one client
    write_concurrent: int = 400  # requests per write figure with 16 clients
    list_pages: int = 100  # timed pages at each of start / middle / end (and of each find figure)
    messages_per_conversation: int = 5  # full: 1M messages, 200k conversations
    # Auto-create at the smaller size: at least this many conversations, so the run lasts long
    # enough to time from ready (2,000 were all made within 0.2 s of it).
    auto_create_min_conversations: int = 0
    command_rows: int = 1000  # `contacts import` of a CSV of this many rows into an empty service (#12: 100,000)
    raw_import_cap: int = 200_000  # records of the raw transactional baseline
    concurrency: int = 16
    http_threads: int = 32
    time_limit: float = 30.0  # bound of every timed load
    fill_limit: float = 1800.0  # bound of the import fill
    ready_timeout: float = 600.0
    servers: list[str] = field(default_factory=lambda: ["gunicorn"])
    sections: set[str] = field(default_factory=lambda: set(SECTIONS))
    profile: bool = False


SECTIONS = ("writes", "info", "list", "export", "find", "restart", "servers", "rebuild", "auto_create", "import_command", "replicas")
COMMAND_IMPORT_TARGET_ROWS = 100_000  # #12 states its target for an import of this many rows
SEARCH_QUERY = "grace"  # a first name of bench.data: about 1 contact in 20 has it

PRESETS = {
    "tiny": dict(sizes=[200], import_batch=100, info_requests=400, write_single=15, write_concurrent=64,
                 list_pages=15, time_limit=5.0, fill_limit=60.0, ready_timeout=60.0, command_rows=300),
    "small": dict(sizes=[1000, 5000], info_requests=4000, write_single=150, write_concurrent=640,
                  list_pages=150, time_limit=20.0, fill_limit=300.0, ready_timeout=120.0),
    "full": dict(sizes=[10_000, 1_000_000], info_requests=40_000, write_single=1000, write_concurrent=6400,
                 list_pages=500, time_limit=60.0, fill_limit=3600.0, ready_timeout=900.0,
                 auto_create_min_conversations=10_000, command_rows=COMMAND_IMPORT_TARGET_ROWS),
}



def _walk(port: int, path: str, body: dict, page_size: int, deadline: float) -> tuple[list[tuple[int, str]], int]:
    """Pages through a paged endpoint once: each page's next cursor with how many contacts came
    before it, and how many there were in all."""
    cursors: list[tuple[int, str]] = []
    cursor, seen = None, 0
    while time.monotonic() < deadline:
        status, page = client.call_json(port, path, {**body, "page_size": page_size, **({"cursor": cursor} if cursor else {})})
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {page}")
        seen += len(page["data"])
        cursor = page["pagination_data"]["next_cursor"]
        if cursor is None:
            break
        cursors.append((seen, cursor))
    return cursors, seen

def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Bench:
    def __init__(self, plan: Plan, brokers: str, kafka_version: str, work_dir: Path):
        self.plan = plan
        self.brokers = brokers
        self.kafka_version = kafka_version
        self.work = work_dir
        self.run_id = uuid.uuid4().hex[:8]
        self.figures: list[report.Figure] = []
        self.notes: list[str] = []
        self.profiles: dict[str, str] = {}
        self.topics: list[str] = []
        self.ceiling: dict[str, dict[str, float]] = {}
        self.produce: dict[str, float] = {}
        self.single_replica_create_rate: float | None = None
        self.broker_pid: int | None = None  # the embedded broker's process (None for an external one)
        self.curves: dict[str, list[dict]] = {}  # series of points for the charts, e.g. the page cost along the list
        # The server every figure is measured under unless it names another: the production
        # default (`python -m api` runs granian unless HTTP_SERVER says otherwise).
        self.reference = plan.servers[0]

    # --- plumbing --------------------------------------------------------------------------------

    def add(self, key, section, label, size, value, unit, baseline_label, baseline, baseline_unit, target=None, passed=None, note="",
            samples=None):
        """`samples`: report.distribution() of the latencies behind the figure (drawn as a CDF)."""
        figure = report.Figure(key, section, label, size, value, unit, baseline_label, baseline, baseline_unit, target, passed, note,
                               samples)
        self.figures.append(figure)
        result = "" if passed is None else (" PASS" if passed else " MISS")
        log.info("%-44s %8s  %12.3f %-16s (baseline %.3f %s, ratio %.2f)%s",
                 label, size if size is not None else "-", figure.value, unit, figure.baseline, baseline_unit, figure.ratio, result)
        return figure

    def topic(self, name: str, partitions: int, compact: bool = False) -> str:
        full = f"bench.{self.run_id}.{name}"
        raw.create_topic(self.brokers, full, partitions, compact)
        self.topics.append(full)
        return full

    def service_env(self, tag: str, port: int, state: Path, contacts_topic: str, auto_create: bool = False,
                    messages_topic: str | None = None, metadata_topic: str | None = None) -> dict[str, str]:
        return {
            "KAFKA_BROKERS": self.brokers,
            "CONTACTS_TOPIC": contacts_topic,
            "CONTACT_EVENTS_TOPIC": f"{contacts_topic.rsplit('.', 1)[0]}.contact-events",
            "MESSAGES_TOPIC": messages_topic or f"bench.{self.run_id}.{tag}.messages",
            "METADATA_TOPIC": metadata_topic or f"bench.{self.run_id}.{tag}.metadata",
            "STATE_DIR": str(state),
            "PORT": str(port),
            "APPLICATION_ID": f"bench-{self.run_id}-{tag}",
            "INSTANCE_ID": "bench",
            "AUTO_CREATE_ENABLED": "true" if auto_create else "false",
            "HTTP_THREADS": str(self.plan.http_threads),
            "LOG_LEVEL": "WARNING",
            "systemToken": "",
            "jwtSecret": "",
            "allowedOrigins": "",
        }

    def proc(self, name: str, server: str, app: str, env: dict[str, str]) -> procs.Proc:
        return procs.Proc(name, procs.command(server, app), {**env, **procs.server_env(server, app)}, int(env["PORT"]), self.work)

    def sample(self, phase: str, proc: procs.Proc, just_started: bool = False):
        if not self.plan.profile:
            return None
        if just_started:
            time.sleep(0.5)  # py-spy needs a running interpreter to attach to
        broker = broker_profile.Snapshot.take(self.broker_pid) if self.broker_pid else None
        return (phase, Sampler(proc.pid, self.work / "profiles" / f"{phase}.txt"), broker)

    def unsample(self, sampler, operations: int | None = None, unit: str = "request") -> None:
        """The phase's py-spy summary and, with the embedded broker, the broker's side of it
        (requests by type and CPU by thread, per operation when the phase counts them)."""
        if sampler is None:
            return
        phase, s, broker = sampler
        summary = s.stop()
        if summary:
            self.profiles[phase] = summary
            log.info("profile %s:\n%s", phase, summary)
        if broker is not None and operations:
            text = broker_profile.describe(broker, broker_profile.Snapshot.take(self.broker_pid, ending=True), operations, unit)
            self.profiles[f"broker {phase}"] = text
            log.info("profile broker %s:\n%s", phase, text)

    def timed(self, port: int, requests, *, concurrency: int, expect: tuple[int, ...], total: int | None = None, on_response=None,
              time_limit: float | None = None, strict: bool = False, what: str = "") -> client.LoadResult:
        """A bounded load; a few unexpected answers (<= 0.5%) are noted, more stop the run."""
        result = client.load(port, requests, total=total, concurrency=concurrency, time_limit=time_limit or self.plan.time_limit,
                             on_response=on_response)
        bad = result.count - result.ok(*expect) + result.errors
        if strict or bad > UNEXPECTED_TOLERANCE * max(1, result.count):
            return result.check(*expect)
        if bad:
            self.notes.append(f"{what or 'a load'}: {bad} unexpected answers of {result.count} (statuses {result.statuses}, "
                              f"connection errors {result.errors})")
        return result

    def cpu_now(self, services: list[procs.Proc]) -> tuple[float, float, float]:
        """CPU seconds so far: the services' process trees, the broker (0 if external), and this
        process (the load generator: its asyncio clients and nothing else run here meanwhile)."""
        own = os.times()
        return sum(svc.cpu_seconds() for svc in services), procs.cpu_seconds(self.broker_pid), own.user + own.system

    def add_cpu(self, key: str, section: str, label: str, size, before, after, count: int, rate_target: float, target_text: str) -> None:
        """CPU per request of a load, split by process, against what two cores give per request
        at the target rate: where a latency or rate target is beyond this machine, this says so."""
        service, broker, loader = ((b - a) * 1000.0 / max(1, count) for a, b in zip(before, after))
        budget = (os.cpu_count() or 1) * 1000.0 / rate_target
        broker_text = f"broker {broker:.2f} ms" if self.broker_pid else "broker not counted (external)"
        self.add(key, section, label, size, service + broker + loader, "ms",
                 f"CPU time per request at {target_text} ({os.cpu_count()} cores)", budget, "ms",
                 note=f"service {service:.2f} ms, {broker_text}, load generator {loader:.2f} ms")

    # --- baselines independent of the size --------------------------------------------------------

    def http_ceilings(self) -> None:
        """Each server answering a constant body with the service's threads: the HTTP ceiling."""
        plan = self.plan
        body = post("/contacts.info", {"id": "6b3b1d8e-4c1e-4f4f-9b9b-0d4b1f0e0c11"})
        requests = [body] * plan.info_requests
        for server in plan.servers + ["flask", "asyncio"]:
            if server == "flask":
                name, app, run_as = "flask-constant", "flask-constant", plan.servers[0]
            elif server == "asyncio":
                name, app, run_as = "asyncio-constant", "constant", "asyncio"
            else:
                name, app, run_as = f"{server}-constant", "constant", server
            port = procs.free_port()
            p = self.proc(name, run_as, app, {"PORT": str(port), "HTTP_THREADS": str(plan.http_threads), "LOG_LEVEL": "WARNING",
                                              "KAFKA_BROKERS": self.brokers}).start()
            try:
                ready = p.wait_ready(60)
                self.timed(port, requests, total=max(50, plan.info_requests // 10), concurrency=plan.concurrency, expect=(200,))
                # Time-bounded rather than count-bounded: a fast server would finish a count too soon to measure.
                loaded = self.timed(port, lambda _i: body, total=plan.info_requests * 20, concurrency=plan.concurrency, expect=(200,),
                                    time_limit=max(1.0, plan.time_limit / 4))
                single = self.timed(port, requests, total=max(50, plan.list_pages * 2), concurrency=1, expect=(200,))
                self.ceiling[server] = {
                    "rps": loaded.rate, "p50": _ms(loaded.percentile(50)), "p99": _ms(loaded.percentile(99)),
                    "single_p50": _ms(single.percentile(50)), "single_p99": _ms(single.percentile(99)),
                    "ready": ready, "rss": p.rss()["total"],
                }
                log.info("ceiling %s: %.0f req/s, p99 %.2f ms, single p50 %.3f ms", name, loaded.rate, self.ceiling[server]["p99"],
                         self.ceiling[server]["single_p50"])
            finally:
                p.stop()
        first = plan.servers[0]
        c = self.ceiling
        self.add("info.flask_ceiling.rps", "info", f"Flask constant view, {first} ({plan.concurrency} clients)", None,
                 c["flask"]["rps"], "req/s", f"{first} bare WSGI constant", c[first]["rps"], "req/s",
                 note="what the framework alone costs")
        best = max((s for s in c if s != "flask"), key=lambda s: c[s]["rps"])
        self.add("client.ceiling.rps", "client", f"load client alone, against the {best} constant server", None,
                 c[best]["rps"], "req/s", f"{first} HTTP ceiling", c[first]["rps"], "req/s",
                 target=">= 2x the HTTP ceiling", passed=c[best]["rps"] >= 2 * c[first]["rps"])

    def produce_baseline(self) -> None:
        plan = self.plan
        topic = self.topic("raw-produce", 10)
        value = data.encoded_contacts(data.payloads(1, seed=99))[0][1]
        one = raw.produce_round_trips(self.brokers, topic, value, plan.write_single, 1, plan.time_limit)
        many = raw.produce_round_trips(self.brokers, topic, value, plan.write_concurrent, plan.concurrency, plan.time_limit)
        self.produce = {
            "c1.p50": _ms(client.percentile(one, 50)), "c1.p99": _ms(client.percentile(one, 99)),
            f"c{plan.concurrency}.p50": _ms(client.percentile(many, 50)), f"c{plan.concurrency}.p99": _ms(client.percentile(many, 99)),
        }
        log.info("bare produce + flush round trip: %s", {k: round(v, 2) for k, v in self.produce.items()})
        for concurrency, count in ((1, plan.write_single), (plan.concurrency, plan.write_concurrent)):
            floor = raw.produce_consume_round_trips(self.brokers, topic, value, count, concurrency, plan.time_limit)
            clients = "one client" if concurrency == 1 else f"{concurrency} clients"
            for q in (50, 99):
                self.add(f"write.floor.c{concurrency}.p{q}", "writes", f"Kafka floor of read-your-writes p{q}, {clients}", None,
                         _ms(client.percentile(floor, q)), "ms", f"bare produce+flush p{q}, {clients}",
                         self.produce[f"c{concurrency}.p{q}"], "ms",
                         note="produce, then a read_committed consumer has it: no HTTP, no store" if q == 50 else "",
                         samples=report.distribution(floor, "Kafka floor (produce, then consumed)", concurrency, baseline=True)
                         if q == 50 else None)

    # --- one size ----------------------------------------------------------------------------------

    def size(self, n: int) -> None:
        plan = self.plan
        tag = f"n{n}"
        contacts_topic = f"bench.{self.run_id}.{tag}.contacts"
        self.topics.append(contacts_topic)
        state = self.work / f"state-{tag}"
        port = procs.free_port()
        env = self.service_env(tag, port, state, contacts_topic)
        svc = self.proc(f"service-{tag}", self.reference, "service", env).start()
        try:
            ready_empty = svc.wait_ready(plan.ready_timeout)
            rss_empty = svc.rss()["total"]
            ids = self.fill(n, port, svc, tag)
            if "info" in plan.sections:
                self.info(n, port, ids, self.reference, svc)
            if "list" in plan.sections:
                self.listing(n, port)
            if "export" in plan.sections:
                self.export(n, port, svc)
            if "find" in plan.sections:
                self.find(n, port, ids)
            if "writes" in plan.sections:
                self.writes(n, port, ids, svc)
            status, page = client.call_json(port, "/contacts.list", {"page_size": 1})
            total = page["pagination_data"]["total"]
            rss = svc.rss()
            self.add("memory.rss", "memory", "service RSS (process tree)", n, rss["total"], "MB",
                     "same service, empty store", rss_empty, "MB", target="< 300 MB (#13; #10: < 500 MB)", passed=rss["total"] < 300,
                     note=f"largest process {rss['largest']:.0f} MB")
        finally:
            svc.stop()

        if "restart" in plan.sections:
            svc = self.proc(f"service-{tag}-restart", self.reference, "service", env).start()
            try:
                ready = svc.wait_ready(plan.ready_timeout)
                self.add("restart.ready", "restart", "ready after restart (no replay)", n, ready, "s",
                         "first start, empty store", ready_empty, "s", target=f"< {READY_TARGET_S:.0f} s", passed=ready < READY_TARGET_S)
                self.check_total(port, total, "after restart")
            finally:
                svc.stop()

        if "servers" in plan.sections and "info" in plan.sections:
            for server in plan.servers[1:]:
                svc = self.proc(f"service-{tag}-{server}", server, "service", env).start()
                try:
                    ready = svc.wait_ready(plan.ready_timeout)
                    self.check_total(port, total, f"under {server}")
                    self.info(n, port, ids, server, svc)
                    if "writes" in plan.sections:
                        self.writes(n, port, ids, svc, server)
                        total = client.call_json(port, "/contacts.list", {"page_size": 1})[1]["pagination_data"]["total"]
                    rss = svc.rss()
                finally:
                    code = svc.stop()
                self.notes.append(f"{server} at {n:,} contacts: ready after {ready:.2f} s on the existing store, RSS {rss['total']:.0f} MB "
                                  f"(largest process {rss['largest']:.0f} MB); SIGTERM to exit {svc.stop_seconds or float('nan'):.2f} s, "
                                  f"exit code {code}")

        if "rebuild" in plan.sections:
            shutil.rmtree(state)
            svc = self.proc(f"service-{tag}-rebuild", self.reference, "service", env).start()
            sampler = self.sample(f"rebuild-{tag}", svc, just_started=True)
            try:
                seconds, applying = self.watch_rebuild(svc, port)
                self.unsample(sampler, total, "contact")
                self.check_total(port, total, "after the rebuild")
            finally:
                svc.stop()
            raw_seconds, read = raw.consume_all(self.brokers, contacts_topic)
            self.add("rebuild.seconds", "restart", "cold rebuild from the topic (state deleted), start to ready", n, seconds, "s",
                     f"raw read_committed read of the topic ({read:,} records)", raw_seconds, "s",
                     target=f"< {REBUILD_1M_S:.0f} s" if n >= 1_000_000 else None,
                     passed=(seconds < REBUILD_1M_S) if n >= 1_000_000 else None)
            pace = 1_000_000 / REBUILD_1M_S
            self.add("rebuild.rate", "restart", "rebuild pace (store applying the topic)", n, read / applying, "records/s",
                     "raw read_committed read", read / raw_seconds, "records/s",
                     target=f">= {pace:,.0f} records/s (1M in {REBUILD_1M_S:.0f} s)", passed=read / applying >= pace,
                     note=f"{read:,} records in {applying:.2f} s")

        if "auto_create" in plan.sections:
            self.auto_create(n)

    def watch_rebuild(self, svc: procs.Proc, port: int) -> tuple[float, float]:
        """(seconds from process start to ready, seconds the store spent applying the topic).

        The second is from the last look at the service's own counter of applied records
        (`/metrics`) that still read 0, to ready: an upper bound, so the pace is a lower bound."""
        last_zero, started_applying = None, False
        deadline = svc.started + self.plan.ready_timeout
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}:\n{svc.tail()}")
            try:
                if not started_applying:  # once records are being applied, only health is polled
                    looked = time.monotonic()
                    status, text = client.call(port, "GET", "/metrics", timeout=5)
                    applied = re.search(rb"^contacts_materializer_records_applied_total (\S+)$", text, re.M)
                    if status == 200 and applied:
                        if float(applied.group(1)) == 0:
                            last_zero = looked
                        else:
                            started_applying = True
                status, _ = client.call(port, "GET", "/actuator/health", timeout=5)
                if status == 200:
                    ready = time.monotonic()
                    return ready - svc.started, ready - (last_zero if last_zero is not None else svc.started)
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.005 if not started_applying else 0.02)
        raise TimeoutError(f"{svc.name} did not finish the rebuild in time:\n{svc.tail()}")

    def check_total(self, port: int, expected: int, when: str) -> None:
        status, page = client.call_json(port, "/contacts.list", {"page_size": 1})
        if status != 200 or page["pagination_data"]["total"] != expected:
            raise RuntimeError(f"{when}: /contacts.list answered {status} with total {page and page.get('pagination_data')}, expected {expected}")

    def fill(self, n: int, port: int, svc: procs.Proc, tag: str) -> list[bytes]:
        """Import n contacts in batches (the import figure); returns their ids."""
        plan = self.plan
        batch = min(plan.import_batch, n)
        bodies, rng = [], random.Random(n)
        self.emails = []
        for start in range(0, n, batch):
            items = data.share_identities([data.contact_payload(rng, i) for i in range(start, min(n, start + batch))], start)
            self.emails += [item["via"]["email"] for item in items[::97]]
            bodies.append(post("/contacts.import", json.dumps(items, separators=(",", ":")).encode()))
        # Warm-up: one small import per transactional producer, so first-use costs stay out.
        for w in range(WARM_UP_IMPORTS):
            warm = [data.contact_payload(rng, 50_000_000 + w * 10 + i) for i in range(10)]
            status, _ = client.call(port, "POST", "/contacts.import", json.dumps(warm).encode())
            if status != 201:
                raise RuntimeError(f"warm-up import answered {status}")
        ids: list[bytes] = []
        sampler = self.sample(f"import-{tag}", svc)
        result = self.timed(port, bodies, concurrency=1, expect=(201,), on_response=lambda i, s, b: ids.extend(ID.findall(b)),
                            time_limit=plan.fill_limit, strict=True)
        self.unsample(sampler, n, "contact")
        del bodies
        if len(ids) != n:
            raise RuntimeError(f"imported {len(ids)} of {n} contacts")
        self.check_total(port, n + 10 * WARM_UP_IMPORTS, "after the import")
        rate = n / result.elapsed

        # Baseline: the same records, encoded as the service encodes them, in transactions of the same size.
        cap = min(n, plan.raw_import_cap)
        rng = random.Random(n)
        records = data.encoded_contacts([data.contact_payload(rng, i) for i in range(cap)])
        raw_topic = self.topic(f"{tag}.raw-import", 10, compact=True)
        batches = [records[i : i + batch] for i in range(0, cap, batch)]
        batches = [batches[i % len(batches)] for i in range(max(len(batches), 10))]  # at least 10 transactions
        seconds = raw.transactional_produce(self.brokers, raw_topic, batches, IMPORTED)
        raw_rate = sum(len(b) for b in batches) / seconds
        self.add("import.rate", "import", f"/contacts.import, batches of {batch}, one client", n, rate, "contacts/s",
                 f"raw transactional produce ({cap} records)", raw_rate, "contacts/s",
                 target="> 25,000 contacts/s and > 30% of raw (#13)", passed=rate > 25_000 and rate / raw_rate > 0.30,
                 note=f"p50 {_ms(result.percentile(50)):.0f} ms a batch",
                 samples=report.distribution(result.latencies, f"/contacts.import, a batch of {batch}"))
        return ids

    def info(self, n: int, port: int, ids: list[bytes], server: str, svc: procs.Proc) -> None:
        plan = self.plan
        rng = random.Random(11)
        requests = [post("/contacts.info", b'{"id":"' + rng.choice(ids) + b'"}') for _ in range(plan.info_requests)]
        self.timed(port, requests, total=max(50, plan.info_requests // 10), concurrency=plan.concurrency, expect=(200,))  # warm-up
        sampler = self.sample(f"info-{server}-n{n}", svc)
        result = self.timed(port, requests, concurrency=plan.concurrency, expect=(200,), what=f"/contacts.info under {server} at {n}")
        self.unsample(sampler)
        ceiling = self.ceiling[server]
        threads = f"{plan.http_threads} threads"
        label = {"gunicorn": "gunicorn gthread", "waitress": "waitress", "granian": "granian WSGI"}[server]
        self.add(f"info.{server}.rps", "info", f"/contacts.info, {label} ({threads})", n, result.rate, "req/s",
                 f"{label} HTTP ceiling", ceiling["rps"], "req/s",
                 target="> 8,000 req/s and p99 < 5 ms (#13)", passed=result.rate > 8000 and _ms(result.percentile(99)) < 5.0)
        self.add(f"info.{server}.p99", "info", f"/contacts.info p99, {label}", n, _ms(result.percentile(99)), "ms",
                 f"{label} ceiling p99", ceiling["p99"], "ms", note=f"p50 {_ms(result.percentile(50)):.2f} ms",
                 samples=report.distribution(result.latencies, f"/contacts.info, {label}", plan.concurrency))

    def listing(self, n: int, port: int) -> None:
        plan = self.plan
        walk = 1000 if n > 50_000 else 20
        cursors, total = _walk(port, "/contacts.list", {}, walk, time.monotonic() + plan.fill_limit)
        full = [(pos, c) for pos, c in cursors if pos <= total - 20] or cursors
        middle = min(full, key=lambda pc: abs(pc[0] - total // 2))
        end = full[-1]
        positions = {"start": (0, None), "middle": middle, "end": end}
        timed = {}
        for name, (pos, cur) in positions.items():
            request = post("/contacts.list", {"page_size": 20, **({"cursor": cur} if cur else {})})
            result = self.timed(port, [request] * plan.list_pages, concurrency=1, expect=(200,))
            timed[name] = (pos, result)
        # The chart's curve: the three timed pages and one every tenth of the list, with fewer
        # requests each (the cursors are already at hand from the walk).
        points = {pos: result for pos, result in timed.values()}
        for tenth in range(1, 10):
            pos, cur = min(full, key=lambda pc: abs(pc[0] - total * tenth // 10))
            if pos not in points:
                request = post("/contacts.list", {"page_size": 20, "cursor": cur})
                points[pos] = self.timed(port, [request] * max(5, plan.list_pages // 5), concurrency=1, expect=(200,))
        self.curves.setdefault("list.pages", []).extend(
            {"size": n, "position": pos, "total": total, "requests": r.count, "p50": _ms(r.percentile(50)), "p99": _ms(r.percentile(99))}
            for pos, r in sorted(points.items()))
        start = timed["start"][1]
        ceiling = self.ceiling[self.reference]
        for name, (pos, result) in timed.items():
            p50, p99 = _ms(result.percentile(50)), _ms(result.percentile(99))
            where = f"at contact {pos:,} of {total:,}"
            samples = report.distribution(result.latencies, f"page of 20 at the {name}")
            if name == "start":
                self.add("list.start.p50", "list", "page of 20 at the start, p50", n, p50, "ms",
                         "HTTP round trip, constant body, one client", ceiling["single_p50"], "ms", note=where, samples=samples,
                         target="< 1 ms (#13)", passed=p50 < 1.0)
            else:
                flat = p50 <= 1.5 * _ms(start.percentile(50))
                self.add(f"list.{name}.p50", "list", f"page of 20 in the {name}, p50", n, p50, "ms",
                         "page at the start, p50", _ms(start.percentile(50)), "ms", target="<= 1.5x the start page (flat)",
                         passed=flat, note=where, samples=samples)
            self.add(f"list.{name}.p99", "list", f"page of 20 {'at the' if name != 'middle' else 'in the'} {name}, p99", n, p99, "ms",
                     "page at the start, p99" if name != "start" else "HTTP round trip p99, one client",
                     _ms(start.percentile(99)) if name != "start" else ceiling["single_p99"], "ms")

    def export(self, n: int, port: int, svc: procs.Proc) -> None:
        """`contacts export` to CSV and to NDJSON as a person runs it (a subprocess, its start
        included), against the same walk through 1000-contact pages by the bench's own client."""
        started = time.monotonic()
        _cursors, walked = _walk(port, "/contacts.list", {}, 1000, started + self.plan.fill_limit)
        walk_rate = walked / (time.monotonic() - started)
        for kind in ("csv", "ndjson"):
            out = self.work / f"export-n{n}.{kind}"
            sampler = self.sample(f"export-{kind}-n{n}", svc)
            seconds, done = cli.timed([*cli.contacts_command(), "export", str(out), "--url", f"http://127.0.0.1:{port}"],
                                      timeout=self.plan.fill_limit)
            count = cli.exported(done)
            if count is None:
                raise RuntimeError(f"contacts export answered {done.returncode}: {done.stdout[-300:]} {done.stderr[-300:]}")
            self.unsample(sampler, count, "contact")
            out.unlink(missing_ok=True)
            rate, target = count / seconds, cli.TARGETS[f"export.{kind}"]
            at_scale = n >= 1_000_000  # at 10k the command's own start is a tenth of it
            self.add(f"export.{kind}", "export", f"`contacts export` to {kind.upper()}, whole command", n, rate, "rows/s",
                     "the same walk through 1000-contact pages by the bench's client", walk_rate, "rows/s",
                     target=f"> {target:,} rows/s (#12)" if at_scale else None, passed=rate > target if at_scale else None,
                     note=f"{count:,} contacts in {seconds:.1f} s")

    def import_command(self) -> None:
        """`contacts import` of a CSV as a person runs it (a subprocess, its start included) into
        an empty service of its own, against this run's /contacts.import by the bench's client."""
        rows = self.plan.command_rows
        tag = "cli-import"
        contacts_topic = f"bench.{self.run_id}.{tag}.contacts"
        self.topics.append(contacts_topic)
        people = self.work / "people.csv"
        cli.write_people(people, rows)
        port = procs.free_port()
        svc = self.proc(f"service-{tag}", self.reference, "service", self.service_env(tag, port, self.work / f"state-{tag}", contacts_topic)).start()
        try:
            svc.wait_ready(self.plan.ready_timeout)
            sampler = self.sample(f"import-command-r{rows}", svc)
            seconds, done = cli.timed([*cli.contacts_command(), "import", str(people), "--url", f"http://127.0.0.1:{port}"],
                                      timeout=self.plan.fill_limit)
            if done.returncode != 0:
                raise RuntimeError(f"contacts import answered {done.returncode}: {done.stdout[-300:]} {done.stderr[-300:]}")
            self.unsample(sampler, rows, "row")
        finally:
            svc.stop()
            people.unlink(missing_ok=True)
        api = [f for f in self.figures if f.key == "import.rate"]
        baseline = min(api, key=lambda f: f.size or 0)
        rate, target = rows / seconds, cli.TARGETS["import"]
        judged = rows >= COMMAND_IMPORT_TARGET_ROWS
        self.add("import.command", "import", f"`contacts import` of a {rows:,}-row CSV into an empty service, whole command", None,
                 rate, "rows/s", f"/contacts.import by the bench's client, batches of {self.plan.import_batch} (this run, {baseline.size:,})",
                 baseline.value, "contacts/s", target=f"> {target:,} rows/s (#12)" if judged else None,
                 passed=rate > target if judged else None, note=f"{rows:,} rows in {seconds:.1f} s")

    def find(self, n: int, port: int, ids: list[bytes]) -> None:
        """Finding people at one client: lookup by e-mail beside /contacts.info by id (the same
        store reads plus an index seek), search pages of a common name at the start, middle and
        end of its matches, and duplicate groups (1% of the fill shares an identity)."""
        plan = self.plan
        rng = random.Random(13)
        lookups = [post("/contacts.lookup", {"via": {"email": rng.choice(self.emails)}}) for _ in range(plan.list_pages)]
        infos = [post("/contacts.info", b'{"id":"' + rng.choice(ids) + b'"}') for _ in range(plan.list_pages)]

        def one_match(_i: int, status: int, body: bytes) -> None:
            if status == 200 and not json.loads(body)["data"]:
                raise RuntimeError("/contacts.lookup found nobody for an imported e-mail")

        self.timed(port, lookups[:20] + infos[:20], concurrency=1, expect=(200,))  # warm-up
        # Alternated in rounds so that both see the same machine.
        lookup_times, info_times = [], []
        for round_ in range(4):
            part = slice(round_ * len(lookups) // 4, (round_ + 1) * len(lookups) // 4)
            lookup_times += self.timed(port, lookups[part], concurrency=1, expect=(200,), on_response=one_match, strict=True).latencies
            info_times += self.timed(port, infos[part], concurrency=1, expect=(200,)).latencies
        lookup_p50, info_p50 = _ms(client.percentile(lookup_times, 50)), _ms(client.percentile(info_times, 50))
        self.add("find.lookup.p50", "find", "/contacts.lookup by e-mail p50, one client", n, lookup_p50, "ms",
                 "/contacts.info by id p50, one client", info_p50, "ms", target="< 2 ms and <= 1.5x info",
                 passed=lookup_p50 < 2.0 and lookup_p50 <= 1.5 * info_p50)
        self.add("find.lookup.p99", "find", "/contacts.lookup by e-mail p99, one client", n, _ms(client.percentile(lookup_times, 99)), "ms",
                 "/contacts.info by id p99, one client", _ms(client.percentile(info_times, 99)), "ms")

        # Cursors along the matches of a common name, walked once in big pages.
        walked, seen = _walk(port, "/contacts.search", {"query": SEARCH_QUERY}, 20 if n <= 50_000 else 500,
                             time.monotonic() + plan.fill_limit)
        cursors: list[tuple[int, str | None]] = [(0, None), *walked]
        full = [(pos, c) for pos, c in cursors if pos <= seen - 20] or cursors
        positions = {"start": full[0], "middle": min(full, key=lambda pc: abs(pc[0] - seen // 2)), "end": full[-1]}
        start_p50 = None
        for name, (pos, cur) in positions.items():
            request = post("/contacts.search", {"query": SEARCH_QUERY, "page_size": 20, **({"cursor": cur} if cur else {})})
            result = self.timed(port, [request] * plan.list_pages, concurrency=1, expect=(200,))
            p50 = _ms(result.percentile(50))
            where = f"{SEARCH_QUERY!r}, at match {pos:,} of {seen:,}"
            if start_p50 is None:
                start_p50 = p50
                self.add("find.search.start.p50", "find", "/contacts.search page of 20 at the start, p50", n, p50, "ms",
                         "HTTP round trip, constant body, one client", self.ceiling[self.reference]["single_p50"], "ms", note=where,
                         target="< 1 ms (#13)", passed=p50 < 1.0)
            else:
                self.add(f"find.search.{name}.p50", "find", f"/contacts.search page of 20 {'in the' if name == 'middle' else 'at the'} {name}, p50",
                         n, p50, "ms", "search page at the start, p50", start_p50, "ms", target="<= 1.5x the start page (flat)",
                         passed=p50 <= 1.5 * start_p50, note=where)

        status, page = client.call_json(port, "/contacts.duplicates", {"page_size": 20})
        if status != 200 or not page["data"]:
            raise RuntimeError(f"/contacts.duplicates answered {status} with {len(page.get('data') or [])} groups: the fill shares identities")
        later = page["pagination_data"]["next_cursor"]
        for name, cur in (("start", None), ("next", later)):
            request = post("/contacts.duplicates", {"page_size": 20, **({"cursor": cur} if cur else {})})
            result = self.timed(port, [request] * plan.list_pages, concurrency=1, expect=(200,))
            self.add(f"find.duplicates.{name}.p50", "find", f"/contacts.duplicates page of 20 groups {'(first)' if name == 'start' else '(second)'}, p50",
                     n, _ms(result.percentile(50)), "ms", "/contacts.info by id p50, one client", info_p50, "ms",
                     note=f"p99 {_ms(result.percentile(99)):.2f} ms")

    def writes(self, n: int, port: int, ids: list[bytes], svc: procs.Proc, server: str | None = None) -> None:
        """Create and update latency; under another server than the reference only the create
        with concurrent clients (what the server changes)."""
        plan = self.plan
        server = server or self.reference
        reference = server == self.reference
        rng = random.Random(f"writes-{server}")
        cases = [(op, c, k) for op in ("create", "update") for c, k in ((1, plan.write_single), (plan.concurrency, plan.write_concurrent))]
        if not reference:
            cases = [("create", plan.concurrency, plan.write_concurrent)]
        for operation, concurrency, count in cases:
            if operation == "create":
                requests = [post("/contacts.create", data.contact_payload(rng, 10_000_000 + i)) for i in range(count)]
                expect = (201,)
            else:
                requests = [post("/contacts.update", b'{"id":"%s","title":"Title %d"}' % (rng.choice(ids), i)) for i in range(count)]
                expect = (202,)
            phase = f"{operation}-c{concurrency}-n{n}"
            sampler = self.sample(phase, svc) if concurrency > 1 and reference else None
            cpu_before = self.cpu_now([svc])
            result = self.timed(port, requests, concurrency=concurrency, expect=expect, what=f"/contacts.{operation} c{concurrency} at {n}")
            cpu_after = self.cpu_now([svc])
            self.unsample(sampler, result.count, operation)
            if reference and concurrency > 1 and operation == "create":
                # 16 clients at 15 ms each (#9's p50) is 1,067 creates/s.
                self.add_cpu(f"cpu.create.c{concurrency}", "writes", f"CPU per create, {concurrency} clients (service, broker, load generator)",
                             n, cpu_before, cpu_after, result.count, concurrency / 0.015,
                             f"{concurrency} clients / 15 ms = {concurrency / 0.015:,.0f} creates/s")
            clients = "one client" if concurrency == 1 else f"{concurrency} clients"
            suffix, under = ("", "") if reference else (f".{server}", f", {server}")
            # #9: < 15 / 50 ms with one client and with 16; #13: < 10 / 30 ms with 16.
            for q, limit in ((50, 15.0), (99, 50.0)) if concurrency == 1 else ((50, 10.0), (99, 30.0)):
                value = _ms(result.percentile(q))
                self.add(f"write.{operation}.c{concurrency}.p{q}{suffix}", "writes", f"/contacts.{operation} p{q}, {clients}{under}", n,
                         value, "ms", f"bare produce+flush p{q}, {clients}", self.produce[f"c{concurrency}.p{q}"], "ms",
                         target=f"< {limit:.0f} ms" + ("" if concurrency == 1 else f" (#13; #9: < {limit * 1.5 if q == 50 else 50:.0f} ms)"),
                         passed=value < limit,
                         note=f"{result.rate:.0f} req/s" if q == 50 else "",
                         samples=report.distribution(result.latencies, f"/contacts.{operation}{under}", concurrency) if q == 50 else None)
            if reference and operation == "create" and concurrency == plan.concurrency:
                self.single_replica_create_rate = result.ok(201) / result.elapsed

    def auto_create(self, n: int) -> None:
        plan = self.plan
        tag = f"n{n}-ac"
        conversations = data.airy_conversations(max(1, n // plan.messages_per_conversation, plan.auto_create_min_conversations), seed=n)
        messages = max(n, len(conversations) * plan.messages_per_conversation)
        messages_topic = self.topic(f"{tag}.messages", 4)
        metadata_topic = self.topic(f"{tag}.metadata", 2)
        count = raw.produce_all(self.brokers, messages_topic, data.airy_messages(conversations, messages, seed=n))
        raw.produce_all(self.brokers, metadata_topic, data.airy_metadata(conversations))
        raw_seconds, read = raw.consume_all(self.brokers, messages_topic, decode=message_codec().decode)
        contacts_topic = f"bench.{self.run_id}.{tag}.contacts"
        self.topics.append(contacts_topic)
        port = procs.free_port()
        env = self.service_env(tag, port, self.work / f"state-{tag}", contacts_topic, auto_create=True,
                               messages_topic=messages_topic, metadata_topic=metadata_topic)
        svc = self.proc(f"service-{tag}", self.reference, "service", env).start()
        target = len(conversations)
        sampler = self.sample(f"auto-create-n{n}", svc, just_started=True)
        try:
            t_ready = t_first = None
            first_count = 0
            deadline = svc.started + plan.ready_timeout + plan.fill_limit
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"auto-create made {first_count} of {target} contacts in time")
                try:
                    if t_ready is None:
                        status, _ = client.call(port, "GET", "/actuator/health", timeout=5)
                        if status == 200:
                            t_ready = time.monotonic()
                    status, page = client.call_json(port, "/contacts.list", {"page_size": 1}, timeout=5)
                except (OSError, http.client.HTTPException):
                    time.sleep(0.02)
                    continue
                got = page["pagination_data"]["total"] if status == 200 else 0
                now = time.monotonic()
                if got and t_first is None:
                    t_first, first_count = now, got
                if got >= target:
                    t_done = now
                    break
                time.sleep(0.01)
        finally:
            self.unsample(sampler, target, "conversation")
            svc.stop()
        start = t_ready if t_ready is not None and t_ready <= t_first else t_first
        made = target - (first_count if start == t_first else 0)
        if t_done - start >= 0.2 and made > 0:
            rate, note = made / (t_done - start), f"{target:,} conversations from {count:,} messages, timed from ready"
        else:  # too small to time from inside: count the whole start
            rate, note = target / (t_done - svc.started), f"{target:,} conversations from {count:,} messages, timed from process start"
        self.add("auto_create.rate", "auto_create", "auto-create, until every contact exists", n, rate, "conversations/s",
                 "raw read_committed read + decode of the messages", target / raw_seconds, "conversations/s",
                 target="> 10,000 conversations/s", passed=rate > 10_000, note=note)

    def replicas(self) -> None:
        """Three replicas on one set of topics (own port, state folder and instance id each):
        the writer's ceiling with every replica sending creates, then the failover after kill -9
        of the writer under a create load through the other two."""
        plan = self.plan
        tag = "replicas"
        contacts_topic = f"bench.{self.run_id}.{tag}.contacts"
        self.topics.append(contacts_topic)
        svcs = []
        for i in range(REPLICAS):
            port = procs.free_port()
            env = self.service_env(tag, port, self.work / f"state-{tag}-{i}", contacts_topic) | {"INSTANCE_ID": f"bench-{i}"}
            svcs.append(self.proc(f"service-{tag}-{i}", self.reference, "service", env).start())
        try:
            for svc in svcs:
                svc.wait_ready(plan.ready_timeout)
            rng = random.Random("replicas")
            counter = iter(range(50_000_000, 60_000_000))
            lock = threading.Lock()

            def create(_index: int) -> bytes:
                with lock:
                    i = next(counter)
                return post("/contacts.create", data.contact_payload(rng, i))

            # The ceiling: every replica sends with plan.concurrency clients at once.
            results: list = [None] * REPLICAS

            def send(i: int, time_limit: float, on_response=None) -> None:
                results[i] = client.load(svcs[i].port, create, total=10_000_000, concurrency=plan.concurrency,
                                         time_limit=time_limit, on_response=on_response)

            threads = [threading.Thread(target=send, args=(i, plan.time_limit)) for i in range(REPLICAS)]
            # With --profile: the writer's process, and one that only serves HTTP and materializes.
            holder = self._the_writer(svcs) if plan.profile else 0
            samplers = [self.sample("ceiling-writer", svcs[holder]), self.sample("ceiling-other", svcs[(holder + 1) % REPLICAS])]
            started = time.monotonic()
            cpu_before = self.cpu_now(svcs)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            cpu_after = self.cpu_now(svcs)
            for sampler in samplers:
                # The broker is one: its profile goes with the writer's phase.
                self.unsample(sampler, sum(r.count for r in results) if sampler is samplers[0] else None, "create")
            acknowledged = sum(r.ok(201) for r in results)
            rate = acknowledged / elapsed
            p99 = _ms(max(r.percentile(99) for r in results))
            baseline = self.single_replica_create_rate or float("nan")
            self.add("writer.ceiling", "replicas", f"writer ceiling: creates through {REPLICAS} replicas, "
                     f"{plan.concurrency} clients each", None, rate, "commands/s",
                     f"one replica, {plan.concurrency} clients (this run)", baseline, "req/s",
                     target=f"> {WRITER_CEILING_TARGET:,} commands/s", passed=rate > WRITER_CEILING_TARGET,
                     note=f"{acknowledged:,} acknowledged in {elapsed:.1f} s, worst replica p99 {p99:.1f} ms, "
                          f"statuses {[r.statuses for r in results]}")
            self.add_cpu("cpu.ceiling", "replicas", f"CPU per create in the writer ceiling ({REPLICAS} services, broker, load generator)",
                         None, cpu_before, cpu_after, sum(r.count for r in results), WRITER_CEILING_TARGET,
                         f"{WRITER_CEILING_TARGET:,} commands/s")

            # Failover: creates through the two others, kill -9 of the writer's process group.
            writer = self._the_writer(svcs)
            survivors = [i for i in range(REPLICAS) if i != writer]
            acked: list[float] = []

            def record(_index: int, status: int, _body: bytes) -> None:
                if status == 201:
                    acked.append(time.monotonic())

            window = max(30.0, plan.time_limit)
            threads = [threading.Thread(target=send, args=(i, window, record)) for i in survivors]
            for t in threads:
                t.start()
            time.sleep(min(5.0, window / 4))  # a steady load before the kill
            killed = time.monotonic()
            os.killpg(svcs[writer].pid, signal.SIGKILL)
            for t in threads:
                t.join()
            after = sorted(t for t in acked if t >= killed)
            moments = [killed] + after
            gap = max((b - a for a, b in zip(moments, moments[1:])), default=float("inf"))
            failed = sum(sum(n for code, n in results[i].statuses.items() if code != 201) for i in survivors)
            self.add("writer.failover", "replicas", "failover after kill -9 of the writer (longest stretch without an "
                     "acknowledged create)", None, gap, "s", "writer group session timeout", 6.0, "s",
                     target=f"< {FAILOVER_TARGET_S:.0f} s", passed=gap < FAILOVER_TARGET_S,
                     note=f"{len(after):,} creates acknowledged after the kill through {len(survivors)} replicas, "
                          f"{failed} answered otherwise (503 during the failover)")
        finally:
            for svc in svcs:
                svc.stop()

    def _the_writer(self, svcs: list[procs.Proc]) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            holding = []
            for i, svc in enumerate(svcs):
                status, body = client.call(svc.port, "GET", "/metrics", timeout=5)
                if status == 200 and re.search(rb"^contacts_writer 1\.0$", body, re.M):
                    holding.append(i)
            if len(holding) == 1:
                return holding[0]
            time.sleep(0.2)
        raise TimeoutError("no single writer among the replicas")

    # --- the whole run ------------------------------------------------------------------------------

    def run(self) -> None:
        self.http_ceilings()
        if "writes" in self.plan.sections:
            self.produce_baseline()
        for n in self.plan.sizes:
            log.info("=== %d contacts ===", n)
            self.size(n)
        if "import_command" in self.plan.sections:
            log.info("=== contacts import of %d rows ===", self.plan.command_rows)
            self.import_command()
        if "replicas" in self.plan.sections:
            log.info("=== %d replicas ===", REPLICAS)
            self.replicas()

    def results(self) -> dict:
        params = {
            "sizes": self.plan.sizes, "concurrency": self.plan.concurrency, "http_threads": self.plan.http_threads,
            "servers": self.plan.servers, "import_batch": self.plan.import_batch, "info_requests": self.plan.info_requests,
            "write_requests": {"one_client": self.plan.write_single, "concurrent": self.plan.write_concurrent},
            "list_pages": self.plan.list_pages, "messages_per_conversation": self.plan.messages_per_conversation,
            "time_limit_s": self.plan.time_limit, "profiled": self.plan.profile,
        }
        ceilings = {k: {m: round(v, 3) for m, v in c.items()} for k, c in self.ceiling.items()}
        notes = list(self.notes) + [
            f"HTTP ceilings (constant body, {self.plan.concurrency} clients): " + "; ".join(
                f"{k} {c['rps']:,.0f} req/s p99 {c['p99']:.2f} ms" for k, c in ceilings.items()),
            "Load client: raw asyncio HTTP/1.1 keep-alive connections in the benchmark process, requests prepared before the clock "
            "starts; service, client and broker share the machine's cores.",
            "Writes: create/update answer after the broker's acks=all acknowledgement and the service's own store applied the "
            "record. The baseline is a bare idempotent acks=all producer doing produce + flush per record (one producer per client).",
        ]
        if self.plan.profile:
            notes.append("This run was profiled with py-spy (sampling from outside, non-blocking): figures are slightly pessimistic.")
        figures = [f for f in self.figures]
        return report.results_document(figures, machine_info=report.machine(), version_info=report.versions(self.kafka_version),
                                       params=params, notes=notes, profiles=self.profiles) | {"http_ceilings": ceilings,
                                                                                              "curves": self.curves}

    def cleanup(self) -> None:
        # The service's own topics (e.g. auto-create's repartition topic) carry the application id.
        raw.delete_topics(self.brokers, self.topics, prefixes=(f"bench.{self.run_id}.", f"bench-{self.run_id}-"))


def main(plan: Plan, out_dir: Path, brokers: str | None = None, keep: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="contacts-bench-"))
    broker = None
    if brokers:
        kafka_version = "external broker"
    else:
        broker = embedded_kafka.resolve(log_dir=work)
        brokers = broker.bootstrap_servers
        kafka_version = embedded_kafka.KAFKA_VERSION if broker.kind == "kraft" else f"{broker.kind} broker"
    log.info("broker %s, work folder %s", brokers, work)
    bench = Bench(plan, brokers, kafka_version, work)
    bench.broker_pid = broker.pid if broker is not None else None
    try:
        bench.run()
        results = bench.results()
        paths = report.write(out_dir, results)
        log.info("wrote %s and %s", *paths)
        return results
    finally:
        try:
            bench.cleanup()
        finally:
            if broker is not None:
                broker.stop()
            if keep:
                log.info("kept %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
