"""Change events as pure logic: the field-level diff, its inverse, and that replaying a contact's
events from nothing gives its current state over generated histories of creates, updates,
merges, unmerges, deletes, upserts and auto-creates (decided as the writer decides them)."""

from __future__ import annotations

import json
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import CREATE_PAYLOADS, KEYS, METADATA, TEXT

from contacts_streams import commands, events, identities, model
from contacts_streams.commands import Command
from contacts_streams.decisions import decide
from contacts_streams.events import EventCodec, apply_changes, diff, event_for, replay

NOW = 1_700_000_000_000


def contact(fields, contact_id=None, now=NOW):
    return model.new_contact(fields, contact_id or str(uuid.uuid4()), now)


def test_maps_change_key_by_key_and_merge_history_as_a_whole():
    before = contact({"display_name": "Ada", "via": {"email": "a@x.org", "phone": "+1"}, "metadata": {"a": {"b": 1}}})
    after = model.apply_update(before, {"via": {"phone": "", "sms": "+2"}, "display_name": "", "title": "Dr", "metadata": {"a": {"b": 1.0}}}, NOW + 1)
    changes = {c["path"]: (c["before"], c["after"]) for c in diff(before, after)}
    assert changes == {
        "display_name": ('"Ada"', None),
        "via.phone": ('"+1"', None),
        "metadata.a": ('{"b":1}', '{"b":1.0}'),  # 1 -> 1.0 is a change of JSON
        "updated_at": (json.dumps(before["updated_at"]), json.dumps(after["updated_at"])),
        "title": (None, '"Dr"'),
        "via.sms": (None, '"+2"'),
    }
    other = contact({"display_name": "Bob", "via": {"email": "b@x.org"}})
    merged = model.merge_contacts(before, other, NOW + 2)
    paths = [c["path"] for c in diff(before, merged)]
    assert "merge_history" in paths and not any(p.startswith("merge_history.") for p in paths)
    assert apply_changes(before, {"operation": "merged", "changes": diff(before, merged)}) == merged


def test_a_deleted_or_merged_away_contact_lists_every_field_going_away():
    gone = contact({"display_name": "Ada", "via": {"email": "a@x.org"}, "conversations": {str(uuid.uuid4()): "facebook"}})
    event = event_for(gone["id"], "merged_away", gone, None, actor="system", origin="http", now_ms=NOW, headers={"merged_into": "d"})
    assert event["other_contact_id"] == "d" and event["time"] == "2023-11-14T22:13:20.000Z"
    assert {c["path"] for c in event["changes"]} == {"id", "display_name", "via.email", f"conversations.{next(iter(gone['conversations']))}", "created_at", "updated_at"}
    assert all(c["after"] is None for c in event["changes"])
    assert apply_changes(gone, event) is None
    assert event_for(gone["id"], "erased", gone, None, actor="system", origin="http", now_ms=NOW)["changes"] == []


def test_the_codec_round_trips_an_event():
    codec = EventCodec(subject=None)
    a = contact({"display_name": "Ada", "timezone": 2.0})
    event = event_for(a["id"], "created", None, a, actor="someone", origin="cli", now_ms=NOW)
    assert codec.decode(codec.encode(event)) == event


UPDATES = st.fixed_dictionaries(
    {},
    optional={
        "display_name": TEXT | st.just(""),
        "title": TEXT | st.just(""),
        "timezone": st.integers(-86400, 86400) | st.floats(-86400, 86400) | st.just(""),
        "via": st.dictionaries(st.sampled_from(["email", "phone", "x"]), TEXT | st.just(""), max_size=3) | st.just(""),
        "address": st.dictionaries(st.sampled_from(model.ADDRESS_FIELDS[:3]), TEXT | st.just(""), max_size=3) | st.just(""),
        "metadata": st.dictionaries(st.sampled_from(["a", "b.c", "d"]), METADATA | st.just(""), max_size=3) | st.just(""),
    },
)


@settings(max_examples=300, deadline=None)
@given(CREATE_PAYLOADS, st.lists(UPDATES, max_size=5))
def test_applying_the_diff_gives_the_after(fields, updates):
    states = [contact(fields)]
    for n, changes in enumerate(updates):
        try:
            states.append(model.apply_update(states[-1], changes, NOW + n + 1))
        except model.ValidationError:
            continue
    for before, after in zip([None] + states, states + [None]):
        assert model.same_json(apply_changes(before, {"operation": "updated" if after else "deleted", "changes": diff(before, after)}), after)


