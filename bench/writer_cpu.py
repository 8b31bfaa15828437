"""The service's CPU per write, without a broker: the pure parts of a create, an update, an
import and an auto-create, against a real store in a temporary directory, and print
microseconds per contact.

    python -m bench.writer_cpu [--contacts 1000] [--rounds 20] [--only KIND] [--profile]

Three stages a round, each timed on its own:

- ``send``: what the answering replica does before the command leaves (validation of the
  request body, the command's encoding);
- ``decide``: what ``Writer.process`` does for one batch before its commit
  (``Writer._decide_one``: the command's decoding, the decision, the contact record, its
  identities header, its change event; the replies);
- ``apply``: what every replica's materializers do with the batch's records (the contact
  records into the store and its indexes, the events into the history).

Kinds: ``import`` (one command of ``--contacts`` new contacts), ``create`` (a batch of
``--batch`` single creates, as 16 concurrent clients make them), ``update`` (a batch of updates of
contacts created before: a name and an e-mail change), ``auto_create`` (one router command of
``--contacts`` new conversations). Every round writes new contacts (new e-mails and phone
numbers, as in a fill). Figures are the median and the range of the rounds' CPU time
(``time.thread_time``: RocksDB's background threads stay out) divided by the contacts, so a loaded machine shows as a wider range
rather than a different median. ``--profile`` prints the functions cProfile finds hottest
instead.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

import api.__main__ as api_main
from bench import data
from contacts_streams import commands, model, topics
from contacts_streams.commands import Command
from contacts_streams.decisions import LayeredView, Overlay
from contacts_streams.events import EventCodec
from contacts_streams.metrics import Metrics
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Store
from contacts_streams.store.layout import Record
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
    writer._replies_topic = "replies"
    return writer


def _message(command: Command) -> _Message:
    return _Message(command.id.encode(), command.encode())


def import_messages(items: list[dict]) -> list[_Message]:
    payloads, _upsert = model.validate_import_request(items, [])
    payload = {"contacts": [{"id": model.random_uuid(), "fields": fields} for fields in payloads]}
    return [_message(Command.new(commands.IMPORT, payload, actor="system", origin=commands.ORIGIN_IMPORT, deadline_ms=None))]


def create_messages(items: list[dict]) -> list[_Message]:
    out = []
    for item in items:
        fields = model.validate_create(item, [])
        payload = {"contacts": [{"id": model.random_uuid(), "fields": fields}]}
        out.append(_message(Command.new(commands.CREATE, payload, actor="system", deadline_ms=model.now_ms() + 60_000)))
    return out


def update_messages(items: list[dict]) -> list[_Message]:
    out = []
    for item in items:
        contact_id, changes = model.validate_update(item, [])
        command = Command.new(commands.UPDATE, {"id": contact_id, "changes": changes}, deadline_ms=model.now_ms() + 60_000)
        out.append(_message(command))
    return out


def auto_create_messages(conversations: dict) -> list[_Message]:
    command = Command.new(
        commands.AUTO_CREATE, {"conversations": conversations}, actor="auto-create", origin=commands.ORIGIN_AUTO_CREATE
    )
    return [_message(command)]


def conversations_of(rng: random.Random, n: int) -> dict:
    conversations = {}
    now = model.now_ms()
    for i, (conversation_id, source) in enumerate(data.airy_conversations(n, seed=rng.randrange(1 << 30))):
        event: dict = {"source": source, "at": {"source": now}}
        if i % 10 == 0:
            event["contact.display_name"] = f"Name {i}"
            event["at"]["contact.display_name"] = now
        conversations[conversation_id] = event
    return conversations


def decide_batch(writer: Writer, messages: list[_Message]) -> tuple[list, list]:
    """What Writer.process does for one batch before its commit; returns the contact records
    and the change events it made."""
    top = Overlay()
    view = LayeredView(writer._base, [top])
    now = model.now_ms()
    records: list = []
    pending: dict = {}
    encoded: list = []
    changes: list = []
    events_: list = []
    outcomes = []
    for msg in messages:
        outcome = writer._decide_one(msg, view, top, now, records, pending, encoded, changes, events_)
        assert outcome.decision.ok, outcome.decision.error
        outcomes.append(outcome)
    placed = [(r.topic, 0, n) for n, r in enumerate(records)]
    writer._replies(outcomes, placed, now)
    for value, contact in encoded:
        writer._store.remember(value, contact)
    for value, event in events_:
        writer._store.history.remember(value, event)
    return [r for r in records if r.topic == writer._contacts_topic], changes


class _Offsets:
    def __init__(self):
        self.next = 0

    def take(self, n: int) -> range:
        start = self.next
        self.next += n
        return range(start, start + n)


def apply_batch(store: Store, contacts: list, events_: list, offsets: _Offsets) -> None:
    """What the contacts and the events materializers do with the batch's records."""
    now = model.now_ms()
    records = [
        Record(0, offset, r.key, r.value, {k: (v.decode() if v is not None else "") for k, v in r.headers}, now)
        for offset, r in zip(offsets.take(len(contacts)), contacts, strict=True)
    ]
    store.apply("contacts", records)
    store.history.apply(
        "contact-events",
        [Record(0, offset, r.key, r.value, {}, now) for offset, r in zip(offsets.take(len(events_)), events_, strict=True)],
    )


