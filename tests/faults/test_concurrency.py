"""Concurrency: many requests on the same contacts at the same moment (in-process service).

- 50 threads update different fields of one contact at once (each its own `via` key, metadata
  key, address key or top-level field), several rounds each: every field ends with the value of
  its last acknowledged update (no lost update).
- Many threads merge overlapping pairs (A<-B, B<-C, C<-A, B<-A, ...) at once: in the end each
  original contact is live or merged into exactly one live contact, each original conversation
  belongs to exactly one live contact (and /contacts.info finds it there), the count is the
  originals minus the merges that answered 200, and a rebuild from the topic agrees.

FAULT_CYCLES rounds (default 1), FAULT_RECORDS scale.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from faultkit import CYCLES, SCALE, figures

UPDATERS = 50
ROUNDS = 3 * SCALE
TOP_LEVEL = ["display_name", "avatar_url", "title", "timezone", "gender", "locale", "organization_name"]
ADDRESS = ["city", "postcode", "country"]


def run_threads(targets, timeout: float = 120.0) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target):
        def run():
            try:
                barrier.wait(30)
                target()
            except BaseException as err:  # noqa: BLE001 - reported by the caller
                errors.append(err)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout:.0f}s"
    return errors


def committed_ends(config) -> dict[int, int]:
    """partition -> the contacts topic's committed end (what read_committed readers reach)."""
    admin = AdminClient({"bootstrap.servers": config.kafka_brokers})
    topic = admin.list_topics(config.contacts_topic, timeout=10).topics[config.contacts_topic]
    request = {TopicPartition(config.contacts_topic, p): OffsetSpec.latest() for p in topic.partitions}
    futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


def post(client, path: str, body):
    answer = client.post(path, json=body)
    return answer.status_code, (answer.get_json(silent=True) if answer.data else None)


def test_fifty_threads_updating_fields_of_one_contact_lose_no_update(client):
    app = client.application
    tally = collections.Counter()
    lost_total, checked = 0, 0
    for cycle in range(CYCLES):
        status, contact = post(client, "/contacts.create", {"display_name": "shared", "via": {"base": "1"}, "metadata": {"base": 1}})
        assert status == 201
        contact_id = contact["id"]
        last: dict[tuple, object] = {}  # (field path) -> last acknowledged value
        lock = threading.Lock()

        def updater(i: int):
            own = app.test_client()
            for round_ in range(ROUNDS):
                value = f"{i}-{round_}"
                if i < len(TOP_LEVEL):
                    name = TOP_LEVEL[i]
                    path, change = (name,), {name: value if name != "timezone" else i * 100 + round_}
                elif i < len(TOP_LEVEL) + len(ADDRESS):
                    key = ADDRESS[i - len(TOP_LEVEL)]
                    path, change = ("address", key), {"address": {key: value}}
                elif i % 2:
                    path, change = ("via", f"v{i}"), {"via": {f"v{i}": value}}
                else:
                    path, change = ("metadata", f"m{i}"), {"metadata": {f"m{i}": {"value": value, "round": round_}}}
                while True:  # a 503 (the contact's lock was busy too long) is sent again
                    status, body = post(own, "/contacts.update", {"id": contact_id, **change})
                    tally[status] += 1
                    if status == 202:
                        break
                    assert status == 503, (status, body)
                    time.sleep(0.05)
                with lock:
                    last[path] = change[path[0]] if len(path) == 1 else change[path[0]][path[1]]

        started = time.monotonic()
        errors = run_threads([lambda i=i: updater(i) for i in range(UPDATERS)])
        took = time.monotonic() - started
        assert not errors, errors[:3]
        status, final = post(client, "/contacts.info", {"id": contact_id})
        assert status == 200
        lost = []
        for path, value in last.items():
            got = final.get(path[0]) if len(path) == 1 else (final.get(path[0]) or {}).get(path[1])
            if got != value:
                lost.append(f"{'.'.join(path)}: {got!r}, last acknowledged {value!r}")
        assert final["via"]["base"] == "1" and final["metadata"]["base"] == 1, "an untouched key was lost"
        assert not lost, f"{len(lost)} of {len(last)} fields lost their last update:\n  " + "\n  ".join(lost[:10])
        lost_total += len(lost)
        checked += len(last)
    figures(
        "50 concurrent updaters",
        rounds=CYCLES,
        updates_acked=tally[202],
        answered_503=tally[503],
        fields_checked=checked,
        seconds=round(took, 1),
        lost=lost_total,
    )


