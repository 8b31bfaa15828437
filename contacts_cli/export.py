"""Export every live contact to FILE.csv or FILE.ndjson, paged through `contacts.list`.

NDJSON (one contact a line, as the API serves it, merge_history included) is the lossless
format. CSV has the columns `id`, the scalar fields, `via.email`, `via.phone` and every other
`via.<key>` some contact has, `address.<field>`, then `metadata` and `conversations` as JSON
text, `created_at` and `updated_at`; `contacts import` reads it back. An empty cell is an absent
field (a field set to "" exports as an empty cell too). Which `via` keys occur is known only at
the end: while every contact's are `email` and `phone` (every CSV has those columns) the rows
go straight to the file; from the first page with another key on, rows are kept in a temporary
file beside FILE and the CSV is written whole at the end (``CsvOut``): one pass over the
service, a disk's worth of room for a second copy then.

The file appears when it is complete (written as FILE.part, then renamed). Contacts written
while the export runs may or may not be in it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import queue
import sys
import threading
import time
from pathlib import Path

from contacts_cli._progress import Progress
from contacts_cli._service import Client, ServiceError, add_service_arguments, error_text, service_token, service_url
from contacts_streams import model

HELP = "export every contact to a CSV or NDJSON file (progress bar)"

SCALAR_COLUMNS = ("id",) + model.SCALAR_FIELDS
FIRST_VIA = ("email", "phone")
ADDRESS_COLUMNS = tuple(f"address.{name}" for name in model.ADDRESS_FIELDS)
LAST_COLUMNS = ("metadata", "conversations", "created_at", "updated_at")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="FILE.csv or FILE.ndjson (or FILE.jsonl)")
    parser.add_argument("--format", choices=("csv", "ndjson"), help="[default: from the file's suffix]")
    parser.add_argument("--delimiter", default=",", help="CSV field separator [default: ,]")
    parser.add_argument("--page-size", type=int, default=model.MAX_PAGE_SIZE, help=f"contacts per contacts.list call [default: {model.MAX_PAGE_SIZE}]")
    parser.add_argument("--retry-for", type=float, default=120.0, metavar="SECONDS", help="keep retrying a page on 503 / no connection this long [default: 120]")
    add_service_arguments(parser)


def csv_columns(via_keys) -> list[str]:
    others = sorted(k for k in via_keys if k not in FIRST_VIA)
    return [*SCALAR_COLUMNS, *(f"via.{k}" for k in (*FIRST_VIA, *others)), *ADDRESS_COLUMNS, *LAST_COLUMNS]


def csv_row(contact: dict, columns: list[str]) -> list[str]:
    return row_maker(columns)(contact)


# The CSV's columns but the via ones, in its order: a page's rows are made of these before the
# via keys are known (SCALAR_COLUMNS first, the via columns go after them).
FIXED_COLUMNS = [*SCALAR_COLUMNS, *ADDRESS_COLUMNS, *LAST_COLUMNS]


def spool_page(out, contacts: list[dict], make_fixed) -> None:
    """One page to the CSV's spool: (the fixed cells, the via) of each contact, pickled."""
    pickle.dump([(make_fixed(contact), contact.get("via") or {}) for contact in contacts], out, protocol=pickle.HIGHEST_PROTOCOL)


def spooled_rows(spool, via_keys: list[str]):
    """The CSV rows of the spooled pages, with these via columns."""
    split = len(SCALAR_COLUMNS)
    while True:
        try:
            page = pickle.load(spool)
        except EOFError:
            return
        for fixed, via in page:
            yield [*fixed[:split], *(_cell(via.get(key)) for key in via_keys), *fixed[split:]]


