"""The list of contacts in name order, a page at a time (``NamePages``), and its cursors."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rocksdict import ReadOptions

from contacts_streams import model
from contacts_streams.store.layout import (
    _ID_LENGTH,
    _NAMED,
    _UNNAMED,
    CONTACTS,
    NAMES,
    SEPARATOR,
    _is_id,
    seek_after,
    seek_before,
)

if TYPE_CHECKING:
    from contacts_streams.store.storage import Storage

FORWARD, BACKWARD = b"n", b"p"
# A cursor holds the sort key of the contact at the page's edge. Names are up to
# model.MAX_STRING_LENGTH characters, and case folding and NFKC can make them several times
# longer in UTF-8, so a long name's cursor holds only CURSOR_NAME_BYTES of it, the contact's id
# and a digest of its whole key (see _resolve). Its largest shape, base64-encoded, stays well
# under model.MAX_CURSOR_LENGTH.
CURSOR_NAME_BYTES = 512
_CURSOR_DIGEST_BYTES = 8
_LONG_NAMED = b"\x03"


class BadCursor(ValueError):
    """A list cursor this store did not hand out."""


@dataclass(frozen=True)
class Page:
    contacts: list[Any]  # the contact dicts, or what a page's `decode` made of their bytes
    previous_cursor: str | None
    next_cursor: str | None
    total: int


class NamePages:
    """``contacts.list``: the names family read from a cursor's position."""

    def __init__(self, store: Storage):
        self._store = store

    def page(self, cursor: str | None, page_size: int, decode: Callable[[bytes], Any] | None = None) -> Page:
        """A page of contacts in name order; the cost does not grow with the page's position.
        `decode`: what to make of each contact's stored bytes (default: the contact dict)."""
        decode = decode or self._store.codec.decode_contact
        direction, after = self._resolve(*_decode_cursor(cursor)) if cursor else (FORWARD, None)
        names = self._store._cf[NAMES]
        it = names.iter(ReadOptions())
        if direction == FORWARD:
            seek_after(it, after)
            keys, ids = _take(it, it.next, page_size + 1)
            more_after = len(keys) > page_size
            keys, ids = keys[:page_size], ids[:page_size]
            more_before = after is not None and self._has_before(keys[0] if keys else after, inclusive=not keys)
        else:
            assert after is not None, "a backward page comes from a cursor"
            seek_before(it, after)
            keys, ids = _take(it, it.prev, page_size + 1)
            more_before = len(keys) > page_size
            keys, ids = keys[:page_size][::-1], ids[:page_size][::-1]
            more_after = self._has_after(keys[-1] if keys else after, inclusive=not keys)
        del it
        # One multi-get for the page: a get each was a fifth of the service's time serving 1000-contact
        # pages (py-spy), the multi-get is 1-2%.
        raws: list[bytes | None] = self._store._cf[CONTACTS].get(ids) if ids else []  # type: ignore[arg-type, assignment]
        contacts = [decode(raw) for raw in raws if raw is not None]
        return Page(
            contacts=contacts,
            previous_cursor=_encode_cursor(BACKWARD, keys[0]) if keys and more_before else None,
            next_cursor=_encode_cursor(FORWARD, keys[-1]) if keys and more_after else None,
            total=self._store.count(),
        )

    def _resolve(self, direction: bytes, cursor_key: bytes) -> tuple[bytes, bytes]:
        """(direction, the names-index key to page from) of a decoded cursor.

        A short name's cursor holds its whole sort key. A long name's holds a prefix of it, the
        contact's id and a digest of the whole key: while the contact keeps that key (the usual
        case), its current key is the exact position. If it was renamed or deleted meanwhile, the
        page starts at the edge of every name sharing the prefix, so paging may show a few
        contacts twice but never skips one.
        """
        if cursor_key[:1] != _LONG_NAMED:
            return direction, cursor_key
        prefix, contact_id, digest = _split_long(cursor_key)
        raw = self._store._cf[CONTACTS].get(contact_id)
        if raw is not None:
            key = model.sort_key(self._store.codec.decode_contact(raw))
            if _digest(key) == digest:
                return direction, key
        start = _NAMED + prefix
        # 0xFF never occurs in UTF-8: start + 0xFF sorts after every key beginning with start.
        return direction, start if direction == FORWARD else start + b"\xff"

    def _has_before(self, key: bytes, inclusive: bool) -> bool:
        it = self._store._cf[NAMES].iter(ReadOptions())
        it.seek_for_prev(key)
        if it.valid() and it.key() == key and not inclusive:
            it.prev()
        return it.valid()

    def _has_after(self, key: bytes, inclusive: bool) -> bool:
        it = self._store._cf[NAMES].iter(ReadOptions())
        it.seek(key)
        if it.valid() and it.key() == key and not inclusive:
            it.next()
        return it.valid()


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=_CURSOR_DIGEST_BYTES).digest()


def _encode_cursor(direction: bytes, key: bytes) -> str:
    if key[:1] == _NAMED and len(key) > 1 + CURSOR_NAME_BYTES + 1 + _ID_LENGTH:
        contact_id = key[-_ID_LENGTH:]
        key = _LONG_NAMED + key[1 : 1 + CURSOR_NAME_BYTES] + SEPARATOR + contact_id + _digest(key)
    return base64.urlsafe_b64encode(direction + key).decode().rstrip("=")


def _split_long(key: bytes) -> tuple[bytes, bytes, bytes]:
    """(name prefix, contact id, digest) of a long name's cursor key."""
    digest = key[-_CURSOR_DIGEST_BYTES:]
    contact_id = key[-_CURSOR_DIGEST_BYTES - _ID_LENGTH : -_CURSOR_DIGEST_BYTES]
    return key[1 : -_CURSOR_DIGEST_BYTES - _ID_LENGTH - 1], contact_id, digest


def _b64(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise BadCursor("cursor is not a cursor this service handed out") from None


def _decode_cursor(cursor: str) -> tuple[bytes, bytes]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise BadCursor("cursor is not a cursor this service handed out") from None
    direction, key = raw[:1], raw[1:]
    if direction not in (FORWARD, BACKWARD) or not _is_cursor_key(key):
        raise BadCursor("cursor is not a cursor this service handed out")
    return direction, key


def _is_cursor_key(key: bytes) -> bool:
    # The shapes model.sort_key makes (0x01 + folded name + 0x00 + id, or 0x02 + id) and a long
    # name's (0x03 + CURSOR_NAME_BYTES of the name + 0x00 + id + digest).
    if key[:1] == _NAMED and SEPARATOR in key:
        return _is_id(key.rsplit(SEPARATOR, 1)[1])
    if key[:1] == _UNNAMED:
        return _is_id(key[1:])
    if key[:1] == _LONG_NAMED and len(key) == 1 + CURSOR_NAME_BYTES + 1 + _ID_LENGTH + _CURSOR_DIGEST_BYTES:
        prefix, contact_id, _ = _split_long(key)
        separator = key[1 + CURSOR_NAME_BYTES : 2 + CURSOR_NAME_BYTES]
        return separator == SEPARATOR and SEPARATOR not in prefix and _is_id(contact_id)
    return False


def _take(it, step, count: int) -> tuple[list[bytes], list[bytes]]:
    """Up to ``count`` keys and values from where the iterator stands, moving it with ``step``."""
    keys: list[bytes] = []
    ids: list[bytes] = []
    while it.valid() and len(keys) < count:
        keys.append(it.key())
        ids.append(it.value())
        step()
    return keys, ids