def test_concurrent_merges_of_overlapping_pairs_never_leave_a_contact_in_two_places(client, service, make_config, start_service, tmp_path):
    app = client.application
    size = 12 * SCALE
    threads = 24
    tally = collections.Counter()
    originals: dict[str, dict] = {}
    merged_ok = 0
    for cycle in range(CYCLES):
        payload = [
            {
                "display_name": f"m{cycle}-{i}",
                "via": {f"k{i % 4}": str(i)},
                "conversations": {str(uuid.uuid4()): "facebook", str(uuid.uuid4()): "google"},
            }
            for i in range(size)
        ]
        status, body = post(client, "/contacts.import", payload)
        assert status == 201, body
        ids = [c["id"] for c in body["data"]]
        originals.update({c["id"]: c for c in body["data"]})
        ring = [(ids[(i + 1) % size], ids[i]) for i in range(size)]  # (source, destination): A<-B, B<-C, ..., Z<-A
        pairs = ring + [(d, s) for s, d in ring] + [tuple(random.sample(ids, 2)) for _ in range(size)]

        def merger(t: int):
            own = app.test_client()
            mine = pairs[:]
            random.Random(t).shuffle(mine)
            for source, destination in mine:
                status, body = post(own, "/contacts.merge", {"source_id": source, "destination_id": destination})
                tally[status] += 1
                assert status in (200, 404, 503), (status, body)
                if status == 404:
                    assert "message" in body

        errors = run_threads([lambda t=t: merger(t) for t in range(threads)])
        assert not errors, errors[:3]

    merged_ok = tally[200]
    live = {}
    cursor = None
    while True:
        status, page = post(client, "/contacts.list", {"page_size": 1000, **({"cursor": cursor} if cursor else {})})
        assert status == 200
        live.update({c["id"]: c for c in page["data"]})
        cursor = page["pagination_data"]["next_cursor"]
        if cursor is None:
            break
    placed: dict[str, list[str]] = collections.defaultdict(list)  # original id -> live contacts that hold it
    for contact in live.values():
        placed[contact["id"]].append(contact["id"])
        for gone in contact.get("merge_history") or []:
            placed[gone["id"]].append(contact["id"])
    twice = {k: v for k, v in placed.items() if len(v) > 1}
    assert not twice, f"contacts in two places: {list(twice.items())[:5]}"
    assert set(placed) == set(originals), f"contacts vanished: {set(originals) - set(placed)}; appeared: {set(placed) - set(originals)}"
    assert len(live) == len(originals) - merged_ok, f"{len(live)} live contacts, {len(originals)} originals, {merged_ok} merges answered 200"

    problems = []
    for original_id, original in originals.items():
        holder = placed[original_id][0]
        if holder != original_id:
            status, body = post(client, "/contacts.info", {"id": original_id})
            if status != 404 or body.get("merged_into") != holder:
                problems.append(f"{original_id} (now in {holder}): info answers {status} {body}")
        for conversation_id in original["conversations"]:
            owners = [c["id"] for c in live.values() if conversation_id in (c.get("conversations") or {})]
            if owners != [holder]:
                problems.append(f"conversation {conversation_id} of {original_id}: held by {owners}, expected [{holder}]")
            status, body = post(client, "/contacts.info", {"conversation_id": conversation_id})
            if status != 200 or body["id"] != holder:
                problems.append(f"conversation {conversation_id}: info answers {status} {body.get('id') if body else body}, expected {holder}")
    assert not problems, "\n  ".join(problems[:10])

    # A store rebuilt from the topic serves the same contacts and finds them the same way.
    rebuilt = start_service(make_config(state_dir=str(tmp_path / "rebuilt"), instance_id="rebuilt"))
    assert dict(rebuilt.store.items_bytes()) == dict(service.store.items_bytes())
    differences = []
    for original_id, original in originals.items():
        holder = placed[original_id][0]
        if holder != original_id and rebuilt.store.merged_into(original_id) != holder:
            differences.append(f"rebuilt: {original_id} merged_into {rebuilt.store.merged_into(original_id)}, expected {holder}")
        for conversation_id in original["conversations"]:
            if rebuilt.store.contact_id_for_conversation(conversation_id) != holder:
                differences.append(f"rebuilt: conversation {conversation_id} -> {rebuilt.store.contact_id_for_conversation(conversation_id)}, expected {holder}")
    assert not differences, f"{len(differences)} lookups differ after a rebuild:\n  " + "\n  ".join(differences[:10])
    figures(
        "concurrent overlapping merges",
        rounds=CYCLES,
        threads=threads,
        contacts=len(originals),
        merges_200=merged_ok,
        merges_404=tally[404],
        answered_503=tally[503],
        live=len(live),
        conversations_checked=sum(len(o["conversations"]) for o in originals.values()),
        lost=0,
    )