class CsvOut:
    """An export's CSV. While every `via` key is `email` or `phone` (the columns every CSV has),
    rows go straight to the file as pages arrive: no second pass. From the first page with
    another key on, pages are spooled (``spool_page``), and ``finish`` writes the file whole:
    the rows written before, widened by empty cells (no contact before had those keys), then
    the spooled ones."""

    def __init__(self, file: Path, delimiter: str):
        self.delimiter = delimiter
        self.direct_path = file.with_name(file.name + ".part")
        self.spool_path = file.with_name(file.name + ".part.rows")
        self.whole_path = file.with_name(file.name + ".part.whole")
        self._direct = open(self.direct_path, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._direct, delimiter=delimiter)
        self._writer.writerow(csv_columns(()))
        self._make = row_maker(csv_columns(()))
        self._make_fixed = row_maker(FIXED_COLUMNS)
        self._spool = None
        self.via_keys: set[str] = set()

    def page(self, contacts: list[dict]) -> None:
        keys: set[str] = set()
        for contact in contacts:
            keys.update(contact.get("via") or ())
        if self._spool is None:
            if keys <= _FIRST_VIA_KEYS:
                self._writer.writerows(self._make(contact) for contact in contacts)
                return
            self._spool = open(self.spool_path, "wb")
        spool_page(self._spool, contacts, self._make_fixed)
        self.via_keys |= keys

    def finish(self) -> Path:
        """The complete file (still under a temporary name)."""
        self._direct.close()
        if self._spool is None:
            return self.direct_path
        self._spool.close()
        columns = csv_columns(self.via_keys)
        via_order = [column[len("via.") :] for column in columns if column.startswith("via.")]
        after = len(SCALAR_COLUMNS) + len(FIRST_VIA)  # where the other via columns go
        gap = [""] * (len(via_order) - len(FIRST_VIA))
        with (
            open(self.direct_path, encoding="utf-8", newline="") as direct,
            open(self.spool_path, "rb") as spooled,
            open(self.whole_path, "w", encoding="utf-8", newline="") as out,
        ):
            rows = csv.reader(direct, delimiter=self.delimiter)
            next(rows)  # the header without the other via columns
            writer = csv.writer(out, delimiter=self.delimiter)
            writer.writerow(columns)
            writer.writerows([*row[:after], *gap, *row[after:]] for row in rows)
            writer.writerows(spooled_rows(spooled, via_order))
        return self.whole_path

    def close(self) -> None:
        self._direct.close()
        if self._spool is not None:
            self._spool.close()

    def leftovers(self) -> list[Path]:
        return [self.direct_path, self.spool_path, self.whole_path]


_FIRST_VIA_KEYS = frozenset(FIRST_VIA)


class NdjsonOut:
    """An export's NDJSON, written as pages arrive; the same calls as ``CsvOut``."""

    def __init__(self, file: Path):
        self.path = file.with_name(file.name + ".part")
        self._out = open(self.path, "wb")

    def page(self, contacts: list[dict]) -> None:
        # json.dumps(contact, ensure_ascii=False, separators=(",", ":")) byte for byte, by
        # orjson where that is the same
        self._out.write(b"".join(model.exact_json_bytes(contact) + b"\n" for contact in contacts))

    def finish(self) -> Path:
        self._out.close()
        return self.path

    def close(self) -> None:
        self._out.close()

    def leftovers(self) -> list[Path]:
        return [self.path]


def _cell(value) -> str:
    if value is None:
        return ""
    if value.__class__ is str:
        return value
    return json.dumps(value)  # a numeric timezone


def row_maker(columns: list[str]):
    """contact -> its CSV cells for these columns (the columns are worked out once, not per row)."""
    plan = []
    for column in columns:
        name, dot, key = column.partition(".")
        plan.append((column in ("metadata", "conversations"), name, key if dot else None))

    def make(contact: dict) -> list[str]:
        row = []
        for as_json, name, key in plan:
            value = contact.get(name)
            if as_json:
                row.append(model.exact_json_bytes(value).decode() if value else "")
                continue
            if key is not None:
                value = value.get(key) if value else None
            row.append(_cell(value))
        return row

    return make