# --- generated histories, decided as the writer decides them -------------------------------------

IDS = [str(uuid.UUID(int=i + 1)) for i in range(4)]
CONVS = [str(uuid.UUID(int=100 + i)) for i in range(3)]
EMAILS = ["a@example.org", " A@Example.org", "b@example.org"]


class DictView:
    """A fully materialized store over dicts (what the writer's store and overlays answer)."""

    phone_region = "DE"

    def __init__(self):
        self.contacts: dict[str, dict] = {}
        self.merged: dict[str, str] = {}
        self.metadata: dict[str, dict] = {}

    def get(self, contact_id):
        return self.contacts.get(contact_id)

    def owner_of_conversation(self, conversation_id):
        return next((i for i, c in self.contacts.items() if conversation_id in c.get("conversations", {})), None)

    def merged_into(self, contact_id):
        seen, current = {contact_id}, contact_id
        while current in self.merged:
            current = self.merged[current]
            if current in seen:
                return None
            seen.add(current)
            if current in self.contacts:
                return current
        return None

    def conversation_metadata(self, conversation_id):
        return self.metadata.get(conversation_id, {})

    def holders(self, kind, value):
        return sorted(i for i, c in self.contacts.items() if (kind, value) in identities.identities_of(c, self.phone_region))

    def apply(self, decision):
        for change in decision.changes:
            if change.contact is None:
                self.contacts.pop(change.contact_id, None)
                if change.headers.get("merged_into"):
                    self.merged[change.contact_id] = change.headers["merged_into"]
            else:
                self.contacts[change.contact_id] = change.contact
                self.merged.pop(change.contact_id, None)
        self.metadata.update(decision.conversation_metadata)


STEPS = st.one_of(
    st.builds(lambda i, f, c: ("create", i, f, c), st.sampled_from(IDS), CREATE_PAYLOADS, st.lists(st.sampled_from(CONVS), max_size=2, unique=True)),
    st.builds(lambda i, u: ("update", i, u), st.sampled_from(IDS), UPDATES),
    st.builds(lambda i: ("delete", i), st.sampled_from(IDS)),
    st.builds(lambda s, d: ("merge", s, d), st.sampled_from(IDS), st.sampled_from(IDS)),
    st.builds(lambda s, d: ("merge", s, d), st.sampled_from(IDS), st.sampled_from(IDS)),
    st.builds(lambda d, s: ("unmerge", d, s), st.sampled_from(IDS), st.sampled_from(IDS) | st.none()),
    st.builds(lambda d, s: ("unmerge", d, s), st.sampled_from(IDS), st.none()),
    st.builds(lambda c, n: ("auto", c, n), st.sampled_from(CONVS), st.none() | KEYS),
    st.builds(lambda e: ("upsert", e), st.lists(st.tuples(st.sampled_from(EMAILS), TEXT), min_size=1, max_size=3)),
)


def to_command(step, n, view):
    kind = step[0]
    if kind == "create":  # an id of the small set: a create of a live id is a 409, of a gone one it comes back
        fields = {k: v for k, v in step[2].items() if k != "conversations"}
        fields["conversations"] = {c: "facebook" for c in step[3]}
        return Command.new(commands.CREATE, {"contacts": [{"id": step[1], "fields": fields}]})
    if kind == "update":
        return Command.new(commands.UPDATE, {"id": step[1], "changes": step[2]})
    if kind == "delete":
        return Command.new(commands.DELETE, {"id": step[1]})
    if kind == "merge":
        return Command.new(commands.MERGE, {"source_id": step[1], "destination_id": step[2]})
    if kind == "unmerge":  # without a source: the destination's latest merge, if it has one
        history = (view.get(step[1]) or {}).get("merge_history") or [{"id": IDS[0]}]
        return Command.new(commands.UNMERGE, {"destination_id": step[1], "source_id": step[2] or history[-1]["id"]})
    if kind == "upsert":
        elements = [{"id": str(uuid.UUID(int=5000 + 10 * n + i)), "fields": {"via": {"email": e}, "title": t or "t"}} for i, (e, t) in enumerate(step[1])]
        return Command.new(commands.IMPORT, {"contacts": elements, "upsert_by": "email"}, origin=commands.ORIGIN_IMPORT)
    event = {"source": "twilio.sms", **({"contact.display_name": step[2]} if step[2] else {})}
    return Command.new(commands.AUTO_CREATE, {"conversations": {step[1]: event}}, actor="auto-create", origin=commands.ORIGIN_AUTO_CREATE)


