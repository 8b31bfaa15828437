"""Crash safety: the service process (the HTTP server's master and worker together) is killed with SIGKILL
in the middle of writes, then started again on the same state folder and INSTANCE_ID (so its
transactional producers fence whatever transaction the dead one left open).

After every restart: every write that got a success answer is there with the acknowledged
content; an import or a merge is all or nothing; no conversation has two contacts. At the end the
store equals a fresh rebuild from the topic (a third service on a new, empty state folder).

FAULT_CYCLES kills per test (default 1), FAULT_CLIENTS client threads, FAULT_RECORDS scale.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid

import requests
from faultkit import (
    CLIENTS,
    CYCLES,
    SCALE,
    Airy,
    Recorder,
    TransactionWatch,
    assert_equals_a_fresh_rebuild,
    check_served_indexes,
    create_topics,
    delete_topics,
    figures,
    topic_records,
    wait_for,
    wait_settled,
    without,
)

from contacts_streams import model

HTTP_TIMEOUT = 30.0
RATE = 100 * SCALE  # new conversations a second on the busy messages topic (4 messages each)
SOURCES = ["facebook", "twilio.sms", "google", "chatplugin"]


def comparable(contact: dict) -> dict:
    return without(contact, "updated_at", "merge_history")


class Threads:
    """Client threads whose unexpected exceptions fail the test."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target, *args) -> None:
        def run():
            try:
                target(*args)
            except BaseException as err:  # noqa: BLE001 - reported by join()
                self.errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"
        assert not self.errors, f"client threads failed: {self.errors[:3]}"


def kill_after(service, condition, rng: random.Random, extra: tuple[float, float], timeout: float = 60.0) -> float:
    """Wait for condition(), then a random extra moment, then SIGKILL the service's process group."""
    wait_for(condition, timeout, "the load to get going", interval=0.02)
    time.sleep(rng.uniform(*extra))
    killed_at = time.monotonic()
    service.kill()
    return killed_at


# --- (a) creates and updates -------------------------------------------------------------------


