"""`python -m bench.cli [--rows 100000] [--url URL]`: the `contacts` command end to end.

Writes a CSV of --rows people (name, e-mail, phone, company, city, a metadata column), times
`contacts import` of it into an empty service, then `contacts export` of everything to CSV and
to NDJSON, each as a subprocess as a person runs it. Without --url it starts a broker
(embedded_kafka.resolve()) and a service (`python -m api`) on topics of its own. Prints one line
per figure and, with --out, writes them as JSON. Targets (issue 12): import > 10,000 rows/s,
export > 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import procs

TARGETS = {"import": 10_000, "export.csv": 20_000, "export.ndjson": 20_000}


def write_people(path: Path, rows: int) -> None:
    rng = random.Random(12)
    companies = ["Acme Retail", "Northwind", "Globex", "Initech", ""]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "email", "phone", "company", "city", "metadata.plan"])
        for i in range(rows):
            writer.writerow([f"Person {i:07d}", f"person.{i}@example.org", f"+44 20 7946 {i % 10000:04d}", rng.choice(companies), "London", rng.choice(["free", "pro"])])


def contacts_command() -> list[str]:
    """The `contacts` command as installed beside this Python (else the module)."""
    contacts = Path(sys.executable).with_name("contacts")
    return [str(contacts)] if contacts.exists() else [sys.executable, "-m", "contacts_cli"]


def timed(command: list[str], timeout: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """(seconds, the run) of the command as a person runs it, not finding a `make run` of its own."""
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "CONTACTS_RUN_DIR": "/nonexistent"})
    return time.monotonic() - started, done


def exported(done: subprocess.CompletedProcess) -> int | None:
    """How many contacts `contacts export` says it wrote (None: it failed or said nothing)."""
    found = re.search(r"exported ([\d,]+) contacts", done.stdout)
    return int(found.group(1).replace(",", "")) if done.returncode == 0 and found is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n\n")[1])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--url", help="a running, empty service [default: start a broker and one]")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    command = contacts_command()
    work = Path(tempfile.mkdtemp(prefix="contacts-bench-cli-"))
    broker = service = None
    try:
        url = args.url
        if not url:
            from contacts_dev import embedded_kafka

            broker = embedded_kafka.resolve(log_dir=work)
            port = procs.free_port()
            tag = f"benchcli{uuid.uuid4().hex[:6]}"
            env = {
                "KAFKA_BROKERS": broker.bootstrap_servers,
                "CONTACTS_TOPIC": f"{tag}.contacts",
                "CONTACT_EVENTS_TOPIC": f"{tag}.contact-events",
                "MESSAGES_TOPIC": f"{tag}.messages",
                "METADATA_TOPIC": f"{tag}.metadata",
                "APPLICATION_ID": tag,
                "STATE_DIR": str(work / "state"),
                "PORT": str(port),
                "AUTO_CREATE_ENABLED": "false",
                "LOG_LEVEL": "WARNING",
                "systemToken": "",
                "jwtSecret": "",
            }
            service = procs.Proc("service", procs.command("gunicorn", "service"), {**env, **procs.server_env("gunicorn", "service")}, port, work).start()
            service.wait_ready(120)
            url = f"http://127.0.0.1:{port}"
        people = work / "people.csv"
        write_people(people, args.rows)
        figures = {}
        seconds, done = timed(command + ["import", str(people), "--url", url, "--batch-size", str(args.batch_size)])
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        figures["import"] = args.rows / seconds
        print(done.stdout.strip())
        for kind in ("csv", "ndjson"):
            seconds, done = timed(command + ["export", str(work / f"all.{kind}"), "--url", url])
            count = exported(done)
            if count is None:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            figures[f"export.{kind}"] = count / seconds
            print(done.stdout.strip())
        for name, rate in figures.items():
            target = TARGETS[name]
            print(f"{name:16} {rate:10,.0f} rows/s  (target > {target:,}: {'PASS' if rate > target else 'MISS'})  {args.rows:,} rows, whole command")
        if args.out:
            args.out.write_text(json.dumps({"rows": args.rows, "rows_per_s": figures, "targets": TARGETS}, indent=2) + "\n")
        return 0
    finally:
        if service is not None:
            service.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
