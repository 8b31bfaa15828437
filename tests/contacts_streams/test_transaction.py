"""The transaction helper on the real broker: what `then` adds commits with what it was told
about, a producer opened under the same transactional id fences the earlier one (the writer's
takeover), and a record the broker refuses aborts the whole transaction."""

from __future__ import annotations

import threading

import pytest
from streamkit import read_records, read_topic

from contacts_streams.metrics import Metrics
from contacts_streams.transaction import Produced, Restart, Transactions, Unprocessable


def transactions(config, unreported: frozenset[str] = frozenset()) -> Transactions:
    return Transactions(
        config, Metrics(), "test", f"{config.application_id}-tx", lambda: {"linger.ms": 1}, threading.Event(), unreported
    )


def test_then_is_told_where_each_record_landed_and_its_records_commit_with_them(make_config, new_topic, kafka):
    config = make_config()
    data, replies = new_topic("data", partitions=3), new_topic("replies")
    tx = transactions(config, unreported=frozenset({replies}))
    tx.open()
    records = [Produced(data, f"k{i}".encode(), f"v{i}".encode(), []) for i in range(20)]
    told = []

    def then(placed):
        told.extend(placed)
        return [Produced(replies, b"r", repr(placed).encode(), [])]

    positions = tx.commit(None, {}, records, then)
    landed = {(p, o): (key, value) for p, o, key, value, _h in read_records(kafka, data)}
    assert [landed[(partition, offset)] for _t, partition, offset in told] == [(r.key, r.value) for r in records]
    assert positions == {(data, p): max(o for _t, q, o in told if q == p) for p in {q for _t, q, _o in told}}
    assert [value for _k, value, _h in read_topic(kafka, replies)] == [repr(told).encode()]


def test_a_producer_opened_under_the_same_id_fences_the_earlier_one(make_config, new_topic, kafka):
    config = make_config()
    data = new_topic("data")
    old, new = transactions(config), transactions(config)
    old.open()
    old.commit(None, {}, [Produced(data, b"k", b"before", [])])
    new.open()
    with pytest.raises(Restart) as raised:
        old.commit(None, {}, [Produced(data, b"k", b"from the fenced one", [])])
    assert raised.value.rejoin and raised.value.replace_producer
    new.commit(None, {}, [Produced(data, b"k", b"after", [])])
    assert [value for _k, value, _h in read_topic(kafka, data)] == [b"before", b"after"]


def test_a_refused_record_aborts_the_whole_transaction_and_is_named(make_config, new_topic, kafka):
    config = make_config()
    data = new_topic("data")
    tx = transactions(config)
    tx.open()
    batch = [Produced(data, b"a", b"small", []), Produced(data, b"b", b"x" * 2_000_000, []), Produced(data, b"c", b"small", [])]
    with pytest.raises(Unprocessable, match="refused"):
        tx.commit(None, {}, batch, then=lambda placed: [])
    tx.commit(None, {}, [Produced(data, b"d", b"next", [])])  # the same producer goes on
    assert [value for _k, value, _h in read_topic(kafka, data)] == [b"next"]