def pages(client: Client, page_size: int):
    """(the page's answer as received, its total) page by page, to the list's end. Only the
    answer's small tail is read here, for the next cursor: the next page is asked for at once,
    and the service works on it while the reading side parses this one."""
    cursor = None
    while True:
        body = {"page_size": page_size} if cursor is None else {"page_size": page_size, "cursor": cursor}
        answer = client.post("/contacts.list", body, raw_ok=True)
        if answer.status != 200:
            raise ServiceError(f"contacts.list answered {error_text(answer)}")
        pagination = _pagination(answer.body)
        yield answer.body, pagination.get("total")
        cursor = pagination.get("next_cursor")
        if not cursor:
            return


# A page's answer ends with its pagination object. A quote inside a JSON string is escaped, so
# this key (closing quote and colon included) occurs in the text only as a key.
_PAGINATION_KEY = b'"pagination_data":'


def _pagination(raw: bytes) -> dict:
    at = raw.rfind(_PAGINATION_KEY)
    end = raw.rfind(b"}")
    if at >= 0 and end > at:
        try:
            tail = model.json_loads_exact(raw[at + len(_PAGINATION_KEY) : end])
            if isinstance(tail, dict):
                return tail
        except ValueError:
            pass  # not the last key after all: read the whole answer
    whole = page_of(raw)
    return whole.get("pagination_data") or {}


def page_of(raw: bytes) -> dict:
    """A page's answer, parsed (a body that is not a JSON object is an error of the service's)."""
    try:
        data = model.json_loads_exact(raw)
    except ValueError as err:
        raise ServiceError(f"contacts.list answered what is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ServiceError("contacts.list answered JSON that is not an object")
    return data


def prefetched(generator, depth: int = 2):
    """The generator's items, fetched by a thread of their own: the service works on the next
    page while this one is written."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def fetch():
        try:
            for item in generator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(end)
        except BaseException as err:  # noqa: BLE001 - raised again in the reading thread
            items.put(err)

    thread = threading.Thread(target=fetch, name="contacts-export-pages", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    kind = args.format or _format_of(args.file)
    if kind is None:
        print(f"contacts export: {args.file}: name it .csv or .ndjson, or pass --format", file=sys.stderr)
        return 2
    if not 1 <= args.page_size <= model.MAX_PAGE_SIZE:
        print(f"contacts export: --page-size must be between 1 and {model.MAX_PAGE_SIZE}", file=sys.stderr)
        return 2
    url = service_url(args)
    progress = Progress(f"exporting to {args.file.name}", None)
    client = Client(url, service_token(args), retry_for=args.retry_for, say=progress.say)
    out: CsvOut | NdjsonOut | None = None
    count = 0
    try:
        out = CsvOut(args.file, args.delimiter) if kind == "csv" else NdjsonOut(args.file)
        for raw, total in prefetched(pages(client, args.page_size)):
            contacts = page_of(raw).get("data") or []
            out.page(contacts)
            count += len(contacts)
            progress.update(count, total=max(total or 0, count) or None)
        os.replace(out.finish(), args.file)
    except ServiceError as err:
        progress.close()
        print(f"contacts export: {err.message}; nothing written to {args.file}", file=sys.stderr)
        return 1
    except OSError as err:
        progress.close()
        print(f"contacts export: cannot write {err.filename or args.file}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print(f"contacts export: interrupted after {count:,} contacts; nothing written to {args.file}", file=sys.stderr)
        return 130
    finally:
        progress.close()
        client.close()
        if out is not None:
            out.close()
            for leftover in out.leftovers():
                if leftover.exists():
                    leftover.unlink()
    seconds = time.monotonic() - started
    print(f"{args.file}: exported {count:,} contacts in {seconds:.1f}s ({count / seconds if seconds else 0:,.0f} rows/s) from {url}")
    return 0


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".ndjson", ".jsonl"):
        return "ndjson"
    return None
