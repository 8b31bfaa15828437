"""The hot reads (`contacts.info`, `.list`, `.search`, `.lookup`) as functions of the parsed
body: each validates with `model`, reads the store and returns the JSON text of its 200 answer,
or raises what the error handlers answer (a ValidationError, NotFound, BadCursor, Unavailable).
The Flask views and the fast path (`fastpath`) both call them, so an answer is computed one way.

`ContactJson` keeps the JSON of recently served contacts keyed by the bytes the store holds for
them: the same bytes always decode to the same contact, so a hot contact skips the Avro decode
and the JSON encode, and a changed contact (other bytes) can never be served stale.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable
from typing import Any

import orjson

from api.wire import MIN_POSITION, paged_body
from contacts_streams import model, shapes
from contacts_streams.commands import BadPosition
from contacts_streams.service import Service
from contacts_streams.store import Page

# What the cache may hold (its keys and values, plus a rough per-entry overhead). The service's
# RSS budget is tight at a million contacts (#13): 16 MB keeps ~10,000 typical contacts.
CONTACT_JSON_BYTES = 16 * 1024 * 1024
# The same for the contacts of list and search pages (their JSON has no merge_history default):
# the pages people read again and again (an inbox's first page, a search being typed) are few.
PAGE_ITEM_JSON_BYTES = 8 * 1024 * 1024
# A contact larger than this is encoded each time: a few huge contacts would evict many small ones.
MAX_CACHED_CONTACT_BYTES = 64 * 1024
_ENTRY_OVERHEAD = 160  # two bytes objects' headers and the dict slot


class ContactJson:
    """A bounded map from a contact's stored bytes to the JSON of its info answer (or, with
    `shape`, of another answer's view of the contact: a page's items have no history default).

    Reads take no lock (a dict lookup is atomic); inserts evict the oldest entries first. An
    entry is never wrong, only possibly absent, so the order of racing inserts does not matter.
    """

    def __init__(
        self, decode: Callable[[bytes], dict], max_bytes: int = CONTACT_JSON_BYTES, shape: Callable[[dict], dict] | None = None
    ):
        self._decode = decode
        self._shape = shape or with_history
        self._max_bytes = max_bytes
        self._entries: dict[bytes, bytes] = {}
        # The keys oldest first. Not next(iter(self._entries)): a dict that had its first entries
        # popped scans their dead slots on every such call, up to 28 us an insert at 40,000
        # entries (a third of a 1000-contact list page at a million contacts went there).
        self._order: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def json(self, raw: bytes) -> bytes:
        """The JSON (UTF-8) of the contact these stored bytes hold, in this cache's shape."""
        text = self._entries.get(raw)
        if text is not None:
            return text
        text = decoded_contact_json(self._shape(self._decode(raw)))
        size = len(raw) + len(text) + _ENTRY_OVERHEAD
        if size <= MAX_CACHED_CONTACT_BYTES and self._max_bytes > 0:
            with self._lock:
                if raw not in self._entries:
                    self._entries[raw] = text
                    self._order.append(raw)
                    self._bytes += size
                    while self._bytes > self._max_bytes:
                        old = self._order.popleft()
                        self._bytes -= len(old) + len(self._entries.pop(old)) + _ENTRY_OVERHEAD
        return text


def contact_json(value: Any) -> bytes:
    """`model.compact_json(value)` in UTF-8, by orjson where that writes the same bytes (#13: at a
    million contacts most info calls miss the cache, and the encode is part of each)."""
    return model.exact_json_bytes(value)


def _holds_float(contact: dict) -> bool:
    """``model.holds_float`` of a contact as the codec decodes it, without walking all of it: of
    its values only the timezone (an Avro double) and the metadata can be floats
    (schemas/contact.avsc), in it and in each contact merged into it."""
    if contact.get("timezone").__class__ is float:
        return True
    metadata = contact.get("metadata")
    if metadata and model.holds_float(metadata):
        return True
    return any(_holds_float(entry) for entry in contact.get("merge_history") or ())


