"""One way to read a batch from a consumer without waiting for nothing."""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def poll_batch(consumer: Consumer, max_records: int, timeout: float) -> list[Message]:
    """What is there, up to ``max_records``, once the first record (or event) arrives within
    ``timeout``; else nothing. ``consume(n, timeout)`` waits out the whole timeout unless all n
    arrive, which made a single write wait for it: wait for the first, then take what is fetched."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
