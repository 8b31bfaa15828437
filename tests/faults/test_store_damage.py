"""Store damage: the RocksDB store is lost, corrupt, without offsets or ahead of its topic.

Each time the service must notice, rebuild from the contacts topic, say "not ready" (503 on
/actuator/health) until the rebuild is complete, and end byte for byte where it was: every
contact's bytes, the name index and the counters equal the healthy store it had before the damage.

The conversation and merged-away indexes of a rebuilt store are checked once, on their own, by
``test_a_rebuilt_store_finds_every_conversation_and_merged_away_contact`` (the deleted-folder
case), so that one cause fails one test.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from contacts_streams import model

from faultkit import (
    SCALE,
    Names,
    ServiceProcess,
    check_served_indexes,
    figures,
    new_service,
    read_store,
    store_differences,
    topic_records,
    wait_for,
)

DATA_FAMILIES = ("contacts", "names", "counters")
INDEX_FAMILIES = ("conversations", "merged")
SOURCES = ["facebook", "twilio.sms", "google", "chatplugin", "viber"]


def populate(service: ServiceProcess, contacts: int, seed: int = 7) -> dict:
    """Imports, creates, updates, deletes and merges (chains included) through the HTTP API."""
    rng = random.Random(seed)
    ids: list[str] = []
    payloads = []
    for i in range(contacts):
        conversations = {str(uuid.uuid4()): SOURCES[(i + j) % len(SOURCES)] for j in range(1 + i % 2)}
        payloads.append(
            {
                "display_name": f"Person {i:05d}" if i % 11 else "",
                "via": {"email": f"p{i}@example.org", "phone": f"+49{i:09d}"},
                "conversations": conversations,
                "metadata": {"n": i, "tags": {"vip": i % 5 == 0}},
                "timezone": (i % 25) - 12,
            }
        )
    for start in range(0, len(payloads), 100):
        answer = service.post("/contacts.import", payloads[start : start + 100])
        assert answer.status_code == 201, answer.text
        ids += [c["id"] for c in answer.json()["data"]]
    for i in range(max(5, contacts // 20)):
        answer = service.post("/contacts.create", {"display_name": f"Created {i}", "conversations": {str(uuid.uuid4()): "facebook"}})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    rng.shuffle(ids)
    updated = ids[: len(ids) // 5]
    for n, contact_id in enumerate(updated):
        changes = {"id": contact_id, "title": f"Title {n}", "via": {"extra": str(n)}}
        if n % 3 == 0:
            changes["display_name"] = f"Renamed {n:04d}"
        if n % 4 == 0:
            changes["conversations"] = {str(uuid.uuid4()): "google"}
        assert service.post("/contacts.update", changes).status_code == 202
    deleted = ids[len(ids) // 5 : len(ids) // 5 + len(ids) // 25]
    for contact_id in deleted:
        assert service.post("/contacts.delete", {"id": contact_id}).status_code == 202
    live = ids[len(ids) // 5 + len(ids) // 25 :]
    merges = 0
    # Chains: c into b, then b into a (b's record then carries c's conversations and history).
    for k in range(0, min(len(live) - 3, 3 * max(10, contacts // 25)), 3):
        a, b, c = live[k : k + 3]
        for source, destination in ((c, b), (b, a)):
            answer = service.post("/contacts.merge", {"source_id": source, "destination_id": destination})
            assert answer.status_code == 200, answer.text
            merges += 1
    return {"ids": len(ids), "updates": len(updated), "deletes": len(deleted), "merges": merges}


@pytest.fixture(scope="module")
def healthy(kafka, tmp_path_factory):
    """A populated contacts topic and the healthy store a service built from it (then stopped)."""
    names = Names(kafka, f"dmg{uuid.uuid4().hex[:10]}")
    root = tmp_path_factory.mktemp("damage")
    service = new_service(names, root / "healthy", root, "healthy")
    try:
        service.wait_ready()
        stats = populate(service, 240 * SCALE)
        stats["live"] = len(service.list_all())
        assert service.stop() == 0
    finally:
        if service.running():
            service.kill()
    reference = read_store(root / "healthy")
    assert len(reference["contacts"]) == stats["live"]
    yield {"names": names, "root": root, "store": reference, "stats": stats}
    AdminClient({"bootstrap.servers": kafka}).delete_topics([names.contacts_topic])


def copy_of_healthy(healthy, tmp_path: Path) -> Path:
    target = tmp_path / "state"
    shutil.copytree(healthy["root"] / "healthy", target)
    return target


def restart_and_compare(spawn, healthy, state: Path, instance: str, families=DATA_FAMILIES, names: Names | None = None, lookups: bool = False) -> dict:
    """Start a service on the damaged store, watch its health from the first moment, and
    compare what it serves once ready, and its store after a clean stop, with the healthy one."""
    started = time.monotonic()
    service = spawn(names or healthy["names"], state_dir=state, instance_id=instance)
    seen = service.wait_ready()
    ready_after = time.monotonic() - started
    # Ready means rebuilt: the very first answers after readiness already hold everything.
    try:
        served = service.list_all()
    except AssertionError as err:
        raise AssertionError(
            f"the service said ready (health {seen}, rebuilds counted: {service.metric('contacts_store_rebuilds_total')}) "
            f"but cannot serve its store: {err}"
        ) from None
    rebuilds = service.metric("contacts_store_rebuilds_total")
    served_indexes = check_served_indexes(service, served) if lookups else {"problems": [], "lookups": 0}
    assert service.stop() == 0
    assert 200 not in seen[:-1], f"health said ready before the rebuild was done: {seen}"
    assert len(served) == healthy["stats"]["live"], f"ready with {len(served)} of {healthy['stats']['live']} contacts"
    problems = store_differences(read_store(state), healthy["store"], families, labels=("rebuilt", "before"))
    problems += served_indexes["problems"]
    assert not problems, "the rebuilt store differs from the healthy one:\n  " + "\n  ".join(problems)
    checked = sum(len(healthy["store"][f]) for f in families)
    return {"health": seen, "ready_s": round(ready_after, 1), "rebuilds": rebuilds, "records_checked": checked, "lookups": served_indexes["lookups"]}


def test_a_deleted_state_folder_is_rebuilt_from_the_topic(spawn, healthy, tmp_path):
    state = tmp_path / "gone"  # never there: as after `rm -rf state`
    result = restart_and_compare(spawn, healthy, state, "deleted")
    assert 503 in result["health"], f"not-ready was never reported while rebuilding: {result['health']}"
    figures("deleted state folder", faults=1, **result, lost=0)


def test_a_rebuilt_store_finds_every_conversation_and_merged_away_contact(spawn, healthy, tmp_path):
    """After a rebuild, /contacts.info {conversation_id} finds the contact of every conversation
    and every merged-away id answers 404 with merged_into, as before the store was lost.

    The topic holds merges (and merges of merges) whose destination record and source tombstone
    sit on different partitions; a rebuild reads partition after partition, so it meets them in
    another order than the live store did, and must still end in the same indexes."""
    state = tmp_path / "gone"
    result = restart_and_compare(spawn, healthy, state, "reindexed", families=DATA_FAMILIES + INDEX_FAMILIES, lookups=True)
    figures("rebuilt indexes", faults=1, **result, lost=0)


def _flush_to_sst(state: Path) -> None:
    """Flush every column family, so the store has table files (not only a write-ahead log)."""
    from contacts_streams.store import FAMILIES
    from rocksdict import Options, Rdict

    db = Rdict(str(state), options=Options(raw_mode=True), column_families={f: Options(raw_mode=True) for f in FAMILIES})
    try:
        for family in FAMILIES:
            cf = db.get_column_family(family)
            cf.flush()
            del cf
        db.flush()
    finally:
        db.close()


def _overwrite(path: Path, at: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    at = max(0, min(at, len(data) - length))
    data[at : at + length] = bytes(random.Random(at).getrandbits(8) for _ in range(min(length, len(data) - at)))
    path.write_bytes(bytes(data))


def _corrupt(state: Path, kind: str) -> str:
    if kind == "CURRENT":
        (state / "CURRENT").write_text("MANIFEST-999999\n")
        return "CURRENT names a manifest that is not there"
    if kind == "MANIFEST":
        manifest = state / (state / "CURRENT").read_text().strip()
        _overwrite(manifest, 0, 64)
        return f"first 64 bytes of {manifest.name} overwritten"
    if kind == "sst":
        _flush_to_sst(state)
        tables = sorted(state.glob("*.sst"), key=lambda p: p.stat().st_size)
        assert tables, "no table file after a flush"
        # The contacts family holds the largest table: hit its data blocks, not its footer.
        table = tables[-1]
        _overwrite(table, table.stat().st_size // 3, 512)
        return f"512 bytes inside the data blocks of {table.name} ({table.stat().st_size} bytes) overwritten"
    if kind == "sst-missing":
        _flush_to_sst(state)
        table = sorted(state.glob("*.sst"), key=lambda p: p.stat().st_size)[-1]
        table.unlink()
        return f"{table.name} deleted"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["CURRENT", "MANIFEST", "sst", "sst-missing"])
def test_a_corrupt_store_is_noticed_and_rebuilt(spawn, healthy, tmp_path, kind):
    state = copy_of_healthy(healthy, tmp_path)
    what = _corrupt(state, kind)
    result = restart_and_compare(spawn, healthy, state, f"corrupt-{kind.lower()}")
    assert result["rebuilds"] >= 1, f"{what}: no rebuild was counted"
    figures(f"corrupt store ({what})", faults=1, **result, lost=0)


def test_a_store_without_offsets_is_rebuilt(spawn, healthy, tmp_path):
    from contacts_streams.store import FAMILIES, OFFSETS
    from rocksdict import Options, Rdict

    state = copy_of_healthy(healthy, tmp_path)
    db = Rdict(str(state), options=Options(raw_mode=True), column_families={f: Options(raw_mode=True) for f in FAMILIES})
    offsets = db.get_column_family(OFFSETS)
    removed = list(offsets.keys())
    for key in removed:
        del offsets[key]
    del offsets
    db.close()
    assert removed
    result = restart_and_compare(spawn, healthy, state, "no-offsets")
    assert result["rebuilds"] >= 1, "a store with contacts but no offsets was not rebuilt"
    figures("offsets removed", faults=len(removed), **result, lost=0)


def test_stored_offsets_beyond_the_end_of_the_topic_rebuild_the_store(spawn, healthy, tmp_path):
    from contacts_streams.store import FAMILIES, OFFSETS
    from rocksdict import Options, Rdict

    state = copy_of_healthy(healthy, tmp_path)
    db = Rdict(str(state), options=Options(raw_mode=True), column_families={f: Options(raw_mode=True) for f in FAMILIES})
    offsets = db.get_column_family(OFFSETS)
    for key, value in list(offsets.items()):
        offsets[key] = (int.from_bytes(value, "big") + 1000).to_bytes(8, "big")
    del offsets
    db.close()
    result = restart_and_compare(spawn, healthy, state, "ahead")
    assert result["rebuilds"] >= 1, "offsets beyond the topic's end did not rebuild the store"
    figures("offsets beyond the end", faults=1, **result, lost=0)


def _recreate(admin: AdminClient, topic: str, partitions: int) -> None:
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)

    def created() -> bool:
        try:
            for future in admin.create_topics([NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})]).values():
                future.result(30)
            return True
        except KafkaException as err:
            if err.args[0].code() in (KafkaError.TOPIC_ALREADY_EXISTS, KafkaError.UNKNOWN_TOPIC_OR_PART):
                return False
            raise

    wait_for(created, 60, f"{topic} to be created again")


def _copy(kafka: str, records, topic: str) -> None:
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "linger.ms": 5})
    for partition, _offset, key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=list(headers.items()), partition=partition)
    assert producer.flush(30) == 0


def test_a_recreated_shorter_topic_rebuilds_the_store(spawn, healthy, tmp_path, kafka):
    """The topic is deleted and made again with fewer records (its compacted form: the last
    record of each key), so the stored offsets lie beyond its end."""
    admin = AdminClient({"bootstrap.servers": kafka})
    names = Names(kafka, f"{healthy['names'].prefix}r{uuid.uuid4().hex[:4]}")
    source = topic_records(kafka, healthy["names"].contacts_topic)
    partitions = len({p for p, *_ in source} | set(range(6)))
    for future in admin.create_topics([NewTopic(names.contacts_topic, partitions, 1, config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    try:
        _copy(kafka, source, names.contacts_topic)
        state = tmp_path / "state"
        first = spawn(names, state_dir=state, instance_id="copy")
        first.wait_ready()
        assert len(first.list_all()) == healthy["stats"]["live"]
        assert first.stop() == 0

        latest = {}
        for record in source:
            latest[record[2]] = record
        compacted = sorted(latest.values(), key=lambda r: (r[0], r[1]))
        _recreate(admin, names.contacts_topic, partitions)
        _copy(kafka, compacted, names.contacts_topic)
        result = restart_and_compare(spawn, healthy, state, "recreated", names=names)
        assert result["rebuilds"] >= 1, "a store ahead of the recreated topic was not rebuilt"
        figures("topic recreated shorter", faults=1, records_before=len(source), records_after=len(compacted), **result, lost=0)
    finally:
        admin.delete_topics([names.contacts_topic])


def test_a_second_process_on_the_same_state_folder_leaves_the_first_ones_store_alone(spawn, healthy, tmp_path):
    """Two processes on one STATE_DIR (a misconfigured second replica, a pod started before the
    old one died): the store is locked by the first; the second must not treat the lock as
    corruption and delete the first one's store."""
    state = copy_of_healthy(healthy, tmp_path)
    first = spawn(healthy["names"], state_dir=state, instance_id="owner")
    first.wait_ready()
    files_before = {p.name for p in state.iterdir()}
    second = spawn(healthy["names"], state_dir=state, instance_id="intruder")
    try:
        second.wait_ready(timeout=30)
    except AssertionError:
        pass  # refusing to start (or staying not ready) is a fine answer
    time.sleep(1)
    files_after = {p.name for p in state.iterdir()} if state.exists() else set()
    second.kill()
    gone = sorted(files_before - files_after)
    figures("second process on the same store", faults=1, files_before=len(files_before), files_deleted=len(gone))
    assert not gone, f"the second process deleted the running first process's store files: {gone}"
    # The first one still serves everything, and still does after a restart on its folder.
    assert len(first.list_all()) == healthy["stats"]["live"]
    assert first.stop() == 0
    problems = store_differences(read_store(state), healthy["store"], DATA_FAMILIES)
    assert not problems, "the first process's store changed:\n  " + "\n  ".join(problems)


