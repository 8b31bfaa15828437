"""Several replicas on one topic: every replica takes writes, exactly one applies them.

- Three replicas: 30 clients spread over them update different fields of the same contacts (no
  lost field); concurrent merges of one source into different destinations through different
  replicas (one succeeds, the others 404 with merged_into); a conversation claimed through two
  replicas at once (one contact, the other 409); a delete on one and an update on another (it
  stays deleted); every replica's store equals a rebuild from the topic afterwards.
- kill -9 of the writer under a write storm through the other replicas, FAULT_CYCLES times (the
  killed one comes back between kills): writes answer 503 only during the failovers (their
  lengths are printed), every acknowledged create is on the topic exactly once although the
  clients retry with their Idempotency-Key, reads on the survivors never fail.
- A rolling restart of all three under load (FAULT_CYCLES rounds): reads never fail, writes fail
  only while the writer moves.
- Auto-create with three replicas and a replica leaving in the middle: N conversations, N contacts.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid

import requests
from faultkit import (
    CYCLES,
    Airy,
    Names,
    Recorder,
    create_topics,
    figures,
    read_store,
    store_differences,
    topic_records,
    wait_for,
)

from contacts_streams import commands, model

FIELDS_CLIENTS = 30
RACES = 8


def start_replicas(spawn, names: Names, tmp_path, n: int = 3, **env) -> list:
    replicas = [spawn(names, state_dir=tmp_path / f"state-{i}", instance_id=f"replica-{i}", **env) for i in range(n)]
    for replica in replicas:
        replica.wait_ready()
    return replicas


def the_writer(replicas) -> int:
    """Index of the replica that holds the commands partition."""

    def find():
        holding = [i for i, r in enumerate(replicas) if r.running() and r.metric("contacts_writer") == 1]
        return holding if len(holding) == 1 else None

    return wait_for(find, 30, "exactly one writer")[0]


def post(replica, path, body, headers=None, timeout=30.0):
    answer = requests.post(replica.base + path, json=body, headers=headers or {}, timeout=timeout)
    return answer.status_code, (answer.json() if answer.content else None), answer.headers


class Balancer:
    """What a load balancer in front of the replicas does: each request goes to one of the
    replicas it has up (the n-th of them, round), and it knows how many are still on each."""

    def __init__(self, replicas, up):
        self.replicas = replicas
        self._up = set(up)
        self._in_flight = collections.Counter()  # replica index -> requests sent, not yet answered
        self._lock = threading.Lock()

    def _index(self, n: int) -> int:  # under the lock
        choices = sorted(self._up)
        return choices[n % len(choices)]

    def pick(self, n: int):
        with self._lock:
            return self.replicas[self._index(n)]

    def take_out(self, index: int) -> None:
        with self._lock:
            self._up.discard(index)

    def put_back(self, index: int) -> None:
        with self._lock:
            self._up.add(index)

    def idle(self, index: int) -> bool:
        with self._lock:
            return self._in_flight[index] == 0

    def post(self, n: int, path: str, body: dict, **kwargs):
        with self._lock:
            index = self._index(n)
            self._in_flight[index] += 1
        try:
            return post(self.replicas[index], path, body, **kwargs)
        finally:
            with self._lock:
                self._in_flight[index] -= 1


def newest(tokens) -> dict:
    headers = {}
    merged = commands.merge_positions(*(commands.decode_position(t) for t in tokens if t))
    if merged:
        headers["X-Contacts-Min-Position"] = commands.encode_position(merged)
    return headers


def run_at_once(targets, timeout: float = 120.0) -> list:
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list = []

    def wrap(i, target):
        def run():
            try:
                barrier.wait(30)
                results[i] = target()
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        return run

    threads = [threading.Thread(target=wrap(i, t), daemon=True) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    return results


def compare_with_a_rebuild(spawn, names: Names, replicas, tmp_path) -> int:
    rebuild = spawn(names, state_dir=tmp_path / "state-rebuild", instance_id="rebuild")
    rebuild.wait_ready()
    rebuild.stop()
    for replica in replicas:
        replica.stop()
    expected = read_store(rebuild.state_dir)
    for replica in replicas:
        problems = store_differences(read_store(replica.state_dir), expected, labels=(replica.env["INSTANCE_ID"], "rebuilt"))
        assert not problems, "a replica's store differs from a rebuild:\n  " + "\n  ".join(problems)
    return sum(len(v) for v in expected.values())


def test_three_replicas_lose_no_update_merge_no_contact_twice_and_keep_deletes(spawn, names, tmp_path):
    replicas = start_replicas(spawn, names, tmp_path)
    tokens: list[str] = []

    # 30 clients over three replicas, each its own field of the same contacts.
    status, body, headers = post(replicas[0], "/contacts.import", [{"display_name": f"shared {i}"} for i in range(3)])
    assert status == 201, body
    shared = [c["id"] for c in body["data"]]
    tokens.append(headers["X-Contacts-Position"])
    last: dict[tuple[str, str], str] = {}
    tally = collections.Counter()
    lock = threading.Lock()

    def updater(i: int):
        replica = replicas[i % 3]
        own = []
        for round_ in range(3):
            for contact_id in shared:
                value = f"{i}-{round_}"
                while True:
                    status, body, headers = post(replica, "/contacts.update", {"id": contact_id, "via": {f"client{i}": value}})
                    with lock:
                        tally[status] += 1
                    if status == 202:
                        own.append(headers["X-Contacts-Position"])
                        break
                    assert status == 503, (status, body)
                with lock:
                    last[(contact_id, f"client{i}")] = value
        return own

    started = time.monotonic()
    for own in run_at_once([lambda i=i: updater(i) for i in range(FIELDS_CLIENTS)]):
        tokens.extend(own)
    took = time.monotonic() - started
    lost = []
    for replica in replicas:  # any replica, once it has applied every acknowledged write
        for contact_id in shared:
            status, contact, _ = post(replica, "/contacts.info", {"id": contact_id}, headers=newest(tokens))
            assert status == 200, contact
            lost += [
                f"{replica.env['INSTANCE_ID']} {k}"
                for (c, k), v in last.items()
                if c == contact_id and contact["via"].get(k) != v
            ]
    assert not lost, f"{len(lost)} of {len(last) * 3} fields lost their last update: {lost[:5]}"

    # Merges of one source into three destinations through three replicas at once.
    merges = collections.Counter()
    for _ in range(RACES):
        status, body, _ = post(replicas[0], "/contacts.import", [{"display_name": n} for n in ("src", "d0", "d1", "d2")])
        source, *destinations = [c["id"] for c in body["data"]]
        results = run_at_once(
            [
                lambda i=i: post(replicas[i], "/contacts.merge", {"source_id": source, "destination_id": destinations[i]})
                for i in range(3)
            ]
        )
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 404, 404], results
        winner = next(r[1]["id"] for r in results if r[0] == 200)
        assert all(r[1]["merged_into"] == winner for r in results if r[0] == 404), results
        tokens.extend(r[2]["X-Contacts-Position"] for r in results if r[0] == 200)
        merges[200] += 1
        merges[404] += 2

    # One conversation claimed through two replicas at once: by a create and by an update.
    claims = collections.Counter()
    for _ in range(RACES):
        conversation = str(uuid.uuid4())
        _, other, _ = post(replicas[0], "/contacts.create", {"display_name": "claimer"})
        results = run_at_once(
            [
                lambda: post(
                    replicas[1], "/contacts.create", {"display_name": "creator", "conversations": {conversation: "facebook"}}
                ),
                lambda: post(replicas[2], "/contacts.update", {"id": other["id"], "conversations": {conversation: "google"}}),
            ]
        )
        statuses = sorted(r[0] for r in results)
        assert statuses in ([201, 409], [202, 409]), results
        claims.update(statuses)
        tokens.extend(r[2]["X-Contacts-Position"] for r in results if r[0] < 300)
        status, holder, _ = post(replicas[0], "/contacts.info", {"conversation_id": conversation}, headers=newest(tokens))
        assert status == 200
        expected = other["id"] if 202 in statuses else next(r[1]["id"] for r in results if r[0] == 201)
        assert holder["id"] == expected

    # A delete through one replica and an update through another: it stays deleted.
    kept_deleted = 0
    for _ in range(RACES):
        _, victim, _ = post(replicas[0], "/contacts.create", {"display_name": "victim"})
        results = run_at_once(
            [
                lambda: post(replicas[1], "/contacts.delete", {"id": victim["id"]}),
                lambda: post(replicas[2], "/contacts.update", {"id": victim["id"], "title": "revived?"}),
            ]
        )
        assert results[0][0] == 202 and results[1][0] in (202, 404), results
        tokens.extend(r[2]["X-Contacts-Position"] for r in results if r[0] < 300)
        for replica in replicas:
            status, _, _ = post(replica, "/contacts.info", {"id": victim["id"]}, headers=newest(tokens))
            assert status == 404
        kept_deleted += 1

    checked = compare_with_a_rebuild(spawn, names, replicas, tmp_path)
    figures(
        "three replicas",
        updaters=FIELDS_CLIENTS,
        updates_acked=tally[202],
        answered_503=tally[503],
        seconds=round(took, 1),
        fields_checked=len(last) * 3,
        lost=0,
        merge_races=RACES,
        claims=dict(claims),
        deletes_kept=kept_deleted,
        store_entries_compared=checked,
    )


def test_kill_9_of_the_writer_under_a_write_storm(spawn, names, tmp_path):
    """CYCLES times (one in make test, five in make soak): the load balancer stops sending the
    writer requests, kill -9 of the writer, writes succeed again on a new one, and the killed
    replica comes back (a follower now) before the next cycle kills the next writer."""
    replicas = start_replicas(spawn, names, tmp_path, WRITE_TIMEOUT_MS=4000)
    writer = the_writer(replicas)
    balancer = Balancer(replicas, up=(i for i in range(len(replicas)) if i != writer))
    lock = threading.Lock()
    _, known, created = balancer.post(0, "/contacts.create", {"display_name": "always readable"})
    position = newest([created.get("X-Contacts-Position")])
    for replica in replicas:  # every replica has it before the reads begin
        assert post(replica, "/contacts.info", {"id": known["id"]}, headers=position)[0] == 200
    stop = threading.Event()
    recorder = Recorder()
    acked: dict[str, str] = {}  # idempotency key -> contact id
    failures: list[float] = []
    successes: list[float] = []
    read_failures: list = []

    def client(i: int):
        for n in itertools.count():
            if stop.is_set():
                return
            key = f"client-{i}-{n}"
            body = {"display_name": f"storm {i} {n}"}
            for attempt in itertools.count():  # the same key until it is answered: a retry never makes a second contact
                try:
                    status, answer, _ = balancer.post(
                        i + attempt, "/contacts.create", body, headers={"Idempotency-Key": key}, timeout=15
                    )
                except requests.RequestException:
                    status, answer = 0, None
                now = time.monotonic()
                if status == 201:
                    with lock:
                        if key in acked:
                            assert acked[key] == answer["id"]
                        acked[key] = answer["id"]
                        successes.append(now)
                    recorder.add("acked")
                    break
                assert status == 503, (status, answer)
                with lock:
                    failures.append(now)
                recorder.add("503")
                time.sleep(0.05)

    def reader():
        for n in itertools.count():
            if stop.is_set():
                return
            try:
                status, _, _ = balancer.post(n, "/contacts.info", {"id": known["id"]}, timeout=10)
            except requests.RequestException as err:
                status = repr(err)
            recorder.add("reads")
            if status != 200:
                read_failures.append(status)
            time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)] + [
        threading.Thread(target=reader, daemon=True)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: recorder["acked"] >= 50, 60, "writes before the kill")
    first_kill = time.monotonic()
    windows: list[tuple[float, float]] = []  # (kill, the killed replica ready again)
    failovers: list[float] = []
    for cycle in range(CYCLES):
        writer = the_writer(replicas)
        balancer.take_out(writer)
        # No request is left on it: a kill -9 would cut those off, which no load balancer hides.
        wait_for(lambda: balancer.idle(writer), 30, "requests to the writer to be answered")  # noqa: B023
        killed_at = time.monotonic()
        replicas[writer].kill()
        acked_at_kill = recorder["acked"]
        wait_for(
            lambda: any(t > killed_at for t in successes) and recorder["acked"] > acked_at_kill + 100,  # noqa: B023
            60,
            f"writes after failover {cycle + 1}",
        )
        # The failover: the longest stretch without an acknowledged write from the kill on.
        with lock:
            moments = sorted([killed_at] + [t for t in successes if t > killed_at])
        failovers.append(max(b - a for a, b in zip(moments, moments[1:])))
        assert the_writer(replicas) != writer
        if cycle < CYCLES - 1:
            replicas[writer].start()
            replicas[writer].wait_ready()
            balancer.put_back(writer)
        windows.append((killed_at, time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(30)

    assert not read_failures, f"reads on the survivors failed: {read_failures[:5]}"
    assert all(t > first_kill - 1 for t in failures), "writes failed before the first kill"
    # A replica coming back makes the writer group rebalance: writes may fail then too.
    outside = [t for t in failures if not any(a - 1 <= t <= b + 10 for a, b in windows)]
    assert not outside, f"{len(outside)} writes failed outside the failovers"
    assert max(failovers) < 20, f"no write succeeded for {max(failovers):.1f}s after a kill"
    records = topic_records(names.kafka, names.contacts_topic)
    created_ids = collections.Counter(key.decode() for _, _, key, _, headers in records if headers.get("operation") == "created")
    twice = [k for k, n in created_ids.items() if n > 1]
    assert not twice, f"contacts created twice: {twice[:5]}"
    missing = [k for k, cid in acked.items() if created_ids.get(cid) != 1]
    assert not missing, f"{len(missing)} acknowledged creates are not on the topic exactly once"
    extra = set(created_ids) - set(acked.values()) - {known["id"]}
    assert not extra, f"{len(extra)} contacts were created that no client was answered about (a retry made a second one)"
    figures(
        "kill -9 of the writer",
        kills=CYCLES,
        acked=len(acked),
        answered_503=recorder["503"],
        reads=recorder["reads"],
        read_failures=len(read_failures),
        failover_seconds=[round(f, 2) for f in failovers],
        created_on_topic=len(created_ids) - 1,
        duplicates=0,
    )


def test_a_rolling_restart_keeps_reads_answering(spawn, names, tmp_path):
    replicas = start_replicas(spawn, names, tmp_path, WRITE_TIMEOUT_MS=4000)
    _, known, created = post(replicas[0], "/contacts.create", {"display_name": "always readable"})
    # Every replica has the contact before the reads begin (a read elsewhere is eventually
    # consistent: without this, replica-1 answered 404 while it still applied the create).
    position = newest([created.get("X-Contacts-Position")])
    for replica in replicas:
        assert post(replica, "/contacts.info", {"id": known["id"]}, headers=position)[0] == 200
    balancer = Balancer(replicas, up=range(3))
    stop = threading.Event()
    recorder = Recorder()
    read_failures: list = []
    write_failures: list = []

    def writer_client(i: int):
        for n in itertools.count():
            if stop.is_set():
                return
            replica = balancer.pick(i + n)
            try:
                status, _, _ = post(replica, "/contacts.update", {"id": known["id"], "via": {f"c{i}": str(n)}}, timeout=15)
            except requests.RequestException as err:
                status = repr(err)[:80]
            recorder.add("writes")
            if status != 202:
                write_failures.append((time.monotonic(), status))
                time.sleep(0.1)

    def reader(i: int):
        for n in itertools.count():
            if stop.is_set():
                return
            replica = balancer.pick(i + n)
            try:
                status, _, _ = post(replica, "/contacts.info", {"id": known["id"]}, timeout=10)
            except requests.RequestException as err:
                status = repr(err)[:80]
            recorder.add("reads")
            if status != 200:
                read_failures.append((replica.env["INSTANCE_ID"], status))
            time.sleep(0.01)

    threads = [threading.Thread(target=writer_client, args=(i,), daemon=True) for i in range(4)]
    threads += [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    windows = []
    for _round in range(CYCLES):  # one round in make test, five in make soak
        for i, replica in enumerate(replicas):
            time.sleep(1)
            balancer.take_out(i)  # the load balancer stops sending it requests first
            time.sleep(0.3)
            began = time.monotonic()
            assert replica.stop() == 0
            replica.start()
            replica.wait_ready()
            windows.append((began, time.monotonic()))
            balancer.put_back(i)
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not read_failures, f"reads failed during the rolling restart: {read_failures[:5]}"
    outside = [(t, s) for t, s in write_failures if not any(a - 1 <= t <= b + 10 for a, b in windows)]
    assert not outside, f"writes failed outside the restarts: {outside[:5]}"
    assert all(s == 503 for _, s in write_failures), write_failures[:5]
    figures(
        "rolling restart",
        rounds=CYCLES,
        reads=recorder["reads"],
        writes=recorder["writes"],
        write_503s=len(write_failures),
        read_failures=0,
    )


def test_auto_create_with_three_replicas_and_one_leaving_creates_every_contact_once(spawn, names, tmp_path):
    create_topics(names.kafka, {names.messages_topic: 6, names.metadata_topic: 2})
    replicas = start_replicas(spawn, names, tmp_path, AUTO_CREATE_ENABLED="true")
    airy = Airy(names.kafka, names.messages_topic, names.metadata_topic)
    conversations = [(str(uuid.uuid4()), ("facebook", "twilio.sms", "google")[i % 3]) for i in range(600)]
    first, second = conversations[:300], conversations[300:]
    for _ in range(3):
        for conversation_id, source in first:
            airy.message(conversation_id, source)
    airy.flush()
    wait_for(lambda: replicas[0].metric("contacts_store_contacts") >= 100, 60, "auto-create under way")
    replicas[2].stop()  # a rebalance of the routers (and maybe of the writer) in the middle
    for _ in range(3):
        for conversation_id, source in first[::7] + second:
            airy.message(conversation_id, source)
    airy.flush()
    wait_for(
        lambda: all(r.metric("contacts_store_contacts") == len(conversations) for r in replicas[:2]),
        90,
        "every conversation's contact",
    )
    records = topic_records(names.kafka, names.contacts_topic)
    created = collections.Counter(key.decode() for _, _, key, _, headers in records if headers.get("operation") == "auto_created")
    assert len(created) == len(conversations) and set(created.values()) == {1}
    assert set(created) == {model.contact_id_for_conversation(c) for c, _ in conversations}
    figures("auto-create, 3 replicas, one leaving", conversations=len(conversations), contacts=len(created), duplicates=0)