def test_kill_during_creates_and_updates(spawn, names, tmp_path):
    service = spawn(names, instance_id="crash")
    service.wait_ready()
    rng = random.Random()
    acked: dict[str, dict] = {}  # id -> the state last acknowledged
    in_flight: dict[str, dict] = {}  # id -> the state an unanswered update would give
    unanswered_creates: list[str] = []  # display names of creates without an answer
    lock = threading.Lock()
    tally = Recorder()

    for cycle in range(CYCLES):
        stop = threading.Event()

        def client(tid: int) -> None:
            session = requests.Session()
            local = random.Random(f"{cycle}-{tid}")
            n = 0
            while not stop.is_set():
                name = f"crash-{cycle}-{tid}-{n}"
                n += 1
                payload = {
                    "display_name": name,
                    "via": {"client": str(tid)},
                    "conversations": {str(uuid.uuid4()): local.choice(SOURCES)},
                    "metadata": {"cycle": cycle, "n": n},
                }
                try:
                    answer = service.post("/contacts.create", payload, HTTP_TIMEOUT, session)
                except requests.RequestException:
                    with lock:
                        unanswered_creates.append(name)
                    return
                if answer.status_code != 201:
                    assert answer.status_code == 503, answer.text
                    tally.add("create_503")
                    with lock:
                        unanswered_creates.append(name)  # 503 promises nothing: it may have landed
                    continue
                contact = answer.json()
                with lock:
                    acked[contact["id"]] = contact
                tally.add("acked_creates")
                for u in range(local.randint(1, 4)):
                    changes = {"title": f"title {u}", "via": {f"k{u}": str(u)}, "metadata": {f"m{u}": u}}
                    expected = model.apply_update(contact, changes, model.now_ms())
                    while True:  # the same update again after a 503: it is idempotent
                        try:
                            answer = service.post("/contacts.update", {"id": contact["id"], **changes}, HTTP_TIMEOUT, session)
                        except requests.RequestException:
                            with lock:
                                in_flight[contact["id"]] = expected
                            return
                        if answer.status_code == 202:
                            break
                        assert answer.status_code == 503, answer.text
                        tally.add("update_503")
                    contact = expected
                    with lock:
                        acked[contact["id"]] = contact
                    tally.add("acked_updates")

        threads = Threads()
        before = tally["acked_creates"] + tally["acked_updates"]
        for tid in range(CLIENTS):
            threads.start(client, tid)
        kill_after(service, lambda: tally["acked_creates"] + tally["acked_updates"] >= before + 30, rng, (0.2, 1.5))
        stop.set()
        threads.join()
        service.start()
        service.wait_ready()
        wait_settled(names, service)

        # Every acknowledged write is there; an unanswered update is either there or not.
        lost, landed = [], 0
        for contact_id, state in list(acked.items()):
            answer = service.info(contact_id)
            if answer.status_code != 200:
                lost.append(f"{contact_id}: {answer.status_code}")
                continue
            got = comparable(answer.json())
            options = [comparable(state)]
            if contact_id in in_flight:
                options.append(comparable(in_flight[contact_id]))
            if got not in options:
                lost.append(f"{contact_id}: serves {got}, acknowledged {options[0]}")
                continue
            if contact_id in in_flight:
                landed += got == options[1]
                acked[contact_id] = in_flight.pop(contact_id) if got == options[1] else state
                in_flight.pop(contact_id, None)
        assert not lost, f"cycle {cycle}: {len(lost)} acknowledged writes lost or changed:\n  " + "\n  ".join(lost[:10])
        contacts = service.list_all()
        by_name = collections.Counter(c.get("display_name") for c in contacts)
        known = {c["display_name"] for c in acked.values()} | set(unanswered_creates)
        assert all(by_name[c["display_name"]] == 1 for c in acked.values()), "an acknowledged create is there twice"
        assert all(by_name[name] <= 1 for name in unanswered_creates), "an unanswered create is there twice"
        assert set(by_name) <= known, f"contacts nobody created: {set(by_name) - known}"
        creates_landed = sum(by_name[name] for name in unanswered_creates)
        tally.add("in_flight_updates_landed", landed)
        indexes = check_served_indexes(service, contacts)
        assert not indexes["problems"], "\n  ".join(indexes["problems"])

    result = assert_equals_a_fresh_rebuild(spawn, names, service, tmp_path)
    figures(
        "kill -9 during creates/updates",
        faults=CYCLES,
        clients=CLIENTS,
        acked_creates=tally["acked_creates"],
        acked_updates=tally["acked_updates"],
        answered_503=tally["create_503"] + tally["update_503"],
        unanswered_creates=len(unanswered_creates),
        unanswered_creates_landed=creates_landed,
        unanswered_updates_landed=tally["in_flight_updates_landed"],
        contacts_checked=len(acked),
        records_checked=result["records_checked"],
        lost=0,
    )


# --- (b) a 1,000-contact import ------------------------------------------------------------------

IMPORT_SIZE = 1000


def import_payload(tag: str) -> list[dict]:
    return [
        {
            "display_name": f"{tag} {i:04d}",
            "organization_name": tag,
            "via": {"email": f"{tag}-{i}@example.org"},
            "conversations": {str(uuid.uuid4()): SOURCES[i % len(SOURCES)]},
            "metadata": {"i": i},
        }
        for i in range(IMPORT_SIZE)
    ]


