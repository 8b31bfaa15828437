"""`python -m bench.webhooks [--events 20000] [--contacts 2000] [--brokers HOST:PORT]`: webhook
delivery throughput to a local receiver.

Writes --events change events of --contacts contacts onto an events topic of its own (10
partitions, in transactions as the writer does), then starts `python -m contacts_streams.webhooks`
as a process against a keep-alive HTTP receiver that checks every signature (granian in a process
of its own, bench/fast_receiver.py; --receiver threaded: the tests' one, in this process), and
times from the process's start until the receiver has every event, and the steady rate between
10% and 90% of them. Without --brokers it starts a broker (embedded_kafka.resolve()). Target
(issue 11): > 2,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the receiver and the event producer the tests use

TARGET = 2000


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a running process (Linux /proc)."""
    from bench import procs

    return procs.stat_times(Path(f"/proc/{pid}/stat"))


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (granian's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(sum(cpu_seconds(p)) for p in [pid, *map(int, children)])


class GranianReceiver:
    """bench/fast_receiver.py under granian, one worker on one runtime thread, in a process of
    its own; the same questions as webhookkit.Receiver."""

    def __init__(self, secret: str, latency_ms: float):
        from bench import procs

        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        env = {**os.environ, "BENCH_RECEIVER_SECRET": secret, "BENCH_RECEIVER_LATENCY_MS": str(latency_ms)}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "granian"), "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--runtime-threads", "1", "--log-level", "warning", "bench.fast_receiver:app"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.count()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the granian receiver did not start")
                time.sleep(0.1)
        self.cpu_at_start = process_tree_cpu(self.proc.pid)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as answer:
            return answer.read()

    def count(self) -> int:
        return int(self._get("/count"))

    def report(self) -> dict:
        return json.loads(self._get("/report"))

    def cpu(self) -> float:
        return process_tree_cpu(self.proc.pid) - self.cpu_at_start

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka.admin import AdminClient, NewTopic
    from webhookkit import Events, Receiver

    from bench import procs
    from contacts_dev import embedded_kafka

    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="WEBHOOKS_CONCURRENCY [32]")
    parser.add_argument("--latency-ms", type=float, default=0, help="the receiver answers each request this much later (a remote CRM: 100-300)")
    parser.add_argument("--receiver", choices=("granian", "threaded"), default="granian",
                        help="granian: bench/fast_receiver.py in a process of its own [default]; threaded: the tests' "
                             "http.server receiver in this process (it needs more CPU per event than the webhooks process)")
    parser.add_argument("--brokers", help="a running broker [default: start one]")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--profile", type=Path, help="sample the webhooks process's thread holding the GIL (where its Python CPU goes) with py-spy into this file (collapsed stacks)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    broker = None
    if args.brokers:
        brokers = args.brokers
    else:
        broker = embedded_kafka.resolve(log_dir=work)
        brokers = broker.bootstrap_servers
    name = f"benchwh{uuid.uuid4().hex[:8]}"
    topic = f"{name}.contact-events"
    proc = None
    latency = args.latency_ms / 1000
    if args.receiver == "granian":
        receiver = GranianReceiver("bench-secret", args.latency_ms)
    else:
        receiver = Receiver("bench-secret", (lambda event, n: (time.sleep(latency), "ok")[1]) if latency else None).start()
    try:
        admin = AdminClient({"bootstrap.servers": brokers})
        for future in admin.create_topics([NewTopic(topic, 10, 1)]).values():
            future.result(30)
        events = Events(brokers, topic)
        per_contact = max(1, args.events // args.contacts)
        people = [str(uuid.uuid4()) for _ in range(args.contacts)]
        events.produce(people, per_contact=per_contact, batch=2000)
        total = per_contact * args.contacts
        print(f"{total} events of {args.contacts} contacts on {topic}", flush=True)
        env = {
            **os.environ,
            "KAFKA_BROKERS": brokers,
            "CONTACT_EVENTS_TOPIC": topic,
            "APPLICATION_ID": name,
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": "bench-secret",
            "WEBHOOKS_METRICS_PORT": str(procs.free_port()),
            "WEBHOOKS_CONCURRENCY": str(args.concurrency),
            "LOG_LEVEL": "WARNING",
        }
        started = time.monotonic()
        receiver_cpu = time.process_time()
        proc = subprocess.Popen([sys.executable, "-m", "contacts_streams.webhooks"], env=env, stdin=subprocess.DEVNULL)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--gil",
                                    "-r", "200", "-o", str(args.profile), "--pid", str(proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marks: dict[float, float] = {}
        deadline = started + 600
        poll = 0.02 if args.receiver == "granian" else 0.01  # asking granian is an HTTP request
        while (got := receiver.count()) < total:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"only {got} of {total} delivered")
            for share in (0.1, 0.9):
                if share not in marks and got >= share * total:
                    marks[share] = time.monotonic()
            time.sleep(poll)
        elapsed = time.monotonic() - started
        receiver_cpu = receiver.cpu() if args.receiver == "granian" else time.process_time() - receiver_cpu
        webhooks_user, webhooks_sys = cpu_seconds(proc.pid)
        webhooks_cpu = webhooks_user + webhooks_sys
        if spy is not None:
            spy.send_signal(2)  # py-spy writes what it sampled on SIGINT
            spy.wait(30)
        steady = 0.8 * total / (marks[0.9] - marks[0.1]) if 0.1 in marks and 0.9 in marks and marks[0.9] > marks[0.1] else None
        if args.receiver == "granian":
            report = receiver.report()
            bad, order, duplicates = report["bad_signatures"], report["per_contact"], report["duplicates"]
        else:
            bad = sum(1 for a in receiver.accepted if not a["signature_ok"])
            order, duplicates = receiver.per_contact(), len(receiver.accepted) - total
        in_order = all(order.get(c) == events.by_contact[c] for c in people)
        figures = {
            "events": total,
            "contacts": args.contacts,
            "concurrency": args.concurrency,
            "receiver": args.receiver,
            "receiver_latency_ms": args.latency_ms,
            "seconds_from_start": round(elapsed, 2),
            "events_per_s_from_start": round(total / elapsed),
            "events_per_s_steady": round(steady) if steady else None,
            # CPU seconds: what the figures are worth on a machine other processes share.
            "webhooks_cpu_s": round(webhooks_cpu, 2),
            # System time is mostly thread switches and socket calls.
            "webhooks_sys_cpu_s": round(webhooks_sys, 2),
            "events_per_webhooks_cpu_s": round(total / webhooks_cpu) if webhooks_cpu else None,
            "receiver_cpu_s": round(receiver_cpu, 2),
            "load_average_1m": os.getloadavg()[0],
            "duplicates": duplicates,
            "bad_signatures": bad,
            "in_order_per_contact": in_order,
            "target_events_per_s": TARGET,
        }
        print(json.dumps(figures, indent=2))
        if args.out:
            args.out.write_text(json.dumps(figures, indent=2) + "\n")
        return 0 if bad == 0 and in_order else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.stop()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
