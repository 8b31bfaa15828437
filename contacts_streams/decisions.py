"""What a command does to the contacts: pure functions of a view and a command that return the
records to write and the reply (DESIGN.md, "Writes: commands and the writer").

The writer is the only caller: it applies the commands of a batch in order, each against its
store plus the changes the batch (and its committed but not yet materialized predecessors)
already decided, so nothing here needs a lock. The view answers four questions; the rules of
a contact itself (validation, update, merge) live in ``model``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from contacts_streams import commands, identities, model
from contacts_streams.commands import Command

MERGED_INTO, MERGED_FROM = "merged_into", "merged_from"
# The other contact of an unmerge, named on both records (as merged_from/merged_into do for a merge).
UNMERGED_FROM, RESTORED_FROM = "unmerged_from", "restored_from"
# The operations that can bring back an id that was merged away (an auto-created id is derived
# from its conversation, so a conversation the destination let go of creates it again).
LIVE_AGAIN = ("restored", "auto_created")
DISPLAY_NAME, AVATAR_URL = "contact.display_name", "contact.avatar_url"
SOURCE = "source"
# An erase: the contacts topic's operation of its tombstones, and the join state's non-personal
# marker of a conversation whose contact was erased (when, in the writer's ms): records about the
# conversation from before it never teach the join state or create a contact again.
ERASED, ERASED_AT = "erased", "erased_at"
# The router's per-field record timestamps (ms) in an auto_create event, compared with ERASED_AT.
TIMES = "at"


class View(Protocol):
    def get(self, contact_id: str) -> dict | None: ...

    def owner_of_conversation(self, conversation_id: str) -> str | None: ...

    def merged_into(self, contact_id: str) -> str | None: ...

    def conversation_metadata(self, conversation_id: str) -> dict: ...

    # The live contacts holding a normalized identity (kind, value), and the region that
    # normalizes phone numbers without a country code.
    def holders(self, kind: str, value: str) -> list[str]: ...

    # The dismissed-groups keys (``store.dismissed_key``) of the groups naming any of these ids.
    def dismissed_with(self, contact_ids: Iterable[str]) -> list[bytes]: ...

    @property
    def phone_region(self) -> str | None: ...


class NotFound(LookupError):
    def __init__(self, message: str, merged_into: str | None = None):
        super().__init__(message)
        self.message = message
        self.merged_into = merged_into


class Conflict(ValueError):
    """The write contradicts the contacts (a conversation that belongs to another contact)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Change:
    """One record for the contacts topic: the contact's new state, or None for a tombstone."""

    contact_id: str
    contact: dict | None
    operation: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    status: int
    ids: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    error: dict | None = None
    # Conversation join state the command learned (auto-create): conversation -> values.
    conversation_metadata: dict[str, dict] = field(default_factory=dict)
    # Groups (sorted contact ids) people said are not duplicates, for the dismissed topic.
    dismissed: list[list[str]] = field(default_factory=list)
    # An upsert import: the indexes of the elements that updated a contact (the rest created one).
    updated: list[int] = field(default_factory=list)
    # An erase: every id whose data went (the contact first, then the contacts merged into it),
    # and the dismissed groups that named one of them (tombstoned on the dismissed topic).
    erased: list[str] = field(default_factory=list)
    undismissed: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status < 300


def error(status: int, message: str, field_: str | None = None, merged_into: str | None = None) -> Decision:
    body: dict = {"message": message}
    if field_ is not None:
        body["field"] = field_
    if merged_into is not None:
        body["merged_into"] = merged_into
    return Decision(status=status, error=body)


def decide(view: View, command: Command, now_ms: int) -> Decision:
    """The outcome of one command against the view; never raises for anything a client sent."""
    try:
        handler = _HANDLERS[command.type]
        return handler(view, command.payload, now_ms, command.type)
    except NotFound as err:
        return error(404, err.message, merged_into=err.merged_into)
    except Conflict as err:
        return error(409, err.message, err.field)
    except model.ValidationError as err:  # limits that depend on the current state (via keys, metadata size)
        return error(400, err.message, err.field)


# --- HTTP writes ----------------------------------------------------------------------------------


