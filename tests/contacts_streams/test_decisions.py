"""The writer's decisions as pure functions: statuses, errors and records of every command, and
that deciding through a stack of not-yet-materialized overlays equals deciding against a store
that has applied everything (what lets the writer commit batch after batch without waiting)."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from contacts_streams import commands, identities, model
from contacts_streams.commands import Command
from contacts_streams.decisions import ERASED_AT, LayeredView, Overlay, decide
from contacts_streams.store import dismissed_key

NOW = 1_700_000_000_000


class DictView:
    """A fully materialized store: contacts by id, conversations and merged-away ids indexed."""

    def __init__(self):
        self.contacts: dict[str, dict] = {}
        self.merged: dict[str, str] = {}
        self.metadata: dict[str, dict] = {}
        self.dismissed: set[bytes] = set()

    def get(self, contact_id):
        return self.contacts.get(contact_id)

    def owner_of_conversation(self, conversation_id):
        for contact in self.contacts.values():
            if conversation_id in contact.get("conversations", {}):
                return contact["id"]
        return None

    def merged_into(self, contact_id):
        seen = {contact_id}
        current = contact_id
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

    def dismissed_with(self, contact_ids):
        wanted = {c.lower() for c in contact_ids}
        return sorted(k for k in self.dismissed if wanted & set(k.decode().split(",")))

    phone_region = "DE"

    def holders(self, kind, value):
        return sorted(i for i, c in self.contacts.items() if (kind, value) in identities.identities_of(c, self.phone_region))

    def apply(self, decision):
        for change in decision.changes:
            if change.contact is None:
                self.contacts.pop(change.contact_id, None)
                if change.headers.get("merged_into"):
                    self.merged[change.contact_id] = change.headers["merged_into"]
                if change.operation == "erased":
                    self.merged.pop(change.contact_id, None)
            else:
                self.contacts[change.contact_id] = change.contact
                self.merged.pop(change.contact_id, None)  # live again: merged into nothing
        self.metadata.update(decision.conversation_metadata)
        if decision.ok:
            self.dismissed.update(dismissed_key(group) for group in decision.dismissed)
            self.dismissed.difference_update(decision.undismissed)


def command(type_, **payload):
    return Command.new(type_, payload)


def create(view, **fields):
    contact_id = str(uuid.uuid4())
    decision = decide(view, command(commands.CREATE, contacts=[{"id": contact_id, "fields": fields}]), NOW)
    assert decision.status == 201, decision
    view.apply(decision)
    return contact_id


def test_create_update_delete_merge_statuses_and_records():
    view = DictView()
    conv = str(uuid.uuid4())
    a = create(view, display_name="A", conversations={conv: "facebook"})
    b = create(view, display_name="B")

    taken = decide(view, command(commands.CREATE, contacts=[{"id": str(uuid.uuid4()), "fields": {"conversations": {conv: "sms"}}}]), NOW)
    assert taken.status == 409 and taken.error["field"] == f"conversations.{conv}" and a in taken.error["message"]
    assert taken.changes == []

    claim = decide(view, command(commands.UPDATE, id=b, changes={"conversations": {conv: "sms"}}), NOW)
    assert claim.status == 409

    noop = decide(view, command(commands.UPDATE, id=a, changes={"display_name": "A"}), NOW)
    assert noop.status == 202 and noop.changes == []

    merge = decide(view, command(commands.MERGE, source_id=a, destination_id=b), NOW)
    assert merge.status == 200 and merge.ids == [b]
    assert [(c.contact_id, c.operation, c.headers) for c in merge.changes] == [
        (b, "merged", {"merged_from": a}),
        (a, "merged_away", {"merged_into": b}),
    ]
    view.apply(merge)
    again = decide(view, command(commands.MERGE, source_id=a, destination_id=b), NOW)
    assert again.status == 404 and again.error["merged_into"] == b
    assert decide(view, command(commands.UPDATE, id=a, changes={"title": "x"}), NOW).error["merged_into"] == b

    gone = decide(view, command(commands.DELETE, id=b), NOW)
    assert gone.status == 202 and gone.changes[0].contact is None and gone.changes[0].operation == "deleted"
    view.apply(gone)
    assert decide(view, command(commands.UPDATE, id=b, changes={"title": "back?"}), NOW).status == 404
    # the conversation is free again once its contact is gone
    assert create(view, conversations={conv: "facebook"})


def test_import_names_the_element_and_refuses_a_conversation_given_twice():
    view = DictView()
    conv = str(uuid.uuid4())
    items = [{"id": str(uuid.uuid4()), "fields": {"display_name": "x"}}, {"id": str(uuid.uuid4()), "fields": {"conversations": {conv: "a"}}},
             {"id": str(uuid.uuid4()), "fields": {"conversations": {conv: "b"}}}]
    decision = decide(view, command(commands.IMPORT, contacts=items), NOW)
    assert decision.status == 409 and decision.error["field"] == f"[2].conversations.{conv}" and decision.changes == []
    ok = decide(view, command(commands.IMPORT, contacts=items[:2]), NOW)
    assert ok.status == 201 and [c.operation for c in ok.changes] == ["imported", "imported"]


def test_an_update_past_a_state_dependent_limit_is_a_400_naming_the_field():
    view = DictView()
    a = create(view, via={f"k{i}": "v" for i in range(model.MAX_VIA_KEYS)})
    decision = decide(view, command(commands.UPDATE, id=a, changes={"via": {"one_more": "v"}}), NOW)
    assert decision.status == 400 and decision.error["field"] == "via"


def test_auto_create_creates_once_fills_defaults_and_follows_merges():
    view = DictView()
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    first = decide(view, command(commands.AUTO_CREATE, conversations={c1: {"source": "twilio.sms"}, c2: {"contact.display_name": "Early"}}), NOW)
    assert [c.contact_id for c in first.changes] == [model.contact_id_for_conversation(c1)]
    assert first.changes[0].contact["display_name"] == model.default_display_name(c1, "twilio.sms")
    view.apply(first)
    second = decide(view, command(commands.AUTO_CREATE, conversations={c1: {"source": "twilio.sms", "contact.display_name": "Real"}, c2: {"source": "facebook"}}), NOW)
    by_id = {c.contact_id: c for c in second.changes}
    assert by_id[model.contact_id_for_conversation(c1)].contact["display_name"] == "Real"
    assert by_id[model.contact_id_for_conversation(c2)].contact["display_name"] == "Early"
    view.apply(second)
    # merged away: the conversation belongs to the destination, which gets the avatar
    b = create(view, display_name="Person")
    view.apply(decide(view, command(commands.MERGE, source_id=model.contact_id_for_conversation(c1), destination_id=b), NOW))
    third = decide(view, command(commands.AUTO_CREATE, conversations={c1: {"source": "twilio.sms", "contact.avatar_url": "https://a"}}), NOW)
    assert [(c.contact_id, c.contact["avatar_url"], c.contact["display_name"]) for c in third.changes] == [(b, "https://a", "Person")]


# --- erase ------------------------------------------------------------------------------------


def test_an_erase_tombstones_the_contact_and_the_contacts_merged_into_it_and_marks_their_conversations():
    view = DictView()
    c1, c2, c3 = (str(uuid.uuid4()) for _ in range(3))
    keep = create(view, display_name="Bystander", conversations={c3: "sms"})
    kept = decide(view, command(commands.AUTO_CREATE, conversations={c1: {"source": "sms", "contact.display_name": "Ada Lovelace"}}), NOW)
    view.apply(kept)
    auto = model.contact_id_for_conversation(c1)
    ada = create(view, display_name="Ada", via={"email": "ada@example.org"}, conversations={c2: "facebook"})
    older = create(view, display_name="Ada L.")
    view.apply(decide(view, command(commands.MERGE, source_id=older, destination_id=auto), NOW))
    view.apply(decide(view, command(commands.MERGE, source_id=auto, destination_id=ada), NOW))  # history: older, auto
    view.apply(decide(view, command(commands.DISMISS_DUPLICATES, ids=[ada, keep]), NOW))

    erased = decide(view, command(commands.ERASE, id=ada), NOW + 5)
    assert erased.status == 202 and erased.ids == [ada]
    assert [(c.contact_id, c.contact, c.operation, c.headers) for c in erased.changes] == [
        (ada, None, "erased", {}), (older, None, "erased", {}), (auto, None, "erased", {})
    ]
    assert erased.erased == [ada, older, auto]
    assert erased.conversation_metadata == {c1: {ERASED_AT: NOW + 5}, c2: {ERASED_AT: NOW + 5}}  # not c3: the bystander's
    assert erased.undismissed == [dismissed_key([ada, keep])]
    view.apply(erased)
    # nothing leads to it any more: unknown, not merged away
    for contact_id in (ada, auto, older):
        again = decide(view, command(commands.ERASE, id=contact_id), NOW + 6)
        assert again.status == 404 and "merged_into" not in again.error, again
    assert view.get(keep) is not None and view.owner_of_conversation(c3) == keep


def test_an_erase_of_a_merged_away_id_is_a_404_naming_the_destination():
    view = DictView()
    source, destination = create(view, display_name="S"), create(view, display_name="D")
    view.apply(decide(view, command(commands.MERGE, source_id=source, destination_id=destination), NOW))
    answer = decide(view, command(commands.ERASE, id=source), NOW)
    assert answer.status == 404 and answer.error["merged_into"] == destination and not answer.changes
    assert decide(view, command(commands.ERASE, id=str(uuid.uuid4())), NOW).status == 404


def test_after_an_erase_only_records_newer_than_it_create_a_contact_or_teach_the_join_state():
    view = DictView()
    conversation = str(uuid.uuid4())
    contact_id = model.contact_id_for_conversation(conversation)
    first = {"source": "sms", "contact.display_name": "Grace", "at": {"source": NOW - 10, "contact.display_name": NOW - 10}}
    view.apply(decide(view, command(commands.AUTO_CREATE, conversations={conversation: first}), NOW - 5))
    assert view.get(contact_id)["display_name"] == "Grace" and view.metadata[conversation]["display_name"] == "Grace"
    view.apply(decide(view, command(commands.ERASE, id=contact_id), NOW))
    assert view.metadata[conversation] == {ERASED_AT: NOW}

    # the same records again (a replay, a late router): nothing comes back
    replay = decide(view, command(commands.AUTO_CREATE, conversations={conversation: first}), NOW + 10)
    assert replay.changes == [] and replay.conversation_metadata == {}
    # without times (an older router): treated as old
    untimed = decide(view, command(commands.AUTO_CREATE, conversations={conversation: {"source": "sms", "contact.display_name": "Grace"}}), NOW + 10)
    assert untimed.changes == [] and untimed.conversation_metadata == {}
    # an old name with a new message: a new contact, with the default name
    mixed = {"source": "sms", "contact.display_name": "Grace", "at": {"source": NOW + 1, "contact.display_name": NOW - 10}}
    new = decide(view, command(commands.AUTO_CREATE, conversations={conversation: mixed}), NOW + 10)
    reborn = [(c.contact_id, c.operation, c.contact["display_name"]) for c in new.changes]
    assert reborn == [(reborn[0][0], "auto_created", model.default_display_name(conversation, "sms"))]
    assert reborn[0][0] != contact_id  # the erased id never comes back
    assert new.conversation_metadata == {conversation: {ERASED_AT: NOW, "source": "sms"}}
    view.apply(new)
    # and a replay of the new message creates nothing twice
    assert decide(view, command(commands.AUTO_CREATE, conversations={conversation: mixed}), NOW + 20).changes == []


# --- overlays ---------------------------------------------------------------------------------

IDS = [str(uuid.UUID(int=i + 1)) for i in range(5)]
CONVS = [str(uuid.UUID(int=100 + i)) for i in range(4)]
EMAILS = ["a@example.org", " A@Example.org", "b@example.org"]

commands_strategy = st.one_of(
    st.builds(lambda i, c: ("create", i, c), st.sampled_from(IDS), st.lists(st.sampled_from(CONVS), max_size=2, unique=True)),
    st.builds(lambda i, c: ("claim", i, c), st.sampled_from(IDS), st.sampled_from(CONVS)),
    st.builds(lambda i, t: ("update", i, t), st.sampled_from(IDS), st.text(alphabet="ab", min_size=1, max_size=3)),
    st.builds(lambda i: ("delete", i), st.sampled_from(IDS)),
    st.builds(lambda s, d: ("merge", s, d), st.sampled_from(IDS), st.sampled_from(IDS)),
    st.builds(lambda c: ("auto", c), st.sampled_from(CONVS)),
    st.builds(lambda d, s: ("unmerge", d, s), st.sampled_from(IDS), st.sampled_from(IDS)),
    st.builds(lambda i, e: ("email", i, e), st.sampled_from(IDS), st.sampled_from(EMAILS)),
    st.builds(lambda e: ("upsert", e), st.lists(st.tuples(st.sampled_from(EMAILS), st.text(alphabet="xy", max_size=2)), min_size=1, max_size=3)),
    st.builds(lambda i: ("erase", i), st.sampled_from(IDS)),
    st.builds(lambda i: ("dismiss", i), st.lists(st.sampled_from(IDS), min_size=2, max_size=3, unique=True)),
)


def test_unmerge_restores_the_source_and_gives_back_its_conversations():
    view = DictView()
    conv, other_conv = str(uuid.uuid4()), str(uuid.uuid4())
    a = create(view, display_name="A", via={"email": "a@example.org"}, conversations={conv: "facebook"})
    b = create(view, display_name="B", conversations={other_conv: "sms"})
    before_a, before_b = view.get(a), view.get(b)
    view.apply(decide(view, command(commands.MERGE, source_id=a, destination_id=b), NOW + 1))
    assert view.owner_of_conversation(conv) == b

    unmerged = decide(view, command(commands.UNMERGE, destination_id=b, source_id=a), NOW + 2)
    assert unmerged.status == 200 and unmerged.ids == [b, a]
    assert [(c.contact_id, c.operation, c.headers) for c in unmerged.changes] == [
        (b, "unmerged", {"unmerged_from": a}),
        (a, "restored", {"restored_from": b}),
    ]
    view.apply(unmerged)
    strip = lambda c: {k: v for k, v in c.items() if k != "updated_at"}  # noqa: E731
    assert strip(view.get(a)) == strip(before_a) and strip(view.get(b)) == strip(before_b)
    assert view.owner_of_conversation(conv) == a and view.merged_into(a) is None

    again = decide(view, command(commands.UNMERGE, destination_id=b, source_id=a), NOW + 3)
    assert again.status == 404 and "never merged" in again.error["message"] and not again.changes
    unknown = decide(view, command(commands.UNMERGE, destination_id=str(uuid.uuid4()), source_id=a), NOW + 3)
    assert unknown.status == 404 and "destination_id" in unknown.error["message"]


def test_unmerge_is_a_409_when_the_source_cannot_come_back_as_it_was():
    view = DictView()
    conv = str(uuid.uuid4())
    a = create(view, display_name="A", conversations={conv: "facebook"})
    b = create(view, display_name="B")
    view.apply(decide(view, command(commands.MERGE, source_id=a, destination_id=b), NOW))
    # the destination lets the conversation go and a third contact takes it
    view.apply(decide(view, command(commands.UPDATE, id=b, changes={"conversations": {conv: ""}}), NOW))
    c = create(view, display_name="C", conversations={conv: "facebook"})
    taken = decide(view, command(commands.UNMERGE, destination_id=b, source_id=a), NOW)
    assert taken.status == 409 and taken.error["field"] == f"conversations.{conv}" and c in taken.error["message"]
    assert not taken.changes

    # an auto-created source whose conversation the destination let go of is created again
    auto_conv = str(uuid.uuid4())
    view.apply(decide(view, command(commands.AUTO_CREATE, conversations={auto_conv: {"source": "facebook"}}), NOW))
    auto = model.contact_id_for_conversation(auto_conv)
    view.apply(decide(view, command(commands.MERGE, source_id=auto, destination_id=b), NOW))
    view.apply(decide(view, command(commands.UPDATE, id=b, changes={"conversations": {auto_conv: ""}}), NOW))
    view.apply(decide(view, command(commands.AUTO_CREATE, conversations={auto_conv: {"source": "facebook"}}), NOW))
    assert view.get(auto) is not None
    live = decide(view, command(commands.UNMERGE, destination_id=b, source_id=auto), NOW)
    assert live.status == 409 and live.error["field"] == "source_id" and not live.changes


def test_an_upsert_import_updates_the_one_contact_with_the_identity_and_creates_the_rest():
    view = DictView()
    ada = create(view, display_name="Ada", via={"email": "ada@example.org", "phone": "+49 170 1234567"}, title="Countess")
    one, two = create(view, via={"email": "twin@example.org"}), create(view, via={"email": "TWIN@example.org"})
    new_id, again_id = str(uuid.uuid4()), str(uuid.uuid4())
    elements = [
        {"id": str(uuid.uuid4()), "fields": {"via": {"email": " ADA@example.org"}, "address": {"city": "London"}}},
        {"id": new_id, "fields": {"display_name": "New", "via": {"email": "new@example.org"}}},
        {"id": again_id, "fields": {"title": "Dr", "via": {"email": "new@example.org"}}},  # the element before made it
    ]
    decision = decide(view, command(commands.IMPORT, contacts=elements, upsert_by="email"), NOW + 5)
    assert decision.status == 201 and decision.ids == [ada, new_id, new_id] and decision.updated == [0, 2]
    by_id = {c.contact_id: c for c in decision.changes}
    assert [c.contact_id for c in decision.changes] == [ada, new_id]
    assert by_id[ada].operation == "updated" and by_id[ada].contact["title"] == "Countess"
    assert by_id[ada].contact["address"] == {"city": "London"} and by_id[ada].contact["via"]["phone"] == "+49 170 1234567"
    assert by_id[new_id].operation == "imported" and by_id[new_id].contact["display_name"] == "New" and by_id[new_id].contact["title"] == "Dr"
    view.apply(decision)

    # by phone, however written
    by_phone = decide(view, command(commands.IMPORT, contacts=[{"id": str(uuid.uuid4()), "fields": {"via": {"phone": "0170 1234567"}, "gender": "f"}}], upsert_by="phone"), NOW)
    assert by_phone.ids == [ada] and by_phone.changes[0].contact["gender"] == "f"
    # the same again changes nothing and publishes nothing
    view.apply(by_phone)
    same = decide(view, command(commands.IMPORT, contacts=[{"id": str(uuid.uuid4()), "fields": {"via": {"phone": "0170 1234567"}, "gender": "f"}}], upsert_by="phone"), NOW)
    assert same.status == 201 and same.ids == [ada] and same.updated == [0] and same.changes == []

    # two contacts with the identity: a 409 naming the element and both, nothing written
    twins = decide(view, command(commands.IMPORT, contacts=[elements[1], {"id": str(uuid.uuid4()), "fields": {"via": {"email": "twin@example.org"}}}], upsert_by="email"), NOW)
    assert twins.status == 409 and twins.error["field"] == "[1].via.email" and one in twins.error["message"] and two in twins.error["message"]
    assert not twins.changes


def to_command(spec, n):
    kind = spec[0]
    if kind == "create":  # fresh ids each time, conversations from a small set: conflicts happen
        return command(commands.CREATE, contacts=[{"id": str(uuid.UUID(int=1000 + n)), "fields": {"display_name": spec[1][:4], "conversations": {c: "s" for c in spec[2]}}}])
    if kind == "claim":
        return command(commands.UPDATE, id=spec[1], changes={"conversations": {spec[2]: "sms"}})
    if kind == "update":
        return command(commands.UPDATE, id=spec[1], changes={"title": spec[2]})
    if kind == "delete":
        return command(commands.DELETE, id=spec[1])
    if kind == "merge":
        return command(commands.MERGE, source_id=spec[1], destination_id=spec[2])
    if kind == "email":
        return command(commands.UPDATE, id=spec[1], changes={"via": {"email": spec[2]}})
    if kind == "upsert":
        elements = [{"id": str(uuid.UUID(int=5000 + 10 * n + i)), "fields": {"via": {"email": e}, **({"title": t} if t else {})}} for i, (e, t) in enumerate(spec[1])]
        return command(commands.IMPORT, contacts=elements, upsert_by="email")
    if kind == "unmerge":
        return command(commands.UNMERGE, destination_id=spec[1], source_id=spec[2])
    if kind == "erase":
        return command(commands.ERASE, id=spec[1])
    if kind == "dismiss":
        return command(commands.DISMISS_DUPLICATES, ids=spec[1])
    return command(commands.AUTO_CREATE, conversations={spec[1]: {"source": "facebook"}})


@settings(max_examples=150, deadline=None)
@given(st.lists(commands_strategy, max_size=40), st.lists(st.integers(1, 6), min_size=1, max_size=20), st.integers(0, 3))
def test_deciding_through_overlays_equals_deciding_against_a_materialized_store(specs, batch_sizes, lag):
    seed = DictView()
    for i, contact_id in enumerate(IDS[:3]):
        seed.contacts[contact_id] = model.new_contact({"display_name": f"seed{i}", "conversations": {CONVS[i]: "s"}}, contact_id, NOW)
    truth = DictView()
    truth.contacts = dict(seed.contacts)
    store = DictView()  # what the materializer applied so far: `lag` batches behind
    store.contacts = dict(seed.contacts)
    layers: list[tuple[Overlay, list]] = []
    cmds = [to_command(s, n) for n, s in enumerate(specs)]
    sizes = itertools.cycle(batch_sizes)
    while cmds:
        size = next(sizes)
        batch_cmds, cmds = cmds[:size], cmds[size:]
        top = Overlay()
        view = LayeredView(store, [layer for layer, _ in layers] + [top])
        decided = []
        for cmd in batch_cmds:
            expected = decide(truth, cmd, NOW)
            got = decide(view, cmd, NOW)
            assert (got.status, got.ids, got.changes, got.error) == (expected.status, expected.ids, expected.changes, expected.error), cmd
            assert (got.conversation_metadata, got.undismissed, got.erased) == (expected.conversation_metadata, expected.undismissed, expected.erased), cmd
            truth.apply(expected)
            view.record(got, top)
            if got.ok:
                view.record_dismissed(got, top)
            decided.append(got)
        layers.append((top, decided))
        while len(layers) > lag:  # the materializer catches up with the oldest layer
            _, done = layers.pop(0)
            for decision in done:
                store.apply(decision)
