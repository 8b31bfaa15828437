"""Follow the contact-events topic: one line per change (time, operation, contact, actor and
origin, the changed fields), or the events as JSON lines with --json. Starts at the end (only
what happens from now on) unless --from-beginning. Reads read_committed, so it shows only what
the writer committed. With `make run` it finds the broker by itself; Ctrl-C stops it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from typing import Callable, TextIO

HELP = "follow the contact change events (from Kafka)"
DEFAULT_TOPIC = "application.communication.contact-events"
MAX_PATHS_SHOWN = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", help="Kafka bootstrap servers [default: KAFKA_BROKERS, else the broker of a running `make run`]")
    parser.add_argument("--topic", help=f"the events topic [default: CONTACT_EVENTS_TOPIC, else {DEFAULT_TOPIC}]")
    parser.add_argument("--schema-registry-url", help="decode the registry's wire format too [default: KAFKA_SCHEMA_REGISTRY_URL, else `make run`'s]")
    parser.add_argument("--from-beginning", action="store_true", help="every event the topic still keeps, then follow")
    parser.add_argument("--json", action="store_true", help="print each event as one line of JSON")
    parser.add_argument("--contact", metavar="ID", help="only this contact's events")
    parser.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop when no event came for this long")


def line(event: dict) -> str:
    """One event for people: time, operation, contact, who/how, the other contact, changed paths."""
    paths = [change["path"] for change in event.get("changes") or ()]
    shown = ", ".join(paths[:MAX_PATHS_SHOWN]) + (f" (+{len(paths) - MAX_PATHS_SHOWN})" if len(paths) > MAX_PATHS_SHOWN else "")
    other = event.get("other_contact_id")
    parts = [event["time"], f"{event['operation']:<12}", event["contact_id"], f"{event['actor']}/{event['origin']}"]
    if other:
        parts.append(("from " if event["operation"] in ("merged", "unmerged") else "to ") + other)
    if shown:
        parts.append(shown)
    return "  ".join(parts)


def _make_run() -> dict:
    try:
        from contacts_dev import run as make_run
    except ImportError:  # the service's image has no development package
        return {}
    return make_run.running() or {}


def follow(
    brokers: str,
    topic: str,
    out: TextIO,
    *,
    registry_url: str | None = None,
    from_beginning: bool = False,
    as_json: bool = False,
    contact: str | None = None,
    max_events: int | None = None,
    idle_timeout: float | None = None,
    stop: threading.Event | None = None,
    on_assigned: Callable[[], None] | None = None,
) -> int:
    """Print events until stopped, `max_events` printed or `idle_timeout` without one; returns how many."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException

    from contacts_streams.events import EventCodec

    codec = EventCodec(registry_url, subject=f"{topic}-value")
    consumer = Consumer({
        "bootstrap.servers": brokers,
        # No offsets are committed: each tail reads on its own.
        "group.id": f"contacts-tail-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })  # fmt: skip
    stop = stop or threading.Event()
    printed = 0
    try:
        described = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise SystemExit(f"contacts tail: no topic {topic} at {brokers} (has the service started there?)")
        from confluent_kafka import TopicPartition

        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(described.partitions)])
        # OFFSET_END resolves when a partition is first fetched: wait for every position, so a
        # caller that writes after on_assigned sees its events.
        deadline = time.monotonic() + 10
        while not from_beginning and time.monotonic() < deadline and not stop.is_set():
            consumer.poll(0.05)
            if all(tp.offset >= 0 for tp in consumer.position(consumer.assignment())):
                break
        if on_assigned:
            on_assigned()
        last = time.monotonic()
        while not stop.is_set() and (max_events is None or printed < max_events):
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            if msg.error() is not None:
                continue
            last = time.monotonic()
            try:
                event = codec.decode(msg.value())
            except Exception as err:  # a record this tool cannot read: say so, go on
                print(f"# partition {msg.partition()} offset {msg.offset()}: undecodable event: {err}", file=sys.stderr)
                continue
            if contact and event.get("contact_id") != contact:
                continue
            out.write((json.dumps(event, ensure_ascii=False, separators=(",", ":")) if as_json else line(event)) + "\n")
            out.flush()
            printed += 1
    except KafkaException as err:
        raise SystemExit(f"contacts tail: {err}") from None
    finally:
        consumer.close()
    return printed


def run(args: argparse.Namespace) -> int:
    kept = _make_run()
    brokers = args.brokers or os.environ.get("KAFKA_BROKERS") or kept.get("brokers")
    if not brokers:
        print("contacts tail: no Kafka broker: start `make run` (tail finds its broker), or pass --brokers or set KAFKA_BROKERS", file=sys.stderr)
        return 1
    topic = args.topic or os.environ.get("CONTACT_EVENTS_TOPIC") or DEFAULT_TOPIC
    registry = args.schema_registry_url or os.environ.get("KAFKA_SCHEMA_REGISTRY_URL") or kept.get("schema_registry_url")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not args.json:
        print(f"# {topic} at {brokers}{' from the beginning' if args.from_beginning else ', from now'} (Ctrl-C stops)", file=sys.stderr)
    try:
        follow(
            brokers, topic, sys.stdout, registry_url=registry or None, from_beginning=args.from_beginning, as_json=args.json,
            contact=args.contact, max_events=args.max_events, idle_timeout=args.timeout, stop=stop,
        )  # fmt: skip
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 1
    return 0