def _not_found(view: View, contact_id: str, field_: str = "id") -> NotFound:
    destination = view.merged_into(contact_id)
    if destination:
        return NotFound(f"contact {contact_id} ({field_}) was merged into {destination}", merged_into=destination)
    return NotFound(f"contact {contact_id} ({field_}) does not exist")


def _check_conversation_free(view: View, conversation_id: str, owner: str | None, field_: str) -> None:
    holder = view.owner_of_conversation(conversation_id)
    if holder is not None and holder != owner:
        raise Conflict(f"{field_}: conversation already belongs to contact {holder}", field_)


def _create(view: View, payload: dict, now_ms: int, type_: str) -> Decision:
    if type_ == commands.IMPORT and payload.get("upsert_by"):
        return _upsert(view, payload, now_ms)
    single = type_ == commands.CREATE
    operation = "created" if single else "imported"
    seen: dict[str, int] = {}
    changes = []
    for index, item in enumerate(payload["contacts"]):
        contact = model.new_contact(item["fields"], item["id"], now_ms)
        prefix = "" if single else f"[{index}]."
        for conversation_id in contact.get("conversations", {}):
            field_ = f"{prefix}conversations.{conversation_id}"
            if conversation_id in seen:
                raise Conflict(f"{field_}: conversation is also given to [{seen[conversation_id]}]", field_)
            seen[conversation_id] = index
            _check_conversation_free(view, conversation_id, None, field_)
        if view.get(contact["id"]) is not None:  # ids are fresh uuid4s: only a replayed command repeats one
            raise Conflict(f"{prefix}id: contact {contact['id']} exists already", f"{prefix}id")
        changes.append(Change(contact["id"], contact, operation))
    return Decision(201, [c.contact_id for c in changes], changes)


MAX_UPSERT_MATCHES = 10  # named in the 409 of an element that matches several contacts


def _upsert(view: View, payload: dict, now_ms: int) -> Decision:
    """An import that updates, key by key, the one live contact holding an element's identity
    (``upsert_by``: email or phone, normalized) and creates the others. Elements apply in order,
    each seeing the ones before it: two elements with one identity make one contact, the later
    values winning key by key. An element whose identity several contacts hold is a 409 naming
    them (creating yet another would add a duplicate on every run of the same file)."""
    kind = payload["upsert_by"]
    pending = Overlay()
    local = LayeredView(view, [pending])
    order: list[str] = []  # contact ids in the order the import first touched them
    created: set[str] = set()
    element_ids: list[str] = []
    updated: list[int] = []
    for index, item in enumerate(payload["contacts"]):
        prefix = f"[{index}]."
        fields = item["fields"]
        raw = (fields.get("via") or {}).get(kind)
        matches: list[str] = []
        if isinstance(raw, str) and raw.strip():
            identity = identities.normalize(kind, raw, local.phone_region)
            matches = local.holders(*identity)
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:MAX_UPSERT_MATCHES])
            raise Conflict(
                f"{prefix}via.{kind}: {len(matches)} contacts have this {kind} ({shown}); merge them or import this row without upsert",
                f"{prefix}via.{kind}",
            )
        if matches:
            contact_id = matches[0]
            current = local.get(contact_id)
            assert current is not None, "holders() names live contacts only"
            for conversation_id in fields.get("conversations") or {}:
                _check_conversation_free(local, conversation_id, contact_id, f"{prefix}conversations.{conversation_id}")
            try:
                contact = model.apply_update(current, fields, now_ms)
            except model.ValidationError as err:
                raise model.ValidationError(prefix + err.field, f"{prefix}{err.message}") from None
            updated.append(index)
        else:
            contact = model.new_contact(fields, item["id"], now_ms)
            contact_id = contact["id"]
            for conversation_id in contact.get("conversations", {}):
                _check_conversation_free(local, conversation_id, None, f"{prefix}conversations.{conversation_id}")
            if local.get(contact_id) is not None:  # ids are fresh uuid4s: only a replayed command repeats one
                raise Conflict(f"{prefix}id: contact {contact_id} exists already", f"{prefix}id")
            created.add(contact_id)
        if contact_id not in pending.contacts:
            order.append(contact_id)
        local.record(Decision(201, changes=[Change(contact_id, contact, "imported")]), pending)
        element_ids.append(contact_id)
    changes = []
    for contact_id in order:
        imported = pending.contacts[contact_id]
        if contact_id not in created and model.same_json(imported, view.get(contact_id)):
            continue  # updated to what it was: nothing to publish
        changes.append(Change(contact_id, imported, "imported" if contact_id in created else "updated"))
    return Decision(201, element_ids, changes, updated=updated)


