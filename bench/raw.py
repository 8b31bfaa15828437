"""The Kafka baselines: what the broker alone costs, measured on the same broker in the same run."""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(brokers: str, name: str, partitions: int, compact: bool = False) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    config = {"cleanup.policy": "compact"} if compact else {}
    try:
        admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(30)
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def delete_topics(brokers: str, names: list[str] = (), prefixes: tuple[str, ...] = ()) -> None:
    """Delete the named topics and every topic that starts with one of the prefixes."""
    admin = AdminClient({"bootstrap.servers": brokers})
    names = set(names)
    if prefixes:
        names |= {t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)}
    if not names:
        return
    for future in admin.delete_topics(sorted(names), operation_timeout=30).values():
        try:
            future.result(30)
        except Exception:
            pass


def produce_all(brokers: str, topic: str, records, headers=None, partition_of=None) -> int:
    """Fill a topic fast (idempotent, batched), outside any measurement. Returns the count."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 20,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4"})
    n = 0
    for key, value in records:
        extra = {"partition": partition_of(key)} if partition_of else {}
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, **extra)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"could not fill {topic}")
    return n


def produce_round_trips(brokers: str, topic: str, value: bytes, count: int, concurrency: int, time_limit: float) -> list[float]:
    """Latencies (s) of a bare `acks=all` idempotent produce + flush, each client its own producer
    (as the service's HTTP threads share none of their waits)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = max(1, count // concurrency)
    producers = [
        Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 1})
        for _ in range(concurrency)
    ]
    for p in producers:  # connect and get the producer id outside the measurement
        p.produce(topic, key=b"warmup", value=value)
        p.flush(30)
    start = threading.Barrier(concurrency)
    deadline = time.perf_counter() + time_limit

    def client(producer: Producer, index: int) -> None:
        start.wait()
        mine = []
        for i in range(per_client):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            producer.produce(topic, key=f"{index}-{i}".encode(), value=value)
            producer.flush(30)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(p, i)) for i, p in enumerate(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def produce_consume_round_trips(brokers: str, topic: str, value: bytes, count: int, concurrency: int, time_limit: float) -> list[float]:
    """Latencies (s) from produce until a read_committed consumer of the same process has the
    record: the Kafka floor of read-your-writes, with the service's client settings (one shared
    idempotent acks=all producer with linger.ms=1, one consumer that polls for the first record
    and drains the rest), without HTTP, locks, decoding or the store."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 1})
    consumer = Consumer({
        "bootstrap.servers": brokers, "group.id": f"bench-floor-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "fetch.wait.max.ms": 100,
    })
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    # From each partition's current end, as an explicit offset: nothing produced from now on is skipped.
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, ends[p]) for p in partitions])
    waiting: dict[bytes, threading.Event] = {}
    stop = threading.Event()

    def poll_producer() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    def read() -> None:
        while not stop.is_set():
            first = consumer.poll(0.05)
            if first is None:
                continue
            for msg in [first] + consumer.consume(1999, 0):
                if msg.error() is None:
                    event = waiting.get(msg.key())
                    if event is not None:
                        event.set()

    threads = [threading.Thread(target=poll_producer, daemon=True), threading.Thread(target=read, daemon=True)]
    for t in threads:
        t.start()
    latencies: list[float] = []
    lock = threading.Lock()

    def one(key: bytes, wait: float = 30) -> float | None:
        event = waiting[key] = threading.Event()
        t0 = time.perf_counter()
        producer.produce(topic, key=key, value=value)
        seen = event.wait(wait)
        del waiting[key]
        return time.perf_counter() - t0 if seen else None

    try:
        # Until the consumer's fetch positions are set, nothing is seen: warm up until one is.
        warm_until = time.perf_counter() + 30
        while one(b"warm-" + uuid.uuid4().hex.encode(), wait=2) is None:
            if time.perf_counter() > warm_until:
                raise RuntimeError(f"a consumer of {topic} never saw what was produced")
        per_client = max(1, count // concurrency)
        deadline = time.perf_counter() + time_limit

        def client(index: int) -> None:
            mine = []
            for i in range(per_client):
                if time.perf_counter() > deadline:
                    break
                latency = one(f"{index}-{i}-{uuid.uuid4().hex[:6]}".encode())
                if latency is not None:
                    mine.append(latency)
            with lock:
                latencies.extend(mine)

        clients = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        consumer.close()
        producer.flush(10)
    return latencies


def transactional_produce(brokers: str, topic: str, batches: list[list[tuple[bytes, bytes]]], headers) -> float:
    """Seconds to write the batches, one Kafka transaction each, as the service's import does
    (acks=all, linger.ms=1, murmur2_random, commit per batch)."""
    producer = Producer({
        "bootstrap.servers": brokers,
        "transactional.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "acks": "all",
        "linger.ms": 1,
        "partitioner": "murmur2_random",
    })
    producer.init_transactions(30)
    producer.begin_transaction()  # warm-up, as the service's producers are warm: not timed
    for key, value in batches[0][:10]:
        producer.produce(topic, key=key, value=value, headers=headers)
    producer.commit_transaction(30)
    started = time.perf_counter()
    for batch in batches:
        producer.begin_transaction()
        for key, value in batch:
            producer.produce(topic, key=key, value=value, headers=headers)
            producer.poll(0)
        producer.commit_transaction(30)
    return time.perf_counter() - started


def consume_all(brokers: str, topic: str, decode=None, timeout: float = 600.0) -> tuple[float, int]:
    """Seconds to read a topic to its end (read_committed, no group), and the records read;
    `decode` runs on each value, as a reader that looks at the records would."""
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 100,
        "queued.min.messages": 20000,
    })
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        ended: set[int] = set()
        count = 0
        deadline = started + timeout
        while len(ended) < len(partitions) and time.perf_counter() < deadline:
            for msg in consumer.consume(2000, 0.05):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        ended.add(msg.partition())
                    continue
                count += 1
                if decode is not None and msg.value() is not None:
                    decode(msg.value())
        return time.perf_counter() - started, count
    finally:
        consumer.close()
