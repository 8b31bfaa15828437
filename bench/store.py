"""`python -m bench.store [--n 100000] [--batch 2000] [--profile FILE] [--reads 200]`

The store alone, no Kafka: N generated contacts (bench.data's payloads, 1% sharing an e-mail or
a phone with another, so duplicates exist) are encoded once with the headers the writer sends,
then applied in batches as the materializer applies them (a cold rebuild), then applied again
as updates (each contact renamed). Then the reads of finding people at store level: lookup,
search pages at the start, middle and end of a common token, duplicates pages, and a list page.
``--profile FILE`` writes a cProfile of the cold apply (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import random
import shutil
import statistics
import tempfile
import time
import uuid

from bench import data
from contacts_streams import identities, model
from contacts_streams.find import Finder
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Record, Store

TOPIC = "bench.contacts"
PARTITIONS = 10


def contacts(n: int, seed: int = 1, shared_every: int = 100) -> list[dict]:
    """n contacts; every ``shared_every``-th takes the e-mail (or, alternately, the phone) of the one before."""
    rng = random.Random(seed)
    now = model.now_ms()
    out = []
    for i, fields in enumerate(data.payloads(n, seed)):
        if i and i % shared_every == 0:
            previous = out[-1]["via"]
            kind = "email" if (i // shared_every) % 2 else "phone"
            fields["via"][kind] = previous[kind]
        contact_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        out.append(model.new_contact(model.validate_create(fields), contact_id, now))
    return out


def records(items: list[dict], codec: ContactCodec, operation: str, start: dict[int, int]) -> list[Record]:
    out = []
    for contact in items:
        partition = hash(contact["id"]) % PARTITIONS
        offset = start.get(partition, 0)
        start[partition] = offset + 1
        headers = {"operation": operation, **identities.header(contact, None)}
        out.append(Record(partition, offset, contact["id"].encode(), codec.encode_contact(contact), headers))
    return out


def apply_all(store: Store, recs: list[Record], batch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier figure."""
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(recs), batch):
        store.apply(TOPIC, recs[i : i + batch])
    return time.perf_counter() - started, time.process_time() - cpu


def timed(fn, repeat: int) -> tuple[float, float]:
    """(p50, p99) in ms of thread CPU time (a shared machine's wall clock includes waits for a core)."""
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        times.append((time.thread_time() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[1])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000, help="records a write batch (the materializer's BATCH_SIZE)")
    parser.add_argument("--reads", type=int, default=200, help="timed calls of each read")
    parser.add_argument("--profile", help="write a cProfile of the cold apply to this file")
    parser.add_argument("--no-updates", action="store_true")
    args = parser.parse_args(argv)

    codec = ContactCodec()
    started = time.perf_counter()
    items = contacts(args.n)
    offsets: dict[int, int] = {}
    created = records(items, codec, "imported", offsets)
    print(f"generated and encoded {args.n} contacts in {time.perf_counter() - started:.1f}s")

    folder = tempfile.mkdtemp(prefix="bench-store-")
    try:
        store = Store(folder, codec)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        seconds, cpu = apply_all(store, created, args.batch)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        print(f"cold apply: {args.n / seconds:,.0f} contacts/s wall, {args.n / cpu:,.0f} per CPU second ({seconds:.2f}s, batches of {args.batch})")
        assert store.count() == args.n, store.count()

        if not args.no_updates:
            renamed = [{**c, "display_name": c["display_name"] + " Jr"} for c in items]
            updates = records(renamed, codec, "updated", offsets)
            seconds, cpu = apply_all(store, updates, args.batch)
            print(f"updates:    {args.n / seconds:,.0f} contacts/s wall, {args.n / cpu:,.0f} per CPU second ({seconds:.2f}s, each contact renamed)")
            items = renamed

        finder = Finder(store)
        rng = random.Random(7)
        picks = [rng.choice(items) for _ in range(args.reads)]
        it = iter(picks * 2)
        p50, p99 = timed(lambda: finder.lookup({"email": next(it)["via"]["email"]}), args.reads)
        print(f"lookup by email:       p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        it = iter(picks * 2)
        p50, p99 = timed(lambda: finder.lookup({"phone": next(it)["via"]["phone"]}), args.reads)
        print(f"lookup by phone:       p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        it = iter(picks * 2)
        p50, p99 = timed(lambda: store.get(next(it)["id"]), args.reads)
        print(f"get (info) by id:      p50 {p50:.3f} ms  p99 {p99:.3f} ms")

        # A common first name: its search walks a long token range. Start, middle and end by
        # following cursors through it once.
        query = "grace"
        cursors: list[str | None] = [None]
        page = finder.search(query, None, 20)
        while page.next_cursor and len(cursors) < 100_000:
            cursors.append(page.next_cursor)
            page = finder.search(query, page.next_cursor, 20)
        for where, cursor in (("start", cursors[0]), ("middle", cursors[len(cursors) // 2]), ("end", cursors[-1])):
            p50, p99 = timed(lambda: finder.search(query, cursor, 20), args.reads)
            print(f"search {query!r} {where:6}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({len(cursors)} pages)")
        it = iter(picks * 2)
        p50, p99 = timed(lambda: finder.search(next(it)["via"]["phone"][-7:], None, 20), args.reads)
        print(f"search phone digits:   p50 {p50:.3f} ms  p99 {p99:.3f} ms")

        groups, cursor = finder.duplicates(None, None, 20)
        p50, p99 = timed(lambda: finder.duplicates(None, None, 20), args.reads)
        print(f"duplicates page:       p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({len(groups)} groups a page)")
        p50, p99 = timed(lambda: store.page(None, 20), args.reads)
        print(f"list page:             p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