SEEDED = st.tuples(*[st.builds(lambda f, i=i: ("create", i, f, []), CREATE_PAYLOADS) for i in IDS[:3]])


@settings(max_examples=300, deadline=None)
@given(SEEDED, st.lists(STEPS, max_size=30))
def test_replaying_each_contacts_events_from_nothing_gives_its_current_state(seeded, steps):
    steps = list(seeded) + steps  # three live contacts first: merges and unmerges happen often
    view = DictView()
    log: dict[str, list[dict]] = {}
    codec = EventCodec(subject=None)
    for n, step in enumerate(steps):
        command = to_command(step, n, view)
        now = NOW + n * 1000
        decision = decide(view, command, now)
        for change in decision.changes:  # as the writer makes them: before from the view, then record
            event = event_for(change.contact_id, change.operation, view.get(change.contact_id), change.contact,
                              actor=command.actor, origin=command.origin, now_ms=now, headers=change.headers)  # fmt: skip
            assert event["operation"] == change.operation and event["actor"] == command.actor
            log.setdefault(change.contact_id, []).append(codec.decode(codec.encode(event)))  # as a consumer gets it
        view.apply(decision)
    for contact_id, history in log.items():
        assert model.same_json(replay(history), view.get(contact_id)), contact_id
        # the other contact of a merge or unmerge is named
        for event in history:
            assert (event["other_contact_id"] is not None) == (event["operation"] in ("merged", "merged_away", "unmerged", "restored"))
        assert all(e["changes"] for e in history), "an event without a change"


def test_changed_paths():
    a = contact({"via": {"email": "a@x.org"}})
    assert events.changed_paths({"changes": diff(None, a)}) == ["id", "via.email", "created_at", "updated_at"]
    b = model.apply_update(a, {"title": "Dr"}, NOW + 1)
    assert events.changed_paths({"changes": diff(a, b)}) == ["title", "updated_at"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_json_text_is_compact_sorted_json(value):
    assert events.json_text(value) == json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_event_ids_are_random_uuids():
    ids = {event_for("c", "imported", None, {"id": "c"}, actor="a", origin="http", now_ms=0)["event_id"] for _ in range(200)}
    assert len(ids) == 200
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


CONTACT_C = "6b80b10c-ae6e-4995-844d-c56c4da11623"


def _diff_as_first_written(before, after):
    """diff as it was before it was made cheaper: the order and texts it must keep."""

    def paths(contact):
        out = {}
        for name, value in (contact or {}).items():
            if name in events.KEYED_FIELDS and isinstance(value, dict):
                for key, item in value.items():
                    out[f"{name}.{key}"] = item
            elif value is not None:
                out[name] = value
        return out

    old, new = paths(before), paths(after)
    order = events._FIELD_ORDER
    ordered = list(old) + [p for p in new if p not in old]
    ordered.sort(key=lambda path: order.get(path.partition(".")[0], len(order)))
    return [
        {"path": p, "before": events.json_text(old[p]) if p in old else None, "after": events.json_text(new[p]) if p in new else None}
        for p in ordered
        if not (p in old and p in new and model.same_json(old[p], new[p]))
    ]


@settings(max_examples=300, deadline=None)
@given(
    before=st.none() | CREATE_PAYLOADS.map(lambda f: contact(model.validate_create(f), CONTACT_C)),
    changes=st.none() | CREATE_PAYLOADS.map(lambda f: model.validate_create(f)),
)
def test_diff_keeps_its_order_and_texts(before, changes):
    after = None if changes is None else model.apply_update(before, changes, NOW + 5) if before else contact(changes, CONTACT_C)
    assert diff(before, after) == _diff_as_first_written(before, after)