def run(kind: str, contacts: int, batch: int, rounds: int, store: Store) -> dict[str, list[float]]:
    """Per round and stage, the CPU microseconds per contact."""
    writer = deciding_writer(store)
    rng = random.Random(f"{kind}-7")  # conversations of its own: kinds share one store
    offsets = _Offsets()
    starts = iter(range(0, 1 << 40, max(contacts, batch)))  # new e-mails and phone numbers every round, as in a fill

    def payloads(n: int) -> list[dict]:
        start = next(starts)
        return data.share_identities([data.contact_payload(rng, i) for i in range(start, start + n)], start)

    def prepare():
        """What a round sends, made outside the measured stages (the update's contacts too)."""
        if kind == "import":
            return payloads(contacts)
        if kind == "create":
            return payloads(batch)
        if kind == "update":
            decided, happened = decide_batch(writer, create_messages(payloads(batch)))
            apply_batch(store, decided, happened, offsets)
            start = next(starts)
            return [
                {
                    "id": r.key.decode(),
                    "display_name": f"Renamed {start + n}",
                    "via": {"email": f"renamed{start + n}@example.org"},
                }
                for n, r in enumerate(decided)
            ]
        return conversations_of(rng, contacts)

    send = {"import": import_messages, "create": create_messages, "update": update_messages, "auto_create": auto_create_messages}[
        kind
    ]

    def round_() -> tuple[float, float, float, int]:
        prepared = prepare()
        started = time.thread_time()
        messages = send(prepared)
        sent = time.thread_time()
        decided, happened = decide_batch(writer, messages)
        done = time.thread_time()
        apply_batch(store, decided, happened, offsets)
        applied = time.thread_time()
        return sent - started, done - sent, applied - done, len(decided)

    round_()  # warm-up: first-use costs stay out
    out: dict[str, list[float]] = {"send": [], "decide": [], "apply": [], "total": []}
    for _ in range(rounds):
        send_, decide_, apply_, made = round_()
        for stage, seconds in (("send", send_), ("decide", decide_), ("apply", apply_), ("total", send_ + decide_ + apply_)):
            out[stage].append(seconds / made * 1e6)
    return out


KINDS = ("create", "update", "import", "auto_create")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1000, help="contacts of an import or auto-create command")
    parser.add_argument("--batch", type=int, default=16, help="commands of a create or update batch")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=KINDS)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    kinds = [args.only] if args.only else list(KINDS)
    with tempfile.TemporaryDirectory(prefix="writer-cpu-") as tmp:
        store = Store(tmp, ContactCodec(), event_codec=EventCodec(subject=None))
        # The collector as the service's worker sets it (code from before it did: as it was).
        getattr(api_main, "collect_less", lambda app: app)(None)
        try:
            for kind in kinds:
                if args.profile:
                    import cProfile
                    import pstats

                    profiler = cProfile.Profile()
                    profiler.enable()
                    run(kind, args.contacts, args.batch, args.rounds, store)
                    profiler.disable()
                    print(f"--- {kind}")
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
                    continue
                figures = run(kind, args.contacts, args.batch, args.rounds, store)
                line: dict = {"kind": kind, "contacts_per_round": args.batch if kind in ("create", "update") else args.contacts}
                for stage, values in figures.items():
                    line[f"{stage}_us"] = f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
                print(json.dumps(line))
        finally:
            store.close()


if __name__ == "__main__":
    main()
