"""The command, reply, idempotency and position formats round-trip and refuse what is not theirs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contacts_streams import commands
from contacts_streams.commands import BadCommand, BadPosition, Command, Idempotency, Remembered, Reply


def test_a_command_round_trips_with_everything_it_carries():
    cmd = Command.new(commands.UPDATE, {"id": "x", "changes": {"title": "ü"}}, sender="r1", deadline_ms=5, actor="sub-1",
                      idempotency=Idempotency("sub-1", "/contacts.update", "k", "h"))
    assert Command.decode(cmd.encode()) == cmd


@pytest.mark.parametrize("raw", [None, b"", b"{", b"[]", b'{"v":1}', b'{"v":1,"id":"a","type":"nope","payload":{}}',
                                 b'{"v":2,"id":"a","type":"create","payload":{}}', b'{"v":1,"id":"a","type":"create","payload":[]}',
                                 b"\xff\xfe", b"[" * 100000])
def test_anything_else_is_a_bad_command(raw):
    with pytest.raises(BadCommand):
        Command.decode(raw)


def test_reply_and_remembered_round_trip():
    reply = Reply(404, [], {"message": "m", "merged_into": "d"}, {})
    assert Reply.decode(reply.encode()) == reply
    reply = Reply(201, ["a", "b"], None, {0: 5, 7: 9})
    assert Reply.decode(reply.encode()) == reply
    reply = Reply(202, ["a", "b"], None, {}, {0: 3})
    assert Reply.decode(reply.encode()) == reply
    entry = Remembered(201, ["a"], None, {3: 4}, "hash", 123)
    assert Remembered.decode(entry.encode()) == entry and entry.reply() == Reply(201, ["a"], None, {3: 4})


def test_body_hash_ignores_spacing_and_key_order_but_not_values_or_endpoint():
    assert commands.body_hash("/c", {"a": 1, "b": [1, 2]}) == commands.body_hash("/c", {"b": [1, 2], "a": 1})
    assert commands.body_hash("/c", {"a": 1}) != commands.body_hash("/c", {"a": 2})
    assert commands.body_hash("/c", {"a": 1}) != commands.body_hash("/d", {"a": 1})


@given(st.dictionaries(st.integers(0, 10_000), st.integers(0, 2**62), max_size=50))
def test_positions_round_trip(offsets):
    assert commands.decode_position(commands.encode_position(offsets)) == offsets


@pytest.mark.parametrize("token", ["", "abc", "p1.!!!", "p1." + "A" * 5000, "p2.MDox", "p1.MDp4", "p1.LTE6Mg"])
def test_a_foreign_position_token_is_refused(token):
    with pytest.raises(BadPosition):
        commands.decode_position(token)
