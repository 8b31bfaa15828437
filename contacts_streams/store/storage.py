"""The store's RocksDB database: its column families, its format, the offsets of the contacts
topic, the contacts family's reads, close and the compaction thread (``Storage``).

``meta`` holds the store's format (``FORMAT``): a store written by a version with other indexes is
emptied of everything the contacts topic determines when opened, so the materializer rebuilds it
(indexes included) from the topic's beginning; the join state stays.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, ReadOptions, WriteBatch

from contacts_streams.events import EventCodec
from contacts_streams.serialization import ContactCodec
from contacts_streams.store import erase
from contacts_streams.store.layout import (
    _I64,
    _PARTITION,
    _U64,
    CONTACT_COUNT,
    CONTACTS,
    CONVERSATION_METADATA,
    COUNTERS,
    DERIVED,
    DISMISSED,
    ERASED,
    FAMILIES,
    FORMAT,
    FORMAT_KEY,
    JOIN_STATE,
    META,
    OFFSETS,
    TOPIC_KEY,
    TOPIC_STATE,
    _keys,
    _pairs,
)

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be opened or is inconsistent; the caller rebuilds it."""


class StoreLocked(RuntimeError):
    """Another process owns the store: never wipe it, stop instead."""


WRITE_BUFFERS_BYTES = 64 * 1024 * 1024
# The MANIFEST records each SST file's smallest and largest key (an index key holds an e-mail, a
# name) and keeps every record until it rolls over (1 GB by default): roll it at every change of
# the file set, so a compaction's new MANIFEST names only the files that are left. It is small
# (a few hundred bytes a file) and changes only on flushes and compactions.
MANIFEST_ROLL_BYTES = 1


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    # One memtable budget for all column families, or each would take 64 MB of its own.
    options.set_db_write_buffer_size(WRITE_BUFFERS_BYTES)
    options.set_max_manifest_file_size(MANIFEST_ROLL_BYTES)
    return options


# The block cache every family shares (what each family had alone before). Reads that miss it
# read the OS's page cache (a pread and a block's decompression): at 1M contacts the reads are
# spread over far more than any cache here would hold, so it bounds memory, not speed.
BLOCK_CACHE_BYTES = 32 * 1024 * 1024
# Bits of the Bloom filter a key: about 1% false positives.
BLOOM_BITS_PER_KEY = 10


# The families read by key (get): the others are only ever scanned from a seek, which a
# whole-key filter does not serve, and they hold most of the keys (search tokens, identities).
POINT_READ = frozenset((CONTACTS, DERIVED, ERASED, COUNTERS, META, JOIN_STATE, CONVERSATION_METADATA, DISMISSED))


def _family_options(family: str, cache: Cache) -> Options:
    """A column family's options. Every family reads its blocks through the one block cache
    of the store: left alone, RocksDB gives each family a 32 MB cache of its own, and at 1M
    contacts the families a write and the reads touch filled six or seven of them (measured:
    the contacts family's alone held 33.5 MB after 300k reads). The families read by key also
    get a whole-key Bloom filter in every table file, so a read of a key the store does not
    hold (a rebuild reads the derived entry of every new contact) skips the files without
    reading their index and data blocks. Table files written before have none until a
    compaction rewrites them; what they hold and how is the same, so an older store opens as
    it is."""
    options = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    if family in POINT_READ:
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    return options


# The table files the store last verified or wrote, with their CRC-32: JSON {name: crc}.
VERIFIED_TABLES = "verified-tables.json"
_CHUNK = 8 * 1024 * 1024


