"""The writer's CPU per contact, without a broker: decide and encode batches of import and
auto-create commands the way ``Writer.process`` does (``Writer._decide_one``: the decision, the
contact record, its identities header, its change event), against a real store in a temporary
directory, and print microseconds per contact.

    python -m bench.writer_cpu [--contacts 1000] [--rounds 20] [--profile]

Each round decides fresh commands (new ids) against one batch's view, so every contact is new
as in an import fill; the store stays empty (nothing is committed). Figures are the median and
the range of the rounds' CPU time (``time.process_time``) divided by the contacts, so a loaded
machine shows as a wider range rather than a different median. ``--profile`` prints the
functions cProfile finds hottest instead.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid

from bench import data
from contacts_streams import commands, model, topics
from contacts_streams.commands import Command
from contacts_streams.decisions import LayeredView, Overlay
from contacts_streams.events import EventCodec
from contacts_streams.metrics import Metrics
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Store
from contacts_streams.writer import StoreView, Writer


class _Message:
    """What ``_decide_one`` reads of a consumed record."""

    __slots__ = ("_key", "_value")

    def __init__(self, key: bytes, value: bytes):
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "commands"


class _Limits:
    record_limit = 1024 * 1024 - 1024


def deciding_writer(store: Store) -> Writer:
    """A writer with what deciding needs and nothing of Kafka (no consumer, no producer)."""
    writer = Writer.__new__(Writer)
    writer._store = store
    writer._base = StoreView(store)
    writer._codec = store.codec if hasattr(store, "codec") else ContactCodec()
    writer._event_codec = EventCodec(subject=None)
    writer._publisher = _Limits()
    writer._remembered = {}
    writer._metrics = Metrics()
    writer._contacts_topic = "contacts"
    writer._events_topic = "contact-events"
    writer._events_limit = topics.EVENTS_MAX_MESSAGE_BYTES - topics.RECORD_OVERHEAD
    writer._dismissed_topic = "dismissed"
    writer._idempotency_topic = "idempotency"
    return writer


def import_message(rng: random.Random, n: int, start: int) -> _Message:
    items = data.share_identities([data.contact_payload(rng, i) for i in range(start, start + n)], start)
    payloads, _upsert = model.validate_import_request(items, [])
    payload = {"contacts": [{"id": str(uuid.uuid4()), "fields": fields} for fields in payloads]}
    command = Command.new(commands.IMPORT, payload, actor="system", origin=commands.ORIGIN_IMPORT, deadline_ms=None)
    return _Message(command.id.encode(), command.encode())


def auto_create_message(rng: random.Random, n: int) -> _Message:
    conversations = {}
    now = model.now_ms()
    for i, (conversation_id, source) in enumerate(data.airy_conversations(n, seed=rng.randrange(1 << 30))):
        event: dict = {"source": source, "at": {"source": now}}
        if i % 10 == 0:
            event["contact.display_name"] = f"Name {i}"
            event["at"]["contact.display_name"] = now
        conversations[conversation_id] = event
    command = Command.new(commands.AUTO_CREATE, {"conversations": conversations}, actor="auto-create", origin=commands.ORIGIN_AUTO_CREATE)
    return _Message(command.id.encode(), command.encode())


def decide_batch(writer: Writer, messages: list[_Message]) -> int:
    """What Writer.process does for one batch before its commit; returns the contact records."""
    top = Overlay()
    view = LayeredView(writer._base, [top])
    now = model.now_ms()
    records: list = []
    pending: dict = {}
    encoded: list = []
    changes: list = []
    for msg in messages:
        outcome = writer._decide_one(msg, view, top, now, records, pending, encoded, changes)
        assert outcome.decision.ok, outcome.decision.error
    for outcome_replies in writer._replies([], [], now):
        pass
    return sum(1 for r in records if r.topic == writer._contacts_topic)


def run(kind: str, contacts: int, rounds: int, store: Store) -> list[float]:
    writer = deciding_writer(store)
    rng = random.Random(7)
    starts = iter(range(0, 1 << 40, contacts))  # new e-mails and phone numbers every round, as in a fill
    build = (lambda: [import_message(rng, contacts, next(starts))]) if kind == "import" else (lambda: [auto_create_message(rng, contacts)])
    decide_batch(writer, build())  # warm-up: first-use costs stay out
    per_contact = []
    for _ in range(rounds):
        messages = build()
        started = time.process_time()
        made = decide_batch(writer, messages)
        per_contact.append((time.process_time() - started) / made * 1e6)
    return per_contact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=("import", "auto_create"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["import", "auto_create"]
    with tempfile.TemporaryDirectory(prefix="writer-cpu-") as tmp:
        store = Store(tmp, ContactCodec())
        try:
            for kind in kinds:
                if args.profile:
                    import cProfile
                    import pstats

                    profiler = cProfile.Profile()
                    profiler.enable()
                    run(kind, args.contacts, args.rounds, store)
                    profiler.disable()
                    print(f"--- {kind}")
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
                    continue
                figures = run(kind, args.contacts, args.rounds, store)
                print(
                    json.dumps(
                        {
                            "kind": kind,
                            "contacts_per_batch": args.contacts,
                            "us_per_contact_median": round(statistics.median(figures), 1),
                            "us_per_contact_min": round(min(figures), 1),
                            "us_per_contact_max": round(max(figures), 1),
                        }
                    )
                )
        finally:
            store.close()


if __name__ == "__main__":
    main()