def test_the_store_indexes_do_not_depend_on_the_order_in_which_partitions_are_read(tmp_path):
    """The deterministic core of the rebuild case above, on the real Store without Kafka.

    c is merged into b, then b into a; each contact's records sit on its own partition (as the
    murmur2 partitioner spreads ids). A rebuild reads partition after partition, in any order,
    and must end where the live store (which read the records in the order they were written)
    did: every conversation findable under a, every merged-away id pointing (through its chain)
    to a."""
    import itertools

    from contacts_streams.serialization import ContactCodec
    from contacts_streams.store import Record, Store

    codec = ContactCodec()

    def record(partition: int, offset: int, contact: dict | None, contact_id: str, **headers) -> Record:
        value = codec.encode_contact(contact) if contact is not None else None
        return Record(partition, offset, contact_id.encode(), value, headers)

    a, b, c = (
        model.new_contact({"display_name": name, "conversations": {str(uuid.uuid4()): "facebook"}}, str(uuid.uuid4()), 1)
        for name in "abc"
    )
    b2 = model.merge_contacts(b, c, 2)
    a3 = model.merge_contacts(a, b2, 3)
    partitions = {
        0: [record(0, 0, a, a["id"]), record(0, 1, a3, a["id"], operation="merged")],
        1: [record(1, 0, b, b["id"]), record(1, 1, b2, b["id"], operation="merged"), record(1, 2, None, b["id"], operation="merged_away", merged_into=a["id"])],
        2: [record(2, 0, c, c["id"]), record(2, 1, None, c["id"], operation="merged_away", merged_into=b["id"])],
    }
    written = [partitions[0][0], partitions[1][0], partitions[2][0], partitions[1][1], partitions[2][1], partitions[0][1], partitions[1][2]]
    orders = {"as written": written}
    for permutation in itertools.permutations(partitions):
        orders["partitions " + ", ".join(map(str, permutation))] = [r for p in permutation for r in partitions[p]]

    wrong = []
    for name, records in orders.items():
        store = Store(tmp_path / name.replace(" ", "_").replace(",", ""), codec)
        try:
            store.apply("contacts", records)
            for contact in (a, b, c):
                (conversation_id,) = contact["conversations"]
                holder = store.contact_id_for_conversation(conversation_id)
                if holder != a["id"]:
                    wrong.append(f"{name}: {contact['display_name']}'s conversation -> {holder and {a['id']: 'a', b['id']: 'b', c['id']: 'c'}.get(holder, holder)}")
            for contact in (b, c):
                if store.merged_into(contact["id"]) != a["id"]:
                    wrong.append(f"{name}: {contact['display_name']} merged_into -> {store.merged_into(contact['id'])}")
        finally:
            store.close()
    figures("store indexes by partition order", orders=len(orders), wrong=len(wrong))
    assert not wrong, "the indexes depend on the order partitions are read in:\n  " + "\n  ".join(wrong)
