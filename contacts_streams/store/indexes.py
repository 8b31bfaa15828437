"""The indexes and their queries (``Indexes``): who claims a conversation, where a merged-away
id lives now, who holds an identity (``contacts.lookup``), search by prefix (``contacts.search``)
and the identities two live contacts share (``contacts.duplicates``). ``batch`` writes them."""

from __future__ import annotations

import base64
import itertools
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rocksdict import ReadOptions

from contacts_streams import identities as ids_module
from contacts_streams import model
from contacts_streams.store.layout import (
    _ID_LENGTH,
    CONVERSATIONS,
    DERIVED,
    IDENTITIES,
    MERGED,
    SEARCH,
    SEPARATOR,
    SHARED,
    _digest16,
    _is_id,
    _pairs,
    identity_prefix,
    search_prefix,
    seek_after,
)
from contacts_streams.store.pagination import BadCursor, Page, _b64

if TYPE_CHECKING:
    from contacts_streams.store.parts import DismissedGroups
    from contacts_streams.store.storage import Storage

SEARCH_SCAN = 5000
SEARCH_COUNT = 1000
# Search totals kept between writes (see Indexes._search_total): a popular query's first page
# is asked again and again while it is typed and paged; a write batch forgets them all.
SEARCH_TOTALS_KEPT = 1024
DUPLICATES_SCAN = 1000
MAX_GROUP = 100
MAX_LOOKUP = 1000
_SEARCH_CURSOR, _DUPLICATES_CURSOR = b"s", b"d"
# A search cursor with the total its first page counted (4 bytes after the key): later pages
# do not count again. Cursors of the first kind (no total) are still read.
_SEARCH_TOTAL_CURSOR = b"t"
_TOTAL = struct.Struct(">I")
MAX_MERGE_CHAIN = 32
MAX_CLAIMANTS = 64


@dataclass(frozen=True)
class Group:
    """Live contacts that share identities: ``reasons`` are those identities, the one the group
    was found by first."""

    ids: tuple[str, ...]
    contacts: list[dict]
    reasons: list[tuple[str, str]]


