"""The RocksDB store materialized from the contacts topic (and from the join-state, dismissed and
events topics), one module a concern, as quix-streams splits its RocksDB partition, transaction
and recovery:

- ``layout``: the column families, their keys and the store's format (the format's description);
- ``storage``: the database (open, verify, format upgrade, reset, close), the contacts topic's
  offsets, the contacts family's reads and the compaction thread (``Storage``);
- ``batch``: applying records of the contacts topic: contact, derived entry and index entries
  in one write batch with the offsets (``ContactBatch``);
- ``indexes``: the indexes' queries: conversations, merged-into, identities, search, duplicates;
- ``pagination``: ``contacts.list`` in name order and its cursors;
- ``parts``: join state, dismissed groups and event history, each from a topic of its own;
- ``erase``: the erased ids and the compaction of every family that can hold personal data;
- ``store``: ``Store``, the storage with the other parts on it, what the service holds.

Every name other modules import comes from here.
"""

from contacts_streams.store.batch import KNOWN_LIMIT
from contacts_streams.store.erase import PERSONAL
from contacts_streams.store.indexes import (
    DUPLICATES_SCAN,
    MAX_CLAIMANTS,
    MAX_GROUP,
    MAX_LOOKUP,
    MAX_MERGE_CHAIN,
    SEARCH_COUNT,
    SEARCH_SCAN,
    Group,
)
from contacts_streams.store.layout import (
    CONTACT_COUNT,
    CONTACTS,
    CONVERSATION_METADATA,
    CONVERSATIONS,
    COUNTERS,
    DERIVED,
    DISMISSED,
    DISMISSED_OFFSETS,
    DISMISSED_TOPIC_KEY,
    ERASED,
    FAMILIES,
    FORMAT,
    FORMAT_KEY,
    FROM_HISTORY,
    FROM_TOMBSTONE,
    HISTORY,
    HISTORY_OFFSETS,
    HISTORY_TOPIC_KEY,
    IDENTITIES,
    JOIN_OFFSETS,
    JOIN_STATE,
    JOIN_TOPIC_KEY,
    MERGED,
    META,
    NAMES,
    OFFSETS,
    SEARCH,
    SEARCH_NAME_CHARS,
    SEPARATOR,
    SHARED,
    TOPIC_KEY,
    TOPIC_STATE,
    Record,
    dismissed_key,
    identity_prefix,
    search_name,
    search_prefix,
)
from contacts_streams.store.pagination import BACKWARD, CURSOR_NAME_BYTES, FORWARD, BadCursor, Page
from contacts_streams.store.parts import DismissedGroups, EventHistory, HistoryPage, JoinState
from contacts_streams.store.storage import MANIFEST_ROLL_BYTES, WRITE_BUFFERS_BYTES, StoreError, StoreLocked
from contacts_streams.store.store import Store

__all__ = [
    "BACKWARD",
    "CONTACT_COUNT",
    "CONTACTS",
    "CONVERSATION_METADATA",
    "CONVERSATIONS",
    "COUNTERS",
    "CURSOR_NAME_BYTES",
    "DERIVED",
    "DISMISSED",
    "DISMISSED_OFFSETS",
    "DISMISSED_TOPIC_KEY",
    "DUPLICATES_SCAN",
    "ERASED",
    "FAMILIES",
    "FORMAT",
    "FORMAT_KEY",
    "FORWARD",
    "FROM_HISTORY",
    "FROM_TOMBSTONE",
    "HISTORY",
    "HISTORY_OFFSETS",
    "HISTORY_TOPIC_KEY",
    "IDENTITIES",
    "JOIN_OFFSETS",
    "JOIN_STATE",
    "JOIN_TOPIC_KEY",
    "KNOWN_LIMIT",
    "MANIFEST_ROLL_BYTES",
    "MAX_CLAIMANTS",
    "MAX_GROUP",
    "MAX_LOOKUP",
    "MAX_MERGE_CHAIN",
    "MERGED",
    "META",
    "NAMES",
    "OFFSETS",
    "PERSONAL",
    "SEARCH",
    "SEARCH_COUNT",
    "SEARCH_NAME_CHARS",
    "SEARCH_SCAN",
    "SEPARATOR",
    "SHARED",
    "TOPIC_KEY",
    "TOPIC_STATE",
    "WRITE_BUFFERS_BYTES",
    "BadCursor",
    "DismissedGroups",
    "EventHistory",
    "Group",
    "HistoryPage",
    "JoinState",
    "Page",
    "Record",
    "Store",
    "StoreError",
    "StoreLocked",
    "dismissed_key",
    "identity_prefix",
    "search_name",
    "search_prefix",
]