def test_a_merge_acknowledged_by_the_broker_but_answered_503_is_not_undone_by_the_next_write(make_config, start_service):
    """A store write stall (RocksDB stalls writes under compaction pressure; here the test holds
    the store's write lock) makes a merge time out *after* its transaction committed: 503, but
    it will apply. The next write on the source must not read the stale store and bring the
    merged-away source back to life next to its destination (a contact in two places, its
    conversations with two contacts)."""
    from api.app import create_app

    service = start_service(make_config(write_timeout_ms=1000))
    client = create_app(service.config, service).test_client()
    _, a = post(client, "/contacts.create", {"display_name": "A", "conversations": {str(uuid.uuid4()): "facebook"}})
    _, b = post(client, "/contacts.create", {"display_name": "B", "conversations": {str(uuid.uuid4()): "google"}})
    stall = service.store._write_lock  # the materializer's every store write takes it
    stall.acquire()
    try:
        merge_status, merge_body = post(client, "/contacts.merge", {"source_id": b["id"], "destination_id": a["id"]})
        update_status, update_body = post(client, "/contacts.update", {"id": b["id"], "title": "edited after the merge"})
    finally:
        stall.release()
    assert merge_status == 503, (merge_status, merge_body)  # the stall did its job: committed, not applied in time

    def settled():
        status, body = post(client, "/contacts.info", {"id": a["id"]})
        return status == 200 and any(m["id"] == b["id"] for m in body.get("merge_history", []))

    deadline = time.monotonic() + 30
    while not settled():
        assert time.monotonic() < deadline, "the committed merge never reached the store"
        time.sleep(0.05)
    # Whatever the update published has landed: the store holds the topic's committed end.
    assert service.materializer.wait_reached(committed_ends(service.config), 30), "the store did not reach the topic's end"
    status, body = post(client, "/contacts.info", {"id": b["id"]})
    (conversation_b,) = b["conversations"]
    _, holder = post(client, "/contacts.info", {"conversation_id": conversation_b})
    figures("503 after commit, then another write", faults=1, merge=merge_status, update=update_status, source_after=status)
    assert status == 404 and body.get("merged_into") == a["id"], (
        f"the merged-away source is back: info {status} {body} (the update after the 503 merge answered {update_status} {update_body})"
    )
    assert holder["id"] == a["id"]
