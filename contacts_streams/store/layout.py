"""What the store keeps where: its column families, their keys and the store's format.

Column families (DESIGN.md, "store"):
- ``contacts``: contact id -> the record's value bytes exactly as on the topic, so a store rebuilt
  from the topic equals the old one byte for byte;
- ``conversations``: conversation id + 0x00 + contact id -> b"" (who claims the conversation);
- ``merged``: merged-away id + 0x00 + destination id + 0x00 + ``h`` (from the destination's
  history) or ``t`` (from the merged-away tombstone's header) -> b"";
- ``names``: ``model.sort_key(contact)`` -> contact id, the order of ``contacts.list``;
- ``counters``: ``contacts`` -> number of live contacts, so ``total`` costs one read;
- ``offsets``: partition -> next offset to read, written in the same batch as the data it covers;
- ``meta``: the topic the store was built from (and the join-state topic);
- ``join_state`` / ``join_offsets``: auto-create's join state, materialized from its own
  compacted topic (``<APPLICATION_ID>-conversations``: conversation id -> the JSON value as on
  the topic) with that topic's offsets in the same batch (``JoinState``); a rebuild of the
  contacts part leaves it alone, and the other way round;
- ``conversation_metadata``: the join state as versions before the join-state topic kept it,
  only on the local disk; still read (and written to the topic when auto-create next touches
  the conversation), never written;
- ``identities``: kind + 0x00 + normalized value + 0x00 + contact id -> b"" (``identities``
  module: from the record's ``identities`` header, computed here only when it has none), for
  ``contacts.lookup`` and ``contacts.duplicates``;
- ``shared``: a 16-byte digest of kind + 0x00 + value -> kind + 0x00 + value, for every identity
  at least two live contacts hold: ``contacts.duplicates`` pages through it instead of scanning
  the contacts. It is a function of the ``identities`` family (recounted, in the batch, for every
  identity the batch touched), so it too ends the same whatever order partitions are read in;
- ``search``: namespace (``w`` words, ``e`` whole emails, ``p`` reversed phone digits) + token +
  0x00 + name part + 0x00 + contact id -> one byte: how many leading characters the token shares
  with the contact's token before it in the same namespace (tokens sorted), so a search knows
  whether an entry is the contact's first match for its term from the entry alone; the name
  part (0x01 + the folded display name's first SEARCH_NAME_CHARS characters, or 0x02 when
  unnamed) orders each token's contacts by name;
- ``derived``: contact id -> JSON ``[identities, search tokens, display name, conversation ids,
  merged-away ids]``, what every index entry of the contact is made of: a later record of the
  contact removes exactly those entries (the header it came with is gone by then) and writes
  only the entries that changed, without decoding the record it replaces. It is there exactly
  while the contact is live;
- ``dismissed`` / ``dismissed_offsets``: groups people said are not duplicates (sorted contact
  ids joined by ``,`` -> b""), from the ``<APPLICATION_ID>-dismissed`` topic (``DismissedGroups``);
- ``history`` / ``history_offsets``: each contact's recent change events, from the events topic
  (``EventHistory``): contact id + 0x00 + partition (4 bytes) + offset (8 bytes) -> the event's
  time in ms (8 bytes) + the event as compact JSON, so a contact's events are one key range in
  topic order;
- ``erased``: contact id -> when its ``erased`` tombstone was written (ms, 8 bytes), nothing
  personal: the writer appends the tombstone again once the topic's ``segment.ms`` has passed,
  so the partition's segment rolls and compaction can drop what the id held.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from rocksdict import Rdict

from contacts_streams import identities as ids_module
from contacts_streams import model

CONTACTS, CONVERSATIONS, MERGED, NAMES = "contacts", "conversations", "merged", "names"
COUNTERS, OFFSETS, META, CONVERSATION_METADATA = "counters", "offsets", "meta", "conversation_metadata"
JOIN_STATE, JOIN_OFFSETS = "join_state", "join_offsets"
IDENTITIES, SHARED, SEARCH, DERIVED = "identities", "shared", "search", "derived"
DISMISSED, DISMISSED_OFFSETS, ERASED = "dismissed", "dismissed_offsets", "erased"
HISTORY, HISTORY_OFFSETS = "history", "history_offsets"
FAMILIES = (
    CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META, CONVERSATION_METADATA, JOIN_STATE, JOIN_OFFSETS,
    IDENTITIES, SHARED, SEARCH, DERIVED, DISMISSED, DISMISSED_OFFSETS, ERASED, HISTORY, HISTORY_OFFSETS,
)  # fmt: skip
# What a rebuild from the contacts topic recreates; the join state and the dismissed groups come
# from their own topics.
TOPIC_STATE = (CONTACTS, CONVERSATIONS, MERGED, NAMES, COUNTERS, OFFSETS, META, IDENTITIES, SHARED, SEARCH, DERIVED, ERASED)
# 1: contacts, conversations, merged, names, counters. 2: identities, shared, search, derived.
# 3: whole emails in a search namespace of their own, no local-part token, search entries valued
# with their shared prefix, derived entries holding all a contact's index entries come from.
FORMAT = b"3"
FORMAT_KEY = b"format"
DISMISSED_TOPIC_KEY = b"dismissed_topic"
HISTORY_TOPIC_KEY = b"history_topic"
SEARCH_NAME_CHARS = 32
CONTACT_COUNT = b"contacts"
TOPIC_KEY = b"topic"
JOIN_TOPIC_KEY = b"join_topic"
SEPARATOR = b"\x00"
# Two records may name one merge: distinct keys, so neither's removal takes the other's entry.
FROM_HISTORY, FROM_TOMBSTONE = SEPARATOR + b"h", SEPARATOR + b"t"

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PARTITION = struct.Struct(">I")
_NAMED, _UNNAMED = b"\x01", b"\x02"
_ID_LENGTH = 36


@dataclass(frozen=True)
class Record:
    """One record of the contacts topic as the materializer hands it over."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp: int = 0  # ms