def _update(view: View, payload: dict, now_ms: int, _type: str) -> Decision:
    contact_id, changes = payload["id"], payload["changes"]
    current = view.get(contact_id)
    if current is None:
        raise _not_found(view, contact_id)
    given = changes.get("conversations")
    if isinstance(given, dict):
        for conversation_id, source in given.items():
            if source != "":
                _check_conversation_free(view, conversation_id, contact_id, f"conversations.{conversation_id}")
    updated = model.apply_update(current, changes, now_ms)
    if model.same_json(updated, current):  # apply_update leaves updated_at alone when nothing changed
        return Decision(202, [contact_id])
    return Decision(202, [contact_id], [Change(contact_id, updated, "updated")])


def _delete(view: View, payload: dict, _now_ms: int, _type: str) -> Decision:
    contact_id = payload["id"]
    if view.get(contact_id) is None:
        raise _not_found(view, contact_id)
    return Decision(202, [contact_id], [Change(contact_id, None, "deleted")])


def _merge(view: View, payload: dict, now_ms: int, _type: str) -> Decision:
    source_id, destination_id = payload["source_id"], payload["destination_id"]
    source = view.get(source_id)
    if source is None:
        raise _not_found(view, source_id, "source_id")
    destination = view.get(destination_id)
    if destination is None:
        raise _not_found(view, destination_id, "destination_id")
    merged = model.merge_contacts(destination, source, now_ms)
    return Decision(
        200,
        [destination_id],
        [
            Change(destination_id, merged, "merged", {MERGED_FROM: source_id}),
            Change(source_id, None, "merged_away", {MERGED_INTO: destination_id}),
        ],
    )


def _unmerge(view: View, payload: dict, now_ms: int, _type: str) -> Decision:
    """Undo the latest merge of the source into the destination: both records in one decision,
    or nothing when the source cannot come back as it was (its id is live again, or one of its
    conversations belongs to a third contact now)."""
    destination_id, source_id = payload["destination_id"], payload["source_id"]
    destination = view.get(destination_id)
    if destination is None:
        raise _not_found(view, destination_id, "destination_id")
    try:
        restored, after = model.unmerge(destination, source_id, now_ms)
    except model.NotMerged as err:
        raise NotFound(str(err)) from None
    source_id = restored["id"]  # as the history spells it
    if view.get(source_id) is not None:
        raise Conflict(
            f"source_id: contact {source_id} exists again (re-created since the merge); unmerging would overwrite it", "source_id"
        )
    kept = after.get("conversations") or {}
    for conversation_id in restored.get("conversations") or {}:
        field_ = f"conversations.{conversation_id}"
        if conversation_id in kept:
            raise Conflict(f"{field_}: conversation is still held by the destination {destination_id}", field_)
        _check_conversation_free(view, conversation_id, destination_id, field_)
    return Decision(
        200,
        [destination_id, source_id],
        [
            # The destination first: it lets go of the conversations the source takes back.
            Change(destination_id, after, "unmerged", {UNMERGED_FROM: source_id}),
            Change(source_id, restored, "restored", {RESTORED_FROM: destination_id}),
        ],
    )