def _tables(path: Path, known: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
    """Every table file: name -> (size, mtime ns, CRC-32). One in `known` with the same size and
    mtime keeps its CRC without being read."""
    out: dict[str, tuple[int, int, int]] = {}
    for table in sorted(path.glob("*.sst")):
        try:
            stat = table.stat()
            seen = known.get(table.name)
            if seen is not None and seen[:2] == (stat.st_size, stat.st_mtime_ns):
                out[table.name] = seen
                continue
            crc = 0
            with table.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    crc = zlib.crc32(chunk, crc)
            out[table.name] = (stat.st_size, stat.st_mtime_ns, crc)
        except FileNotFoundError:
            continue  # deleted by a compaction meanwhile: not part of the store any more
    return out


def _read_verified(path: Path) -> dict[str, int] | None:
    try:
        raw = json.loads((path / VERIFIED_TABLES).read_text())
        return {str(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _write_verified(path: Path, tables: dict[str, tuple[int, int, int]]) -> None:
    target = path / VERIFIED_TABLES
    temporary = path / (VERIFIED_TABLES + ".tmp")
    try:
        temporary.write_text(json.dumps({name: crc for name, (_size, _mtime, crc) in tables.items()}))
        os.replace(temporary, target)
    except OSError as err:  # a read-only or full disk: the next open reads every block instead
        log.warning("cannot record the verified table files of %s: %s", path, err)


class Storage:
    """The database one process owns; its threads may read while the materializer writes. What
    every part of the store shares: the families (``_cf``, ``_handle``), the write lock each
    part's write batch takes, and the compaction an erase asks for."""

    def __init__(
        self, path: str | Path, codec: ContactCodec, phone_region: str | None = None, event_codec: EventCodec | None = None
    ):
        self.path = Path(path)
        self.codec = codec
        self.event_codec = event_codec or EventCodec(subject=None)
        # For records without the identities header only (see the identities module).
        self.phone_region = phone_region
        self.upgraded_from: str | None = None
        self._write_lock = threading.Lock()
        # Bumped (under the write lock) after every write of the contacts topic's families: a
        # read that keeps something it derived from them (a search's total) serves it only while
        # this has not moved.
        self.generation = 0
        # compact_personal runs on a thread of its own (an erase's apply never waits for it);
        # requests that come while it runs are served by one more run.
        self._compaction = threading.Condition()
        self._compaction_wanted = False
        self._compaction_thread: threading.Thread | None = None
        self.compactions = 0  # runs finished
        self.compactions_requested = 0
        self._tables: dict[str, tuple[int, int, int]] | None = None  # set once verified
        self.read_every_block = False  # whether the open read the whole store (see _verify)
        self._open()
        self._upgrade()
        # Whether the erased family may hold an id: only an erase writes one, and a record of a
        # live contact then reads it (False skips that read, the store being this process's own).
        it = self._cf[ERASED].iter(ReadOptions())
        it.seek_to_first()
        self.may_hold_erased = it.valid()
        del it  # a live iterator keeps the database open (and locked) after close()

    # --- lifecycle -------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            # The cache must outlive the database: it is dropped with the store (close()).
            cache = Cache(BLOCK_CACHE_BYTES)
            self._block_cache: Cache | None = cache
            families = {f: _family_options(f, cache) for f in FAMILIES}
            self._db = Rdict(str(self.path), options=_options(), column_families=families)
        except Exception as err:  # rocksdict raises plain Exception on corruption and lock errors
            if "lock" in str(err).lower():
                raise StoreLocked(f"another process holds the store at {self.path}: {err}") from err
            raise StoreError(f"cannot open the store at {self.path}: {err}") from err
        self._cf = {f: self._db.get_column_family(f) for f in FAMILIES}
        self._handle = {f: self._db.get_column_family_handle(f) for f in FAMILIES}
        try:
            self._verify()
        except Exception as err:
            self.close()
            raise StoreError(f"the store at {self.path} is damaged: {err}") from err

    def _verify(self) -> None:
        """Read every block once, unless every table file is byte for byte one this store
        verified or wrote before: RocksDB opens a store with damaged data blocks without a
        word, and the damage would surface later as failed reads of a service that said it
        was ready. Reading every entry took 9 s at 1M contacts; a CRC of the files takes
        about a second, and a table file never changes once written (a damaged one no longer
        matches its CRC, a new one is not listed: both mean the full read)."""
        tables = _tables(self.path, {})
        self.read_every_block = _read_verified(self.path) != {name: crc for name, (_size, _mtime, crc) in tables.items()}
        if self.read_every_block:
            started = time.monotonic()
            self._read_every_block()
            log.info("read every block of the store's %d table files in %.1f s", len(tables), time.monotonic() - started)
            _write_verified(self.path, tables)  # otherwise the record on disk says this already
        self._tables = tables

    def _read_every_block(self) -> None:
        for family in FAMILIES:
            it = self._cf[family].iter(ReadOptions())
            try:
                it.seek_to_first()
                while it.valid():
                    it.next()
                it.status()  # an iterator stops at damage silently; status() raises it
            finally:
                del it  # a live iterator keeps the database open (and locked) after close()

    def _upgrade(self) -> None:
        """A store of another format loses what the contacts topic determines: the materializer
        finds no offsets and reads the topic from its beginning, building every index."""
        found = self._cf[META].get(FORMAT_KEY)
        if found == FORMAT:
            return
        if found is not None or self.count() or self.offsets():
            self.upgraded_from = (found or b"1").decode()
            log.warning(
                "the store at %s has format %s, this version writes %s: rebuilding it from the topic",
                self.path,
                self.upgraded_from,
                FORMAT.decode(),
            )
            self.reset()
        self._cf[META][FORMAT_KEY] = FORMAT

    def close(self) -> None:
        if self._db is None:
            return  # type: ignore[unreachable]  # typed as open: None only once closed, as here
        with self._compaction:
            self._compaction_wanted = False
            thread = self._compaction_thread
        if thread is not None:
            thread.join()  # a compaction in progress ends first: never cut off halfway
        # Column-family handles keep the database alive: drop them all before close, or a
        # reopen in this process fails on RocksDB's lock.
        self._cf.clear()
        self._handle.clear()
        self._db.close()
        self._db = None  # type: ignore[assignment]  # see above
        self._block_cache = None  # only now: the database used it until its close
        # The tables as this process leaves them: what it wrote is as good as what it read
        # at open (files unchanged since then keep their CRC without being read again).
        if self._tables is not None:  # never for a store that failed its verification
            _write_verified(self.path, _tables(self.path, self._tables))

    @classmethod
    def open_or_rebuild(
        cls, path: str | Path, codec: ContactCodec, phone_region: str | None = None, event_codec: EventCodec | None = None
    ) -> tuple[Self, str | None]:
        """Open the store; a corrupt one is wiped. Returns the store and why it was wiped, if it was."""
        try:
            return cls(path, codec, phone_region, event_codec), None
        except StoreError as err:
            log.warning("store unusable, rebuilding from the topic: %s", err)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, codec, phone_region, event_codec), str(err)

    def reset(self) -> None:
        """Forget everything the contacts topic produced (a rebuild follows)."""
        with self._write_lock:
            batch = WriteBatch(raw_mode=True)
            for family in TOPIC_STATE:
                if family == META:
                    continue
                for key in _keys(self._cf[family]):
                    batch.delete(key, self._handle[family])
            batch.delete(TOPIC_KEY, self._handle[META])
            self._db.write(batch)
            self.generation += 1
            self.may_hold_erased = False

    # --- where the materializer is in the contacts topic -----------------------------------

    def topic(self) -> str | None:
        raw = self._cf[META].get(TOPIC_KEY)
        return raw.decode() if raw is not None else None

    def offsets(self) -> dict[int, int]:
        """partition -> the next offset to read."""
        return {_PARTITION.unpack(k)[0]: _U64.unpack(v)[0] for k, v in _pairs(self._cf[OFFSETS])}

    def erased(self) -> list[tuple[str, int]]:
        """(contact id, when its erased tombstone was written in ms) of every erased id that
        has not come back (an auto-created id whose conversation got a new message)."""
        return erase.erased(self)

    # --- erase: the erased ids, the compaction after an erase -------------------------------

    def request_compaction(self) -> None:
        """Compact the personal families soon, on a thread of its own (see compact_personal)."""
        with self._compaction:
            self._compaction_wanted = True
            self.compactions_requested += 1
            if self._compaction_thread is None:
                self._compaction_thread = threading.Thread(
                    target=self._compact_while_wanted, name="store-compaction", daemon=True
                )
                self._compaction_thread.start()

    def wait_compacted(self, timeout: float) -> bool:
        """Wait until every compaction requested so far has run."""
        deadline = time.monotonic() + timeout
        with self._compaction:
            while self._compaction_wanted or self._compaction_thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._compaction.wait(left)
            return True

    def _compact_while_wanted(self) -> None:
        while True:
            with self._compaction:
                if not self._compaction_wanted or self._db is None:
                    self._compaction_wanted = False
                    self._compaction_thread = None
                    self._compaction.notify_all()
                    return
                self._compaction_wanted = False
            try:
                self.compact_personal()
            except Exception:  # a store that cannot compact is still a store: say so, go on
                log.exception("compacting the store after an erase failed")
            with self._compaction:
                self.compactions += 1
                self._compaction.notify_all()

    def compact_personal(self) -> None:
        """Make RocksDB let go of an erase's deleted bytes (``erase.compact_personal``)."""
        erase.compact_personal(self)

    # --- reads -----------------------------------------------------------------------------

    def get_bytes(self, contact_id: str) -> bytes | None:
        return self._cf[CONTACTS].get(contact_id.encode())

    def get(self, contact_id: str) -> dict | None:
        raw = self.get_bytes(contact_id)
        return self.codec.decode_contact(raw) if raw is not None else None

    def count(self) -> int:
        raw = self._cf[COUNTERS].get(CONTACT_COUNT)
        return _I64.unpack(raw)[0] if raw is not None else 0

    def items_bytes(self) -> Iterable[tuple[bytes, bytes]]:
        return _pairs(self._cf[CONTACTS])