def decoded_contact_json(contact: dict) -> bytes:
    """``contact_json`` of a contact the codec decoded (or its answer's shape of it): the same
    bytes, with the float check looking only where a float can be (a tenth of a list page's
    time went to walking every value)."""
    if not _holds_float(contact):
        try:
            return orjson.dumps(contact)
        except TypeError:  # not JSON's types after all, or nested past orjson's limit
            pass
    return model.exact_json_bytes(contact)


def with_history(contact: dict) -> dict:
    return {**contact, "merge_history": contact.get("merge_history", [])}


def wait_for_min_position(service: Service, token: str | None, timeout_s: float, timed_out: bool = False) -> None:
    """Return once this replica applied the write `token` names (no token: at once).
    `timed_out`: the fast path already waited the whole timeout for it; answer without a second wait."""
    if token is None:
        return
    try:
        service.contacts.wait_for_position(token, 0.0 if timed_out else timeout_s)
    except BadPosition as err:
        raise model.ValidationError(MIN_POSITION, f"{MIN_POSITION}: {err}") from None


def info(service: Service, cache: ContactJson, payload: Any, ignored: list[str], wait: Callable[[], None]) -> bytes:
    kind, value = model.validate_info(payload, ignored)
    wait()
    return info_json(service, cache, kind, value)


# The body nearly every info call sends, `{"id": "<uuid>"}` (JSON whitespace allowed around
# the tokens), matched on the bytes: what json.loads and validate_info make of it, without them.
_WS = rb"[ \t\n\r]*"
_UUID = shapes.UUID_PATTERN[1:-1].encode()
_INFO_BY_ID = re.compile(b"".join([_WS, rb"\{", _WS, rb'"id"', _WS, b":", _WS, b'"(', _UUID, b')"', _WS, rb"\}", _WS, rb"\Z"]))


def info_id(body: bytes) -> str | None:
    """The contact id of an info body that is exactly `{"id": "<uuid>"}`, as validate_info gives
    it (lowercase, no ignored fields); None for any other body (validate it whole instead)."""
    match = _INFO_BY_ID.match(body)
    return match.group(1).decode().lower() if match is not None else None


def info_json(service: Service, cache: ContactJson, kind: str, value: str) -> bytes:
    """The info answer for a validated ("id" or "conversation_id", value)."""
    store = service.store
    contact_id = value if kind == "id" else store.contact_id_for_conversation(value)
    raw = store.get_bytes(contact_id) if contact_id else None
    if raw is None:  # the errors as Contacts names them (NotFound, with merged_into)
        contacts = service.contacts
        contact = contacts.info(value) if kind == "id" else contacts.info_by_conversation(value)
        return contact_json(with_history(contact))  # it appeared meanwhile
    return cache.json(raw)


def page_item(contact: dict) -> dict:
    return contact


def list_(service: Service, items: ContactJson, payload: Any, ignored: list[str], wait: Callable[[], None]) -> bytes:
    cursor, page_size = model.validate_list(payload, ignored)
    wait()
    return _page_json(service.contacts.list(cursor, page_size, decode=items.json))


def search(service: Service, items: ContactJson, payload: Any, ignored: list[str], wait: Callable[[], None]) -> bytes:
    query, cursor, page_size = model.validate_search(payload, ignored)
    wait()
    return _page_json(service.finder.search(query, cursor, page_size, decode=items.json))


def _page_json(page: Page) -> bytes:
    """`paged_body`'s JSON from the contacts' JSON texts: the same bytes as encoding the page
    whole (compact JSON of a list is its items' compact JSON joined by commas), without decoding
    and encoding contacts whose stored bytes the cache has seen."""
    pagination = paged_body(None, page.next_cursor, page.previous_cursor, total=page.total)["pagination_data"]
    return b'{"data":[' + b",".join(page.contacts) + b'],"pagination_data":' + contact_json(pagination) + b"}"


def lookup(service: Service, items: ContactJson, payload: Any, ignored: list[str], wait: Callable[[], None]) -> bytes:
    via = model.validate_lookup(payload, ignored)
    wait()
    # The found contacts' JSON from the cache the pages use (a lookup names the same contacts
    # again and again): the same bytes as encoding {"data": [...]} whole.
    return b'{"data":[' + b",".join(service.finder.lookup(via, decode=items.json)) + b"]}"