def _erase(view: View, payload: dict, now_ms: int, _type: str) -> Decision:
    """Forget a live contact (DESIGN.md, "Erase"): an ``erased`` tombstone (nothing personal in
    it) for the contact and for every contact merged into it (their merged-away tombstones and
    history live on inside it, so they go with it and their ids stop leading anywhere), a
    non-personal marker as the join state of each of their conversations, and the dismissed
    groups naming any of them. A merged-away id is a 404 naming its destination; an id erased
    before is unknown (404)."""
    contact_id = payload["id"]
    contact = view.get(contact_id)
    if contact is None:
        raise _not_found(view, contact_id)
    gone = [contact_id]
    conversations = list(contact.get("conversations") or {})
    for entry in contact.get("merge_history") or ():
        source = entry.get("id")
        # A source id that is live again (an auto-created id its conversation brought back) is
        # someone else's now: it stays.
        if isinstance(source, str) and source not in gone and view.get(source) is None:
            gone.append(source)
        conversations += list(entry.get("conversations") or {})
    markers = {}
    for conversation_id in conversations:
        if view.owner_of_conversation(conversation_id) in (None, contact_id):
            markers[conversation_id] = {ERASED_AT: now_ms}
    return Decision(
        202,
        [contact_id],
        [Change(erased, None, ERASED) for erased in gone],
        conversation_metadata=markers,
        erased=gone,
        undismissed=view.dismissed_with(gone),
    )


def _dismiss_duplicates(view: View, payload: dict, _now_ms: int, _type: str) -> Decision:
    """A group of live contacts that is not to be offered as duplicates again."""
    ids = payload["ids"]
    for index, contact_id in enumerate(ids):
        if view.get(contact_id) is None:
            raise _not_found(view, contact_id, f"ids[{index}]")
    return Decision(202, list(ids), dismissed=[list(ids)])


# --- auto-create (router commands) ----------------------------------------------------------------


# The join state's fields (as the join-state topic holds them), by the router's event keys.
JOINED = {DISPLAY_NAME: "display_name", AVATAR_URL: "avatar_url"}


def _auto_create(view: View, payload: dict, now_ms: int, _type: str) -> Decision:
    """Create the contact of every conversation no contact references (id derived from the
    conversation, Airy's default name unless the channel named it) and fill names and avatars
    from conversation metadata; one command carries a router's whole batch. What the batch
    teaches about each conversation is its new join state (``conversation_metadata``)."""
    conversations: dict = {c: _after_erase(event, view.conversation_metadata(c)) for c, event in payload["conversations"].items()}
    learned: dict[str, dict] = {}
    filling: dict[str, dict] = {}
    for conversation_id, event in conversations.items():
        committed = view.conversation_metadata(conversation_id)
        state = dict(committed)
        if isinstance(event.get(SOURCE), str):
            state.setdefault(SOURCE, event[SOURCE])
        values = {JOINED[k]: v for k, v in event.items() if k in JOINED and isinstance(v, str) and v}
        if values:
            state.update(values)
            filling[conversation_id] = values
        if state != committed:
            learned[conversation_id] = state
    changed: dict[str, tuple[dict, str]] = {}  # contact id -> (state, operation)
    owners: dict[str, str | None] = {}
    for conversation_id, event in conversations.items():
        source = event.get(SOURCE)
        if not isinstance(source, str):
            continue
        owner = view.owner_of_conversation(conversation_id)
        if owner is not None:
            owners[conversation_id] = owner
            continue
        contact_id = auto_created_id(conversation_id, learned.get(conversation_id) or view.conversation_metadata(conversation_id))
        if contact_id in changed or view.get(contact_id) is not None:
            # The derived id exists without this conversation: a person removed it on purpose.
            continue
        known = learned.get(conversation_id) or view.conversation_metadata(conversation_id)
        fields = {
            "display_name": known.get("display_name") or model.default_display_name(conversation_id, source),
            "conversations": {conversation_id: source},
        }
        if known.get("avatar_url"):
            fields["avatar_url"] = known["avatar_url"]
        changed[contact_id] = (model.new_contact(fields, contact_id, now_ms), "auto_created")
        owners[conversation_id] = contact_id
    for conversation_id, values in filling.items():
        owner = owners.get(conversation_id) or view.owner_of_conversation(conversation_id)
        if owner is None:
            continue
        contact, operation = changed.get(owner) or (view.get(owner), "updated")
        if contact is None:
            continue
        filled = fill(contact, conversation_id, values, now_ms)
        if filled is not contact:
            changed[owner] = (filled, operation)
    changes = [Change(contact_id, contact, operation) for contact_id, (contact, operation) in changed.items()]
    return Decision(200, [c.contact_id for c in changes], changes, conversation_metadata=learned)


