"""`python -m bench.webhooks [--events 20000] [--contacts 2000] [--brokers HOST:PORT]`: webhook
delivery throughput to a local receiver.

Writes --events change events of --contacts contacts onto an events topic of its own (10
partitions, in transactions as the writer does), then starts `python -m contacts_streams.webhooks`
as a process against a keep-alive HTTP receiver in this process that checks every signature, and
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
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the receiver and the event producer the tests use

TARGET = 2000


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka.admin import AdminClient, NewTopic
    from webhookkit import Events, Receiver

    from bench import procs
    from contacts_dev import embedded_kafka

    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="WEBHOOKS_CONCURRENCY [32]")
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
    receiver = Receiver("bench-secret").start()
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
        while receiver.count() < total:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"only {receiver.count()} of {total} delivered")
            got = receiver.count()
            for share in (0.1, 0.9):
                if share not in marks and got >= share * total:
                    marks[share] = time.monotonic()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        receiver_cpu = time.process_time() - receiver_cpu
        webhooks_user, webhooks_sys = cpu_seconds(proc.pid)
        webhooks_cpu = webhooks_user + webhooks_sys
        if spy is not None:
            spy.send_signal(2)  # py-spy writes what it sampled on SIGINT
            spy.wait(30)
        steady = 0.8 * total / (marks[0.9] - marks[0.1]) if 0.1 in marks and 0.9 in marks and marks[0.9] > marks[0.1] else None
        bad = sum(1 for a in receiver.accepted if not a["signature_ok"])
        order = receiver.per_contact()
        in_order = all(order[c] == events.by_contact[c] for c in people)
        figures = {
            "events": total,
            "contacts": args.contacts,
            "concurrency": args.concurrency,
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
            "duplicates": len(receiver.accepted) - total,
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