def test_kill_during_a_1000_contact_import(spawn, names, tmp_path, kafka):
    """Importers send 1,000-contact imports back to back; the kill falls the moment the topic
    holds records of an open (uncommitted) import transaction. Each import is all there or not
    at all, and an acknowledged one is all there. The kill is repeated (a few times at most)
    until one fell inside an open transaction, which the aborted records it leaves prove."""
    service = spawn(names, instance_id="crash")
    service.wait_ready()
    rng = random.Random()
    kept = {}  # tag -> contacts of imports that are there
    for tag in ("import-warm", "import-timed"):  # the second one times an import
        started = time.monotonic()
        answer = service.post("/contacts.import", import_payload(tag), 60)
        duration = time.monotonic() - started
        assert answer.status_code == 201, answer.text
        kept[tag] = answer.json()["data"]
    outcomes = collections.Counter()
    lock = threading.Lock()
    kills, inside, aborted_before = 0, 0, 0

    while kills < CYCLES or (inside == 0 and kills < CYCLES + 5):
        cycle = kills
        answers: dict[str, object] = {}  # tag -> Response or the exception
        stop = threading.Event()

        def importer(tid: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                tag = f"import-{cycle}-{tid}-{n}"
                n += 1
                with lock:
                    answers[tag] = None
                try:
                    answers[tag] = service.post("/contacts.import", import_payload(tag), HTTP_TIMEOUT, session)
                except requests.RequestException as err:
                    answers[tag] = err
                    return

        threads = Threads()
        for tid in range(2):  # as many as the service has transactional producers
            threads.start(importer, tid)
        time.sleep(rng.uniform(0.0, 2.0) * duration)
        watch = TransactionWatch(kafka, names.contacts_topic)
        wait_for(watch.open, 30, "an open import transaction", interval=0.0)
        service.kill()
        kills += 1
        stop.set()
        threads.join()
        service.start()
        service.wait_ready()
        wait_settled(names, service)

        contacts = service.list_all()
        by_tag = collections.defaultdict(list)
        for contact in contacts:
            by_tag[contact.get("organization_name")].append(contact)
        for tag, answer in answers.items():
            mine = by_tag.get(tag, [])
            assert len(mine) in (0, IMPORT_SIZE), f"cycle {cycle}: the import {tag} is half there: {len(mine)} of {IMPORT_SIZE}"
            if isinstance(answer, requests.Response) and answer.status_code == 201:
                assert len(mine) == IMPORT_SIZE, f"the acknowledged import {tag} is missing"
                assert {c["id"] for c in mine} == {c["id"] for c in answer.json()["data"]}
                outcomes["acknowledged"] += 1
            else:
                assert not isinstance(answer, requests.Response) or answer.status_code == 503, answer.text
                outcomes["unanswered, all there" if mine else "unanswered, none there"] += 1
            if mine:
                sent = {p["display_name"]: p for p in import_payload(tag)}
                for contact in mine:
                    expected = {**sent[contact["display_name"]], "id": contact["id"], "created_at": contact["created_at"]}
                    expected["conversations"] = contact["conversations"]  # the payload's are fresh uuids each call
                    assert comparable(contact) == expected, f"an imported contact differs from what was sent: {contact}"
                kept[tag] = mine
        for tag, data in kept.items():
            assert {c["id"] for c in by_tag.get(tag, [])} == {c["id"] for c in data}, f"cycle {cycle}: the import {tag} lost contacts"
        assert len(contacts) == sum(len(v) for v in kept.values()), "contacts of no import"
        indexes = check_served_indexes(service, contacts)
        assert not indexes["problems"], "\n  ".join(indexes["problems"])
        aborted = len(topic_records(kafka, names.contacts_topic, committed=False)) - len(contacts)
        inside += aborted > aborted_before
        aborted_before = aborted

    assert inside, f"none of {kills} kills fell inside an open import transaction"
    rebuilt = assert_equals_a_fresh_rebuild(spawn, names, service, tmp_path)
    figures(
        "kill -9 during 1,000-contact imports",
        faults=kills,
        kills_inside_an_open_transaction=inside,
        import_ms=round(duration * 1000),
        imports=dict(outcomes),
        aborted_records_on_topic=aborted_before,
        contacts_checked=sum(len(v) for v in kept.values()),
        records_checked=rebuilt["records_checked"],
        lost=0,
    )


# --- (c) merges ----------------------------------------------------------------------------------


def test_kill_during_merges(spawn, names, tmp_path):
    service = spawn(names, instance_id="crash")
    service.wait_ready()
    rng = random.Random()
    groups_per_cycle = 30 * SCALE
    originals: dict[str, dict] = {}
    merges: list[dict] = []  # {"source", "destination", "status"}
    lock = threading.Lock()
    tally = Recorder()

    for cycle in range(CYCLES):
        payload = [
            {"display_name": f"merge-{cycle}-{i}", "conversations": {str(uuid.uuid4()): "facebook", str(uuid.uuid4()): "google"}, "via": {f"v{i % 3}": str(i)}}
            for i in range(3 * groups_per_cycle)
        ]
        answer = service.post("/contacts.import", payload, 60)
        assert answer.status_code == 201, answer.text
        ids = [c["id"] for c in answer.json()["data"]]
        originals.update({c["id"]: c for c in answer.json()["data"]})
        groups = [ids[k : k + 3] for k in range(0, len(ids), 3)]
        stop = threading.Event()

        def client(my_groups) -> None:
            session = requests.Session()
            for a, b, c in my_groups:
                # c into b, then b (holding c) into a: merges of merges.
                for source, destination in ((c, b), (b, a)):
                    if stop.is_set():
                        return
                    entry = {"source": source, "destination": destination, "status": "unanswered"}
                    with lock:
                        merges.append(entry)
                    try:
                        answer = service.post("/contacts.merge", {"source_id": source, "destination_id": destination}, HTTP_TIMEOUT, session)
                    except requests.RequestException:
                        return
                    entry["status"] = answer.status_code
                    assert answer.status_code in (200, 503), answer.text
                    tally.add(f"merge_{answer.status_code}")
                    if answer.status_code != 200:
                        return  # the chain stops here: its next merge needs this one

        threads = Threads()
        before = tally["merge_200"]
        for tid in range(CLIENTS):
            threads.start(client, groups[tid::CLIENTS])
        kill_after(service, lambda: tally["merge_200"] >= before + 10, rng, (0.0, 0.6))
        stop.set()
        threads.join()
        service.start()
        service.wait_ready()
        wait_settled(names, service)

        contacts = service.list_all()
        live = {c["id"]: c for c in contacts}
        absorbed = {m["id"]: c["id"] for c in contacts for m in c.get("merge_history") or []}
        half = []
        for entry in merges:
            source = entry["source"]
            applied = source not in live
            in_history = source in absorbed
            if applied != in_history:
                half.append(f"{entry}: source live={not applied}, in a live contact's history={in_history}")
            if entry["status"] == 200 and not applied:
                half.append(f"{entry}: acknowledged but the source is still live")
            if applied:
                holder = live[absorbed[source]]
                missing = set(originals[source].get("conversations", {})) - set(holder.get("conversations", {}))
                if missing:
                    half.append(f"{entry}: {absorbed[source]} lacks the source's conversations {missing}")
                hint = service.info(source)
                if hint.status_code != 404 or hint.json().get("merged_into") != absorbed[source]:
                    half.append(f"{entry}: info on the source answers {hint.status_code} {hint.text[:120]}")
        assert not half, f"cycle {cycle}: merges half applied:\n  " + "\n  ".join(half[:10])
        assert set(live) | set(absorbed) == set(originals), "contacts appeared or vanished"
        assert len(live) == len(originals) - len(absorbed)
        indexes = check_served_indexes(service, contacts)
        assert not indexes["problems"], "\n  ".join(indexes["problems"])
        tally.add("unanswered_applied", sum(1 for m in merges if m["status"] == "unanswered" and m["source"] in absorbed) - tally["unanswered_applied"])

    rebuilt = assert_equals_a_fresh_rebuild(spawn, names, service, tmp_path)
    figures(
        "kill -9 during merges",
        faults=CYCLES,
        clients=CLIENTS,
        contacts=len(originals),
        acked_merges=tally["merge_200"],
        answered_503=tally["merge_503"],
        unanswered_merges=sum(1 for m in merges if m["status"] == "unanswered"),
        unanswered_applied=tally["unanswered_applied"],
        records_checked=rebuilt["records_checked"],
        lost=0,
    )


# --- (d) auto-create from a busy messages topic --------------------------------------------------


def test_kill_during_auto_create_from_a_busy_messages_topic(spawn, names, tmp_path, kafka):
    """Messages of new conversations (and replies in older ones, and names from metadata) keep
    coming while the service is killed and while it is down. In the end every conversation has
    exactly one contact, created once (one `auto_created` record on the topic), named from its
    metadata when it has a name."""
    create_topics(kafka, {names.messages_topic: 4, names.metadata_topic: 2})
    airy = Airy(kafka, names.messages_topic, names.metadata_topic)
    rng = random.Random()
    conversations: dict[str, str] = {}  # conversation -> source
    named: dict[str, str] = {}  # conversation -> the display name its metadata gives
    produced = Recorder()
    local = random.Random(1)

    def busy_topic(stop: threading.Event) -> None:
        while not stop.is_set():
            n = len(conversations)
            conversation_id, source = str(uuid.uuid4()), local.choice(SOURCES)
            conversations[conversation_id] = source
            airy.message(conversation_id, source)
            if n % 5 == 0:
                named[conversation_id] = f"Named {n}"
                airy.name(conversation_id, f"Named {n}")
            for old in local.sample(list(conversations), min(3, len(conversations))):  # replies in older ones
                airy.message(old, conversations[old])
            produced.add("messages", 4)
            time.sleep(1 / RATE)
        airy.flush()

    service = spawn(names, instance_id="crash", AUTO_CREATE_ENABLED="true", KAFKA_COMMIT_INTERVAL_MS="100")
    try:
        service.wait_ready()
        ready_after = []
        for cycle in range(CYCLES):
            stop = threading.Event()
            producer = threading.Thread(target=busy_topic, args=(stop,), daemon=True)
            producer.start()
            kill_after(service, lambda: service.metric("contacts_auto_created_total") > 50, rng, (0.2, 1.5))
            time.sleep(rng.uniform(0.2, 1.0))  # the topic keeps filling while the service is down
            stop.set()
            producer.join(60)
            restarted = time.monotonic()
            service.start()
            service.wait_ready()
            ready_after.append(round(time.monotonic() - restarted, 1))
        total = len(conversations)
        wait_for(lambda: len(service.list_all(quiet=False)) >= total, 90, f"a contact for each of {total} conversations")
        wait_for(
            lambda: all(c.get("display_name") == named.get(next(iter(c["conversations"])), c.get("display_name")) for c in service.list_all(quiet=False)),
            60,
            "the metadata names",
        )
        contacts = service.list_all()
        assert len(contacts) == total, f"{len(contacts)} contacts for {total} conversations"
        for contact in contacts:
            ((conversation_id, source),) = contact["conversations"].items()
            assert contact["id"] == model.contact_id_for_conversation(conversation_id)
            assert contact["display_name"] == named.get(conversation_id, model.default_display_name(conversation_id, source))
        indexes = check_served_indexes(service, contacts)
        assert not indexes["problems"], "\n  ".join(indexes["problems"])
        created = collections.Counter(r[2].decode() for r in topic_records(kafka, names.contacts_topic) if r[4].get("operation") == "auto_created")
        twice = {k: v for k, v in created.items() if v > 1}
        assert not twice, f"contacts auto-created more than once: {list(twice.items())[:5]}"
        assert set(created) == {c["id"] for c in contacts}
        rebuilt = assert_equals_a_fresh_rebuild(spawn, names, service, tmp_path)
        figures(
            "kill -9 during auto-create",
            faults=CYCLES,
            messages=produced["messages"],
            conversations=total,
            named=len(named),
            auto_created_records=sum(created.values()),
            lookups=indexes["lookups"],
            records_checked=rebuilt["records_checked"],
            ready_after_restart_s=ready_after,
            lost=0,
        )
    finally:
        delete_topics(kafka, names.messages_topic, names.metadata_topic)


READY_AFTER_CRASH_S = 20.0


def test_a_crashed_service_is_ready_again_soon_after_its_restart(spawn, names, kafka):
    """A pod restarted after a crash serves again within READY_AFTER_CRASH_S: its readiness
    must not wait for the dead process's consumer-group sessions to time out (45 s by default),
    during which Kubernetes would route no request to it."""
    create_topics(kafka, {names.messages_topic: 4, names.metadata_topic: 2})
    try:
        service = spawn(names, instance_id="crash", AUTO_CREATE_ENABLED="true")
        service.wait_ready()
        service.kill()
        restarted = time.monotonic()
        service.start()
        try:
            service.wait_ready(timeout=READY_AFTER_CRASH_S)
        except AssertionError:
            raise AssertionError(
                f"not ready {READY_AFTER_CRASH_S:.0f}s after the restart; health said: {service.health_reasons}"
            ) from None
        figures("ready after a crash", faults=1, ready_after_s=round(time.monotonic() - restarted, 1), reasons=service.health_reasons)
    finally:
        delete_topics(kafka, names.messages_topic, names.metadata_topic)
