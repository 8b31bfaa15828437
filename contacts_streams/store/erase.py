"""What an erase leaves the store to do once its batch is written, and what it remembers of it.

An ``erased`` tombstone (contacts.erase) removes what any tombstone removes and the merged-into
hints of its id; then the store compacts every column family that can hold personal data
(``compact_personal``), so no SST file, write-ahead log or MANIFEST keeps the erased bytes.
The batch itself (``batch.ContactBatch``) removes the contact and its index entries as for any
tombstone, drops its merged-into hints and writes its ``erased`` entry; the parts fed by topics of
their own drop what they held of it (``parts``) and ask for the same compaction.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rocksdict import BottommostLevelCompaction, CompactOptions

from contacts_streams.store.layout import (
    _U64,
    CONTACTS,
    CONVERSATION_METADATA,
    CONVERSATIONS,
    DERIVED,
    ERASED,
    FAMILIES,
    HISTORY,
    IDENTITIES,
    JOIN_STATE,
    MERGED,
    NAMES,
    SEARCH,
    SHARED,
    _pairs,
)

if TYPE_CHECKING:  # storage runs what this module says; this module only reads its families
    from contacts_streams.store.storage import Storage

log = logging.getLogger(__name__)

# The families whose keys or values can hold personal data (names, e-mails, phones, whole
# contacts, join state), compacted after an erase. Whole families, not the erased keys' ranges:
# an update long ago deleted index keys (an old e-mail, an old name's words) that the erase no
# longer knows, and their deletes and values may still sit in SST files.
PERSONAL = (
    CONTACTS,
    NAMES,
    IDENTITIES,
    SHARED,
    SEARCH,
    DERIVED,
    CONVERSATIONS,
    MERGED,
    JOIN_STATE,
    CONVERSATION_METADATA,
    HISTORY,
)


def erased(storage: Storage) -> list[tuple[str, int]]:
    """(contact id, when its erased tombstone was written in ms) of every erased id that has not
    come back (an auto-created id whose conversation got a new message)."""
    return [(k.decode(), _U64.unpack(v)[0]) for k, v in _pairs(storage._cf[ERASED])]


def compact_personal(storage: Storage) -> None:
    """Make RocksDB let go of deleted bytes: a delete only writes a tombstone, and the old
    key and value stay in SST files until a compaction drops both, and in the write-ahead
    log until every family's memtable that holds them is flushed. So: flush every family
    (the WAL files of the erased writes become obsolete and are deleted), compact each
    personal family to its last level (bottommost forced: no level keeps a dropped value),
    then flush the WAL. Whole-family compactions log no keys (RocksDB's LOG names a manual
    compaction's key range)."""
    started = time.monotonic()
    options = CompactOptions()
    options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    options.set_exclusive_manual_compaction(False)
    for family in FAMILIES:
        storage._cf[family].flush()
    for family in PERSONAL:
        storage._cf[family].compact_range(None, None, options)
    storage._db.flush_wal(True)
    log.info("store compacted after an erase in %.2fs", time.monotonic() - started)