def auto_created_id(conversation_id: str, join_state: dict) -> str:
    """The id auto-create gives the contact of a conversation: Airy's UUIDv5 of the conversation
    id; after an erase, that of the conversation id and the erase's time, so the erased id
    never comes back (its tombstone and the roll of its segment stay what they were) and a
    replay still creates nothing twice."""
    erased_at = join_state.get(ERASED_AT)
    if isinstance(erased_at, int):
        return model.contact_id_for_conversation(f"{conversation_id}\x00erased\x00{erased_at}")
    return model.contact_id_for_conversation(conversation_id)


def _after_erase(event: dict, committed: dict) -> dict:
    """What of a router's event may still count: all of it, unless the conversation's contact
    was erased; then only the fields from records newer than the erase (a message sent after it
    is new data and creates a new contact; one sent before, replayed or late, never brings back
    what was erased). A field without its record's time counts as older."""
    erased_at = committed.get(ERASED_AT)
    times = raw if isinstance(raw := event.get(TIMES), dict) else {}
    if not isinstance(erased_at, int):
        return {k: v for k, v in event.items() if k != TIMES}
    return {k: v for k, v in event.items() if k != TIMES and isinstance(times.get(k), int) and times[k] > erased_at}


def fill(contact: dict, conversation_id: str, values: dict, now_ms: int) -> dict:
    """A real name replaces the default name and an avatar fills an empty one; a value a person
    set is never overwritten. Returns the contact itself when nothing changes."""
    changes = {}
    name = values.get("display_name")
    source = contact.get("conversations", {}).get(conversation_id)
    current = contact.get("display_name")
    if (
        name
        and name != current
        and source is not None
        and (current is None or current == model.default_display_name(conversation_id, source))
    ):
        changes["display_name"] = name
    avatar = values.get("avatar_url")
    if avatar and not contact.get("avatar_url"):
        changes["avatar_url"] = avatar
    if not changes:
        return contact
    return model.apply_update(contact, changes, now_ms)


_HANDLERS = {
    commands.CREATE: _create,
    commands.IMPORT: _create,
    commands.UPDATE: _update,
    commands.DELETE: _delete,
    commands.MERGE: _merge,
    commands.UNMERGE: _unmerge,
    commands.DISMISS_DUPLICATES: _dismiss_duplicates,
    commands.ERASE: _erase,
    commands.AUTO_CREATE: _auto_create,
}


# --- the view the writer decides from ---------------------------------------------------------------


class Overlay:
    """The changes one batch decided, readable before they are committed and materialized:
    contact id -> state (None: gone), conversation -> owner (None: nobody), merged-away id ->
    destination, conversation -> join state."""

    def __init__(self) -> None:
        self.contacts: dict[str, dict | None] = {}
        self.owners: dict[str, str | None] = {}
        self.merged: dict[str, str | None] = {}
        self.metadata: dict[str, dict] = {}
        self.dismissed: dict[bytes, bool] = {}  # dismissed-group key -> dismissed (False: tombstoned)

    def __bool__(self) -> bool:
        return bool(self.contacts or self.owners or self.merged or self.metadata or self.dismissed)