# Every family is in raw mode, so keys and values are bytes; rocksdict's stubs type them for
# every mode (str, int, float, bytes, bool). An Rdict is not iterable by its keys: `for k in
# family` indexes it with 0, 1, ... and fails, so keys() it is.
def _pairs(family: Rdict, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    items = family.items() if from_key is None else family.items(from_key=from_key)
    return cast(Iterator[tuple[bytes, bytes]], items)


def seek_after(it, after: bytes | None) -> None:
    """Put a RocksDB iterator on the first key after ``after`` (a cursor's own key was on the
    page before), or on the first key."""
    if after is None:
        it.seek_to_first()
        return
    it.seek(after)
    if it.valid() and it.key() == after:
        it.next()


def seek_before(it, before: bytes) -> None:
    """Put a RocksDB iterator on the last key before ``before`` (paging backwards)."""
    it.seek_for_prev(before)
    if it.valid() and it.key() == before:
        it.prev()


def _keys(family: Rdict) -> Iterator[bytes]:
    return cast(Iterator[bytes], family.keys())


def _pair(owner_of: str, contact_id: str) -> bytes:
    return owner_of.encode() + SEPARATOR + contact_id.encode()


def identity_prefix(kind: str, value: str) -> bytes:
    """The identities family's keys of one identity start with this."""
    return kind.encode() + SEPARATOR + value.encode() + SEPARATOR


def search_prefix(namespace: str, term: str) -> bytes:
    return namespace.encode() + term[: ids_module.MAX_TOKEN_CHARS].encode()


def search_name(contact: dict) -> bytes:
    """What orders one token's contacts: the folded display name's start, unnamed last."""
    name = contact.get("display_name")
    folded = ids_module.fold(name)[:SEARCH_NAME_CHARS] if isinstance(name, str) else ""
    return _NAMED + folded.encode() if folded else _UNNAMED


def _digest16(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def dismissed_key(contact_ids: Iterable[str]) -> bytes:
    """The dismissed groups' key of a group: its contact ids, lowercase, sorted, joined by ","."""
    return ",".join(sorted({c.lower() for c in contact_ids})).encode()


def _is_id(contact_id: bytes) -> bool:
    return model.is_uuid(contact_id)