class Indexes:
    """What the index families answer; the contacts they name are read from the contacts family."""

    def __init__(self, store: Storage, dismissed: DismissedGroups):
        self._store = store
        self._dismissed = dismissed
        self._totals: dict[tuple[bytes, int], tuple[int, int]] = {}  # (prefix, length) -> (generation, total)

    def _claimants(self, family: str, key: str) -> list[str]:
        prefix = key.encode() + SEPARATOR
        it = self._store._cf[family].iter(ReadOptions())
        it.seek(prefix)
        found: list[str] = []
        while it.valid() and it.key().startswith(prefix) and len(found) < MAX_CLAIMANTS:
            found.append(it.key()[len(prefix) :].split(SEPARATOR, 1)[0].decode())
            it.next()
        return found

    def contact_id_for_conversation(self, conversation_id: str) -> str | None:
        """The live contact that has this conversation, if any."""
        for contact_id in self._claimants(CONVERSATIONS, conversation_id):
            if self._store.get_bytes(contact_id) is not None:
                return contact_id
        return None

    def merged_into(self, contact_id: str) -> str | None:
        """Where a merged-away contact lives now (following merges of merges), if it still does."""
        seen, frontier = {contact_id}, [contact_id]
        while frontier and len(seen) < MAX_MERGE_CHAIN:
            current = frontier.pop(0)
            for destination in self._claimants(MERGED, current):
                if destination in seen:
                    continue
                if self._store.get_bytes(destination) is not None:
                    return destination
                seen.add(destination)
                frontier.append(destination)
        return None

    # --- finding people ----------------------------------------------------------------------

    def indexed(self, contact_id: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(identities, search tokens) as indexed for a live contact; empty for any other id."""
        raw = self._store._cf[DERIVED].get(contact_id.encode())
        if raw is None:
            return [], []
        identities, tokens = json.loads(raw)[:2]
        return [tuple(p) for p in identities], [tuple(p) for p in tokens]

    def holders(self, kind: str, value: str, limit: int = MAX_GROUP) -> list[str]:
        """Ids of the live contacts that have this normalized identity (at most ``limit``)."""
        prefix = identity_prefix(kind, value)
        it = self._store._cf[IDENTITIES].iter(ReadOptions())
        it.seek(prefix)
        found: list[str] = []
        while it.valid() and it.key().startswith(prefix) and len(found) < limit:
            found.append(it.key()[len(prefix) :].decode())
            it.next()
        del it
        return found

    def lookup(
        self, identities: list[tuple[str, str]], limit: int = MAX_LOOKUP, decode: Callable[[bytes], Any] | None = None
    ) -> list[Any]:
        """The live contacts that have every one of these normalized identities, by name.
        `decode`: what to make of each one's stored bytes (default: the contact dict)."""
        if not identities:
            return []
        candidates: set[str] | None = None
        for kind, value in identities:
            held = set(self.holders(kind, value, limit))
            candidates = held if candidates is None else candidates & held
            if not candidates:
                return []
        get_bytes, decode_contact = self._store.get_bytes, self._store.codec.decode_contact
        found = [raw for contact_id in sorted(candidates or ()) if (raw := get_bytes(contact_id)) is not None]
        if decode is None:
            return sorted(map(decode_contact, found), key=model.sort_key)
        if len(found) > 1:  # the order is by name, which only the decoded contact tells
            found.sort(key=lambda raw: model.sort_key(decode_contact(raw)))
        return [decode(raw) for raw in found]

    def search(
        self, terms: list[tuple[str, str]], cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None
    ) -> Page:
        """A page of the contacts that match every term by prefix (``identities.query_terms``).

        The store walks the first term's entries of the search family from the cursor: that
        term's exact matches by name, then its longer tokens, each by name. A contact found by
        several tokens shows where the first of them is (so it is on one page only), and the other
        terms are checked against the contact's own tokens. A page reads at most SEARCH_SCAN
        entries, wherever it starts, so its cost does not grow with the store; a query whose
        terms rarely meet may get a short page with a next cursor. ``total`` counts the contacts
        among the first term's first SEARCH_COUNT entries: exact for one term with fewer
        matches, else an estimate (an upper one for several terms, SEARCH_COUNT at most); the
        first page counts it and its cursors carry it on.
        """
        if not terms:
            return Page([], None, None, 0)
        decode = decode or self._store.codec.decode_contact
        namespace, term = terms[0]
        term = term[: ids_module.MAX_TOKEN_CHARS]
        prefix = search_prefix(namespace, term)
        start = prefix
        total = None
        if cursor:
            start, total = _decode_search_cursor(cursor)
            if not start.startswith(prefix):
                raise BadCursor("cursor belongs to another query")
        found: list[dict] = []
        last: bytes | None = None
        more = False
        scanned = 0
        short = len(term)
        for entry, value in _pairs(self._store._cf[SEARCH], from_key=start):
            if cursor and entry == start:
                continue  # the cursor's own entry was on the page before
            if not entry.startswith(prefix):
                break
            if len(found) == page_size or scanned == SEARCH_SCAN:
                more = True
                break
            scanned += 1
            last = entry
            # The entry's value: how many characters its token shares with the contact's token
            # before it. As long as the term or longer, that token matches too: the contact is
            # shown there, not here.
            if value[0] >= short:
                continue
            contact_id = entry[-_ID_LENGTH:].decode()
            if len(terms) > 1:
                _identities, tokens = self.indexed(contact_id)
                if not all(
                    any(n == other_ns and t.startswith(other[: ids_module.MAX_TOKEN_CHARS]) for n, t in tokens)
                    for other_ns, other in terms[1:]
                ):
                    continue
            raw = self._store.get_bytes(contact_id)
            if raw is not None:
                found.append(decode(raw))
        if total is None:
            total = self._search_total(prefix, len(term))
        next_cursor = _encode_search_cursor(last, total) if more and last is not None else None
        return Page(found, None, next_cursor, total)

    def _search_total(self, prefix: bytes, term_length: int) -> int:
        """The contacts among the first SEARCH_COUNT entries of a term: each contact has one
        entry whose value (the characters shared with the contact's token before it) is
        shorter than the term, its first match.

        Counting reads up to SEARCH_COUNT entries (most of a start page's time at 1M): the total
        is kept until the store's next write. The generation is read before the count, so a
        write during it leaves a total that is never served."""
        generation = self._store.generation
        kept = self._totals.get((prefix, term_length))
        if kept is not None and kept[0] == generation:
            return kept[1]
        options = ReadOptions()
        # 0xFF never occurs in UTF-8: every key that starts with the prefix sorts before this.
        options.set_iterate_upper_bound(prefix + b"\xff")
        values = self._store._cf[SEARCH].values(from_key=prefix, read_opt=options)
        total = sum(1 for value in itertools.islice(values, SEARCH_COUNT) if value[0] < term_length)
        if len(self._totals) >= SEARCH_TOTALS_KEPT:
            self._totals.clear()
        self._totals[(prefix, term_length)] = (generation, total)
        return total

    def duplicates(self, cursor: str | None, page_size: int) -> tuple[list[Group], str | None]:
        """A page of duplicate groups (one per shared identity) and the next page's cursor.

        The shared family holds only identities that two live contacts have, so a page reads
        about page_size of them, not the contacts; groups people dismissed, and groups another
        identity already names (same contacts), are passed over, at most DUPLICATES_SCAN a page.
        """
        after = _decode_duplicates_cursor(cursor) if cursor else None
        it = self._store._cf[SHARED].iter(ReadOptions())
        seek_after(it, after)
        groups: list[Group] = []
        last, more, scanned = None, False, 0
        while it.valid():
            if len(groups) == page_size or scanned == DUPLICATES_SCAN:
                more = True
                break
            scanned += 1
            last = it.key()
            kind, value = it.value().decode().split("\x00", 1)
            it.next()
            group = self.group(kind, value)
            if group is not None:
                groups.append(group)
        del it
        return groups, (_encode_duplicates_cursor(last) if more and last is not None else None)

    def groups_of(self, contact_id: str) -> list[Group]:
        """The duplicate groups a live contact is in."""
        identities, _tokens = self.indexed(contact_id)
        groups: list[Group] = []
        for kind, value in identities:
            group = self.group(kind, value)
            if group is not None and not any(g.ids == group.ids for g in groups):
                groups.append(group)
        return groups

    def group(self, kind: str, value: str) -> Group | None:
        """The group of live contacts sharing this identity, with every identity they all share;
        None when fewer than two share it, when it was dismissed, or when another identity they
        share names the same group first (one group per set of contacts)."""
        ids = sorted(self.holders(kind, value))
        if len(ids) < 2 or ids in self._dismissed:
            return None
        contacts = [c for c in (self._store.get(i) for i in ids) if c is not None]
        if len(contacts) < 2:
            return None
        shared = set(self.indexed(ids[0])[0])
        for other in ids[1:]:
            shared &= set(self.indexed(other)[0])
        mine = _digest16(f"{kind}\x00{value}".encode())
        for other_kind, other_value in shared:
            if (other_kind, other_value) == (kind, value):
                continue
            if (
                _digest16(f"{other_kind}\x00{other_value}".encode()) < mine
                and sorted(self.holders(other_kind, other_value)) == ids
            ):
                return None
        reasons = [(kind, value)] + sorted(shared - {(kind, value)})
        return Group(tuple(ids), contacts, reasons)


def _encode_search_cursor(key: bytes, total: int) -> str:
    return base64.urlsafe_b64encode(_SEARCH_TOTAL_CURSOR + key + _TOTAL.pack(total)).decode().rstrip("=")


def _decode_search_cursor(cursor: str) -> tuple[bytes, int | None]:
    """(the key to page from, the total of the first page if the cursor carries it)."""
    raw = _b64(cursor)
    kind, key, total = raw[:1], raw[1:], None
    if kind == _SEARCH_TOTAL_CURSOR and len(key) > _TOTAL.size:
        key, (total,) = key[: -_TOTAL.size], _TOTAL.unpack(key[-_TOTAL.size :])
    elif kind != _SEARCH_CURSOR:
        raise BadCursor("cursor is not a cursor this service handed out")
    if (
        key.count(SEPARATOR) != 2
        or not _is_id(key[-_ID_LENGTH:])
        or key[-_ID_LENGTH - 1 : -_ID_LENGTH] != SEPARATOR
        or (total or 0) > SEARCH_COUNT
    ):
        raise BadCursor("cursor is not a cursor this service handed out")
    return key, total


def _encode_duplicates_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(_DUPLICATES_CURSOR + key).decode().rstrip("=")


def _decode_duplicates_cursor(cursor: str) -> bytes:
    raw = _b64(cursor)
    if raw[:1] != _DUPLICATES_CURSOR or len(raw) != 17:
        raise BadCursor("cursor is not a cursor this service handed out")
    return raw[1:]