class LayeredView:
    """The store under a stack of overlays (newest last); the first layer that knows answers."""

    MAX_CHAIN = 32

    def __init__(self, base: View, layers: list[Overlay]):
        self._base = base
        self._layers = layers
        # Built on the first holders() call (upsert imports only): the identities of every
        # contact the layers hold (contact id -> identities) and the other way round.
        self._identities_of: dict[str, set] | None = None
        self._holding: dict[tuple, set[str]] = {}
        # The base's contacts as this view first read them: a decision, its event and the
        # overlay's bookkeeping each ask for the same contact (a store read and a decode each).
        # The base does not change under a view in a way the layers do not cover: the store
        # applies only records the writer committed, and those are in the layers until it has.
        self._base_contacts: dict[str, dict | None] = {}

    @property
    def phone_region(self) -> str | None:
        return getattr(self._base, "phone_region", None)

    def holders(self, kind: str, value: str) -> list[str]:
        if self._identities_of is None:
            self._identities_of = {}
            latest: dict[str, dict | None] = {}
            for layer in self._layers:
                latest.update(layer.contacts)
            for contact_id, contact in latest.items():
                self._index_identities(contact_id, contact)
        found = [h for h in self._base.holders(kind, value) if h not in self._identities_of]
        return found + sorted(self._holding.get((kind, value), ()))

    def _index_identities(self, contact_id: str, contact: dict | None) -> None:
        known = self._identities_of
        if known is None:
            return  # not built yet: holders() builds it from the layers when first asked
        for identity in known.get(contact_id, ()):
            self._holding.get(identity, set()).discard(contact_id)
        held = set(identities.identities_of(contact, self.phone_region)) if contact is not None else set()
        known[contact_id] = held
        for identity in held:
            self._holding.setdefault(identity, set()).add(contact_id)

    def get(self, contact_id: str) -> dict | None:
        for layer in reversed(self._layers):
            if contact_id in layer.contacts:
                return layer.contacts[contact_id]
        try:
            return self._base_contacts[contact_id]
        except KeyError:
            contact = self._base_contacts[contact_id] = self._base.get(contact_id)
            return contact

    def owner_of_conversation(self, conversation_id: str) -> str | None:
        for layer in reversed(self._layers):
            if conversation_id in layer.owners:
                owner = layer.owners[conversation_id]
                return owner if owner is None or self.get(owner) is not None else None
        owner = self._base.owner_of_conversation(conversation_id)
        if owner is not None and self.get(owner) is None:
            return None  # the store's owner is gone in a layer (deleted, merged away)
        return owner

    def merged_into(self, contact_id: str) -> str | None:
        current, seen = contact_id, {contact_id}
        for _ in range(self.MAX_CHAIN):
            destination, known = None, False
            for layer in reversed(self._layers):
                if current in layer.merged:
                    destination, known = layer.merged[current], True
                    break
            if not known:
                destination = self._base.merged_into(current)
            if destination is None or destination in seen:
                return None
            if self.get(destination) is not None:
                return destination
            seen.add(destination)
            current = destination
        return None

    def conversation_metadata(self, conversation_id: str) -> dict:
        for layer in reversed(self._layers):
            if conversation_id in layer.metadata:
                return layer.metadata[conversation_id]
        return self._base.conversation_metadata(conversation_id)

    def dismissed_with(self, contact_ids: Iterable[str]) -> list[bytes]:
        wanted = {c.lower() for c in contact_ids}
        state: dict[bytes, bool] = {key: True for key in self._base.dismissed_with(wanted)}
        for layer in self._layers:
            state.update((key, present) for key, present in layer.dismissed.items() if wanted & set(key.decode().split(",")))
        return sorted(key for key, present in state.items() if present)

    def record_dismissed(self, decision: Decision, layer: Overlay) -> None:
        """Put the dismissed groups a decision wrote or tombstoned into `layer`."""
        from contacts_streams.store import dismissed_key  # the store imports this module

        for group in decision.dismissed:
            layer.dismissed[dismissed_key(group)] = True
        for key in decision.undismissed:
            layer.dismissed[key] = False

    def record(self, decision: Decision, layer: Overlay) -> None:
        """Put a decision's changes into `layer` (the batch's own, the top one)."""
        for change in decision.changes:
            old = self.get(change.contact_id)
            for conversation_id in (old or {}).get("conversations", {}):
                # A merge moves the source's conversations to the destination first: keep that.
                if self.owner_of_conversation(conversation_id) == change.contact_id:
                    layer.owners[conversation_id] = None
            layer.contacts[change.contact_id] = change.contact
            if self._identities_of is not None:
                self._index_identities(change.contact_id, change.contact)
            for conversation_id in (change.contact or {}).get("conversations", {}):
                layer.owners[conversation_id] = change.contact_id
            if change.headers.get(MERGED_INTO):
                layer.merged[change.contact_id] = change.headers[MERGED_INTO]
            elif change.operation == ERASED:
                layer.merged[change.contact_id] = None  # an erased id leads nowhere
            elif change.operation in LIVE_AGAIN and self.merged_into(change.contact_id) is not None:
                layer.merged[change.contact_id] = None  # live again (restored): merged into nothing
        layer.metadata.update(decision.conversation_metadata)
