"""The demo's data: deterministic with a seed, realistic, and encodable as the platform's records."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from contacts_dev.demo import AVATAR_URL, DISPLAY_NAME, SOURCES, make_plan
from contacts_streams import model
from contacts_streams.serialization import message_codec, metadata_codec

NOW = 1_790_000_000_000


def test_the_same_seed_gives_the_same_demo_and_another_seed_new_conversations():
    first, again, other = make_plan(7, 120, NOW), make_plan(7, 120, NOW), make_plan(8, 120, NOW)
    assert first == again
    assert list(first.stream()) == list(again.stream())
    assert not {c.id for c in first.conversations} & {c.id for c in other.conversations}
    # Only the times move with the clock: the ids, names and people stay.
    later = make_plan(7, 120, NOW + 3_600_000)
    assert [(c.id, c.name, c.source) for c in later.conversations] == [(c.id, c.name, c.source) for c in first.conversations]
    assert later.people == first.people


def test_a_few_hundred_conversations_look_like_the_platforms():
    plan = make_plan(1, 300, NOW)
    conversations = plan.conversations
    assert len(conversations) == 300 and len({c.id for c in conversations}) == 300
    assert set(Counter(c.source for c in conversations)) == set(SOURCES)
    assert all(1 <= len(c.messages) <= 6 for c in conversations)
    assert sum(len(c.messages) for c in conversations) > 2 * len(conversations)  # several messages each
    named = [c for c in conversations if c.name]
    assert 0.4 * 300 < len(named) < 0.9 * 300  # some named, some keeping Airy's default name
    assert any(c.metadata_first for c in named) and any(not c.metadata_first for c in named)
    assert any(c.avatar_url for c in conversations)
    # Some people write on two channels: one name, two sources.
    sources_by_name = defaultdict(set)
    for c in named:
        sources_by_name[c.name].add(c.source)
    assert any(len(sources) > 1 for sources in sources_by_name.values())
    for c in conversations:
        assert c.expected_name == (c.name or model.default_display_name(c.id, c.source))
        assert [m.sent_at for m in c.messages] == sorted(m.sent_at for m in c.messages)
        assert all(m.sent_at < NOW for m in c.messages)


def test_the_stream_is_in_time_order_and_names_arrive_before_or_after_the_first_message():
    plan = make_plan(3, 80, NOW)
    events = list(plan.stream())
    assert [at for at, _, _ in events] == sorted(at for at, _, _ in events)
    position = {}
    for index, (_, kind, record) in enumerate(events):
        if kind == "message":
            position.setdefault(("message", record["conversationId"]), index)
        else:
            position[(record["key"], record["subject"].removeprefix("conversation:"))] = index
    for c in plan.conversations:
        if c.name:
            before = position[(DISPLAY_NAME, c.id)] < position[("message", c.id)]
            assert before == c.metadata_first
        if c.avatar_url:
            assert (AVATAR_URL, c.id) in position
    counts = Counter(kind for _, kind, _ in events)
    assert counts["message"] == sum(len(c.messages) for c in plan.conversations)
    assert counts["metadata"] == sum(bool(c.name) + bool(c.avatar_url) for c in plan.conversations)


def test_every_record_fits_the_platforms_schemas():
    messages, metadata = message_codec(), metadata_codec()
    for _, kind, record in make_plan(5, 40, NOW).stream():
        codec = messages if kind == "message" else metadata
        assert codec.decode(codec.encode(record)) == record


def _email(value: str) -> str:
    return value.strip().casefold()


def _phone(value: str) -> str:
    return re.sub(r"\D", "", value)


def test_the_crm_people_come_in_groups_sharing_an_email_or_a_phone():
    plan = make_plan(11, 200, NOW, duplicate_groups=6)
    people = plan.people
    assert all(model.validate_create(p) is not None for p in people)
    assert all("conversations" not in p for p in people)  # people of the CRM, not of a channel
    by_identity = defaultdict(list)
    for index, person in enumerate(people):
        via = person["via"]
        if "email" in via:
            by_identity["email", _email(via["email"])].append(index)
        if "phone" in via:
            by_identity["phone", _phone(via["phone"])].append(index)
    shared = {key: group for key, group in by_identity.items() if len(group) > 1}
    # Each group is one person: every member shares an identity with another member.
    assert len({frozenset(group) for group in shared.values()}) >= 6
    assert all(any(i in group for group in shared.values()) for i in range(len(people)))
    # Some written differently from each other, so only a normalized match finds them.
    assert any(len({people[i]["via"].get(key[0]) for i in group}) > 1 for key, group in shared.items())
    # Half of them are people the conversations show.
    conversation_names = {c.name for c in plan.conversations if c.name}
    assert sum(1 for p in people if p["display_name"] in conversation_names) >= 3


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), conversations=st.integers(1, 60))
def test_any_seed_gives_a_consistent_demo(seed, conversations):
    plan = make_plan(seed, conversations, NOW)
    assert len(plan.conversations) == conversations
    assert len({c.id for c in plan.conversations}) == conversations
    assert all(c.source in SOURCES and c.messages for c in plan.conversations)
    for c in plan.conversations:
        assert (c.metadata_at is not None) == bool(c.name or c.avatar_url)
    assert len(plan.people) >= 2 * plan.duplicate_groups
