"""The store as the materializer keeps it: resumes without replay, rebuilds byte for byte."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from contacts_streams import store as store_module
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import Store


def write_some(service) -> dict[str, str]:
    """A history with every kind of write; returns contact ids by role."""
    c = service.contacts
    conv = [str(uuid.uuid4()) for _ in range(4)]
    kept = c.create({"display_name": "Kept", "conversations": {conv[0]: "facebook"}})
    source = c.create({"display_name": "Source", "via": {"email": "s@x.org"}, "conversations": {conv[1]: "google"}})
    destination = c.create({"display_name": "Destination", "conversations": {conv[2]: "twilio.sms"}})
    deleted = c.create({"display_name": "Deleted", "conversations": {conv[3]: "facebook"}})
    imported = c.import_([{"display_name": f"Imported {i}"} for i in range(25)])
    c.update(kept["id"], {"title": "Updated", "via": {"phone": "+1"}})
    c.merge(source["id"], destination["id"])
    c.delete(deleted["id"])
    return {"kept": kept["id"], "source": source["id"], "destination": destination["id"], "deleted": deleted["id"], "imported": imported[0]["id"]}


def snapshot(path: Path) -> dict[str, dict[bytes, bytes]]:
    """Every column family the contacts topic determines, as raw bytes."""
    store = Store(path, ContactCodec())
    try:
        return {family: dict(store._cf[family].items()) for family in store_module.TOPIC_STATE}
    finally:
        store.close()


def test_every_record_names_its_operation(service, kafka):
    ids = write_some(service)
    topic = service.config.contacts_topic
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": str(uuid.uuid4()), "isolation.level": "read_committed", "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, ended, deadline = [], set(), time.monotonic() + 30
    while len(ended) < len(partitions):
        assert time.monotonic() < deadline, f"could not read {topic} to its end in 30 s"
        for msg in consumer.consume(500, 1):
            if msg.error():
                ended.add(msg.partition())
            else:
                records.append((msg.key().decode(), dict(msg.headers() or []), msg.value()))
    consumer.close()
    operations = [h["operation"].decode() for _, h, _ in records]
    assert sorted(set(operations)) == ["created", "deleted", "imported", "merged", "merged_away", "updated"]
    assert operations.count("imported") == 25
    merged_away = [(k, h, v) for k, h, v in records if h["operation"] == b"merged_away"]
    assert merged_away == [(ids["source"], {"operation": b"merged_away", "merged_into": ids["destination"].encode()}, None)]
    merged = [h for k, h, _ in records if h["operation"] == b"merged"]
    assert merged == [{"operation": b"merged", "merged_from": ids["source"].encode(), "identities": b'[2,[["email","s@x.org"]],[["e","s@x.org"],["w","destination"],["w","s"]]]'}]
    # every contact record carries its identities and search tokens, so no store parses phone
    # numbers or splits words again
    assert all(h.get("identities", b"").startswith(b"[2,[") for _k, h, v in records if v is not None)
    assert [v for k, h, v in records if h["operation"] == b"deleted"] == [None]


def test_a_restart_resumes_from_stored_offsets_without_replaying(make_config, start_service):
    config = make_config()
    first = start_service(config)
    write_some(first)
    first.close()

    second = start_service(config)
    assert second.materializer.applied_since_start == 0  # nothing replayed
    assert second.store.count() == 27  # 4 created + 25 imported - merged away - deleted
    second.contacts.create({"display_name": "After restart"})
    assert second.materializer.applied_since_start == 1
    second.close()


def test_a_deleted_state_folder_is_rebuilt_to_identical_contents(make_config, start_service, tmp_path):
    config = make_config()
    service = start_service(config)
    ids = write_some(service)
    service.close()
    before = snapshot(Path(config.state_dir))
    assert before["merged"] == {ids["source"].encode() + b"\x00" + ids["destination"].encode() + b"\x00h": b"", ids["source"].encode() + b"\x00" + ids["destination"].encode() + b"\x00t": b""}

    shutil.rmtree(config.state_dir)
    rebuilt = start_service(config)
    assert rebuilt.materializer.applied_since_start > 0
    assert rebuilt.contacts.info(ids["kept"])["title"] == "Updated"
    rebuilt.close()
    assert snapshot(Path(config.state_dir)) == before


def test_a_store_ahead_of_its_topic_is_rebuilt(make_config, start_service, kafka):
    """The topic is deleted and made again (empty): the stored offsets lie beyond its end."""
    config = make_config()
    service = start_service(config)
    write_some(service)
    service.close()
    admin = AdminClient({"bootstrap.servers": kafka})
    for future in admin.delete_topics([config.contacts_topic], operation_timeout=30).values():
        future.result(30)

    def recreated() -> bool:
        try:
            for future in admin.create_topics([NewTopic(config.contacts_topic, 3, 1, config={"cleanup.policy": "compact"})]).values():
                future.result(30)
            return True
        except KafkaException as err:
            if err.args[0].code() in (KafkaError.TOPIC_ALREADY_EXISTS, KafkaError.UNKNOWN_TOPIC_OR_PART):
                return False  # the deletion is still under way
            raise

    deadline = time.monotonic() + 60
    while not recreated():
        assert time.monotonic() < deadline, "the topic could not be made again"
        time.sleep(0.2)
    rebuilt = start_service(config)
    assert rebuilt.materializer.rebuild_reason is not None
    assert rebuilt.materializer.rebuild_reason.startswith("ahead of the topic"), rebuilt.materializer.rebuild_reason
    assert rebuilt.store.count() == 0
    assert rebuilt.contacts.list(None, 20).contacts == []


def test_a_store_catches_up_while_its_topic_is_written_without_a_pause(make_config, kafka):
    """A partition written without a pause never shows an end-of-partition event (every fetch
    finds new committed records before its wait is over); reading up to the committed end seen
    at start is being caught up (a restarted replica under steady writes once stayed 503)."""
    import threading

    from confluent_kafka import Producer

    from contacts_streams.materializer import Materializer
    from contacts_streams.metrics import Metrics
    from contacts_streams.topics import ensure_topics

    config = make_config()
    ensure_topics(config)
    codec = ContactCodec()
    contact_id = str(uuid.uuid4())
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"steady-{uuid.uuid4()}", "linger.ms": 0})
    producer.init_transactions()
    stop = threading.Event()
    written = []

    def write_steadily():
        n = 0
        while not stop.is_set():
            producer.begin_transaction()
            value = codec.encode_contact({"id": contact_id, "display_name": f"steady {n}", "created_at": "2026-11-30T10:00:00.000Z"})
            producer.produce(config.contacts_topic, key=contact_id.encode(), value=value, headers=[("operation", b"updated")])
            producer.commit_transaction()
            written.append(n)
            n += 1
            time.sleep(0.005)

    writer = threading.Thread(target=write_steadily, daemon=True)
    writer.start()
    store = Store(Path(config.state_dir), codec)
    materializer = Materializer(config, store, Metrics())
    try:
        deadline = time.monotonic() + 30
        while len(written) < 50:
            assert time.monotonic() < deadline, "the steady writer did not get going"
            time.sleep(0.05)
        materializer.start()
        deadline = time.monotonic() + 30
        while not materializer.ready:
            assert time.monotonic() < deadline, f"never caught up under steady writes: {materializer.status()}"
            time.sleep(0.05)
        assert writer.is_alive()  # it caught up while the writes went on, not after they stopped
    finally:
        stop.set()
        writer.join(10)
        materializer.stop()
        producer.flush(10)
        store.close()


def test_the_events_materializer_applies_nothing_before_the_contacts_store_is_ready(make_config, start_service, tmp_path):
    """A cold rebuild of both: the events (history) part, which readiness does not wait for,
    starts only once the contacts part is ready, so the two do not share one interpreter lock
    while the service is not ready; then it catches up as before."""
    from contacts_streams.materializer import Materializer
    from contacts_streams.metrics import Metrics

    config = make_config()
    service = start_service(config)
    ids = write_some(service)
    service.close()

    store = Store(tmp_path / "rebuilt", ContactCodec())
    metrics = Metrics()
    contacts = Materializer(config, store, metrics)
    events = Materializer(config, store, metrics, topic=config.events_topic, target=store.history, name="events materializer", after=contacts)
    contacts_ready_at_apply: list[bool] = []
    apply_events = store.history.apply

    def recording_apply(*args, **kwargs):
        contacts_ready_at_apply.append(contacts.ready)
        return apply_events(*args, **kwargs)

    store.history.apply = recording_apply  # type: ignore[method-assign]
    try:
        events.start()
        deadline = time.monotonic() + 30
        while "connecting" in events.status():
            assert time.monotonic() < deadline, f"the events materializer never got its partitions: {events.status()}"
            time.sleep(0.02)
        contacts.start()
        assert contacts.wait_ready(30), contacts.status()
        assert events.wait_ready(30), events.status()
        assert contacts_ready_at_apply and all(contacts_ready_at_apply)
        assert store.history.page(ids["kept"], None, 10).events
    finally:
        events.stop()
        contacts.stop()
        store.close()


def test_each_waiter_wakes_when_its_own_record_is_in_the_store(make_config, kafka):
    """Every write's HTTP thread waits for its record: a waiter returns once its own record is
    applied (and can read it), one for a record never written times out, and many waiters on
    different records all get their answer."""
    import threading

    from confluent_kafka import Producer

    from contacts_streams.materializer import Materializer
    from contacts_streams.metrics import Metrics
    from contacts_streams.topics import ensure_topics

    config = make_config(contacts_partitions=1)
    ensure_topics(config)
    codec = ContactCodec()
    store = Store(Path(config.state_dir), codec)
    materializer = Materializer(config, store, Metrics())
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"waiters-{uuid.uuid4()}", "linger.ms": 0})
    producer.init_transactions()
    try:
        materializer.start()
        assert materializer.wait_ready(30), materializer.status()
        ids = [str(uuid.uuid4()) for _ in range(12)]
        offsets: dict[str, int] = {}
        seen: dict[str, object] = {}

        def wait_then_read(contact_id: str) -> None:
            while contact_id not in offsets:  # the offset is known once its transaction committed
                time.sleep(0.001)
            ok = materializer.wait_applied({0: offsets[contact_id]}, 30)
            seen[contact_id] = store.get(contact_id) if ok else None

        threads = [threading.Thread(target=wait_then_read, args=(i,), daemon=True) for i in ids]
        for t in threads:
            t.start()
        for n, contact_id in enumerate(ids):
            placed = []
            producer.begin_transaction()
            value = codec.encode_contact({"id": contact_id, "display_name": f"waited {n}", "created_at": "2026-11-30T10:00:00.000Z"})
            producer.produce(config.contacts_topic, key=contact_id.encode(), value=value, headers=[("operation", b"created")],
                             on_delivery=lambda err, msg: placed.append(msg.offset()))
            producer.commit_transaction()
            offsets[contact_id] = placed[0]
        for t in threads:
            t.join(40)
        assert {i: (seen[i] or {}).get("display_name") for i in ids} == {i: f"waited {n}" for n, i in enumerate(ids)}
        # Past every offset written: nothing wakes it but its deadline.
        started = time.monotonic()
        assert materializer.wait_applied({0: max(offsets.values()) + 10}, 0.3) is False
        assert time.monotonic() - started >= 0.3
    finally:
        materializer.stop()
        producer.flush(10)
        store.close()
