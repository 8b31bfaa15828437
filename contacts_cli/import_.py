"""Import contacts from a CSV file through the service's `contacts.import`.

The file is read as it goes (a file of a million rows never sits in memory): UTF-8 with or
without a BOM, `,` or `;` (or tab) found from the header, quoted fields, CRLF or LF. Columns map
to fields by name (`name` -> display_name, `email`/`e-mail` -> via.email, `phone`/`mobile` ->
via.phone, `company` -> organization_name, `city` or `address.city` -> address.city, ...);
`via.<key>` and `metadata.<key>` columns go where they say; `--map COLUMN=FIELD` overrides
(`--map COLUMN=` ignores one). The columns `contacts export` writes are accepted back: `id`,
`created_at`, `updated_at` are ignored, `metadata` and `conversations` are JSON text. A column
that maps to nothing stops the import before anything is sent.

Every row is checked with the service's own model first (and e-mails and phones look like
e-mails and phones), so a batch never fails for a bad row: bad rows go to FILE.errors.csv
(line, field, message, then the row as it was; fix them there and import that file). The rest
goes in batches, each one `contacts.import` call: all of a batch or none of it.

Ctrl-C stops after the batch in flight and says how to resume (`--skip N`). A 503 or a lost
connection is retried with backoff, each batch with its own Idempotency-Key (from the file and
the batch's rows, so a resumed run sends the same key again).

Exit status: 0 all rows imported; 3 done, some rows rejected (see the errors file); 1 the service
failed; 2 the file or its columns cannot be used; 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from contacts_cli import _table
from contacts_cli._progress import Progress
from contacts_cli._service import Client, ServiceError, add_service_arguments, error_text, service_token, service_url
from contacts_streams import model

HELP = "import contacts from a CSV file (column mapping, row errors file, progress, resume)"

MAX_BATCH_BYTES = 8 * 1024 * 1024  # the service takes bodies up to 16 MB
_ELEMENT = re.compile(r"\[(\d+)\]\.?(.*)")

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE, EXIT_REJECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the CSV file")
    parser.add_argument("--map", action="append", metavar="COLUMN=FIELD", help="map a column to a field (via.email, metadata.plan, ...); COLUMN= ignores it; repeatable")
    parser.add_argument("--upsert-by", choices=("email", "phone"), help="update the contact that already has this e-mail / phone instead of creating another")
    parser.add_argument("--dry-run", action="store_true", help="read and check every row, write the errors file, send nothing")
    parser.add_argument("--skip", type=_not_negative, default=0, metavar="N", help="skip the first N rows (what an interrupted run says to resume with)")
    parser.add_argument("--batch-size", type=_batch_size, default=1000, metavar="N", help=f"rows per contacts.import call, 1..{model.MAX_IMPORT} [default: 1000]")
    parser.add_argument("--errors", type=Path, metavar="PATH", help="where rejected rows go [default: FILE with .errors.csv]")
    parser.add_argument("--delimiter", help="the field separator [default: found from the header: , ; or tab]")
    parser.add_argument("--encoding", default="utf-8", help="the file's encoding [default: utf-8, with or without BOM]")
    parser.add_argument("--retry-for", type=float, default=120.0, metavar="SECONDS", help="keep retrying a batch on 503 / no connection this long [default: 120]")
    add_service_arguments(parser)


def errors_path(file: Path) -> Path:
    name = file.name[: -len(file.suffix)] if file.suffix else file.name
    return file.with_name(name + ".errors.csv")


@dataclass
class Chunk:
    """Rows first..last of the file (1-based row numbers, after the header) and what became of them."""

    first_row: int
    first_line: int
    payloads: list[bytes] = field(default_factory=list)  # the contacts, JSON-encoded
    sources: list[tuple[int, list[str], str]] = field(default_factory=list)  # (line, cells, raw) per payload
    rejected: list[tuple[int, str, str, list[str] | None, str]] = field(default_factory=list)
    last_row: int = 0
    end_offset: int = 0
    size: int = 2


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    rejected: int = 0
    rows_done: int = 0  # rows (after --skip) whose fate is settled: resume point = skip + rows_done
    last_row: int = 0  # the file's row number of the last settled row
    retries: int = 0
    fatal: str | None = None
    unsupported: bool = False


class Importer:
    def __init__(self, args, client: Client | None, errors: _table.ErrorFile, progress: Progress, source: _table.CsvSource, mapping: _table.Mapping):
        self.args = args
        self.source_mapping = mapping
        self.client = client
        self.errors = errors
        self.progress = progress
        self.source = source
        self.outcome = Outcome(last_row=args.skip)
        self.stopping = threading.Event()
        self.file_key = str(args.file.resolve())
        self.in_flight: Chunk | None = None

    # --- the service side: one batch ----------------------------------------------------------

    def settle(self, chunk: Chunk) -> None:
        """Sends a chunk (unless a dry run) and records what became of its rows."""
        if self.client is not None and chunk.payloads:
            self.in_flight = chunk
            self._send(chunk)
            self.in_flight = None
        elif self.client is None:
            self.outcome.created += len(chunk.payloads)  # what would be created
        for line, column, message, cells, raw in sorted(chunk.rejected):
            self.errors.add(line, column, message, cells, raw)
        self.outcome.rejected += len(chunk.rejected)
        self.outcome.rows_done = chunk.last_row - self.args.skip
        self.outcome.last_row = chunk.last_row
        self.progress.update(self.outcome.rows_done, chunk.end_offset)

    def _body(self, encoded: list[bytes]) -> bytes:
        contacts = b"[" + b",".join(encoded) + b"]"
        if self.args.upsert_by:
            return b'{"contacts":' + contacts + b',"upsert_by":' + json.dumps(self.args.upsert_by).encode() + b"}"
        return contacts

    def _key(self, chunk: Chunk, data: bytes) -> str:
        digest = hashlib.sha256()
        for part in (self.file_key, str(chunk.first_line), hashlib.sha256(data).hexdigest()):
            digest.update(part.encode() + b"\n")
        return "contacts-import-" + digest.hexdigest()[:40]

    def _send(self, chunk: Chunk) -> None:
        pending = list(zip(chunk.payloads, chunk.sources))  # (encoded contact, its row)
        parts = [pending]
        while parts:
            part = parts.pop(0)
            if not part:
                continue
            data = self._body([p for p, _ in part])
            # Only the counts are used: the service need not read back and send every contact.
            answer = self.client.post("/contacts.import", data, self._key(chunk, data), minimal=True)
            self.outcome.retries += answer.retries
            if answer.status in (200, 201):
                self._count(answer.body, len(part))
                continue
            body = answer.body if isinstance(answer.body, dict) else {}
            if answer.status == 400 and self.args.upsert_by and not _ELEMENT.match(str(body.get("field") or "")):
                self.outcome.unsupported = True
                raise ServiceError(
                    f"this service does not support upsert yet (contacts.import with upsert_by answered {error_text(answer)}): "
                    "import without --upsert-by, or upgrade the service"
                )
            element = _ELEMENT.match(str(body.get("field") or ""))
            if answer.status in (400, 409) and element and int(element.group(1)) < len(part):
                # The service refused one row the checks here let through (a newer service, or a
                # conversation another contact holds): that row to the errors file, the rest again.
                index = int(element.group(1))
                line, cells, raw = part[index][1]
                inner = element.group(2)
                column = self.source_mapping.column_of(inner) or inner
                chunk.rejected.append((line, column, _strip_index(body.get("message", ""), index), cells, raw))
                parts.insert(0, part[:index] + part[index + 1 :])
                continue
            if answer.status == 413 and len(part) > 1:
                half = len(part) // 2
                parts[:0] = [part[:half], part[half:]]
                continue
            if answer.status == 413:
                line, cells, raw = part[0][1]
                chunk.rejected.append((line, "", f"the service refused the contact as too large: {body.get('message', '')}", cells, raw))
                continue
            if answer.status in (401, 403):
                raise ServiceError(f"the service refused the request ({error_text(answer)}): pass --token or set systemToken")
            raise ServiceError(f"contacts.import answered {error_text(answer)}")

    def _count(self, body, sent: int) -> None:
        # With upsert_by the service may say how many it updated; without, every row is new.
        if isinstance(body, dict) and isinstance(body.get("created"), int) and isinstance(body.get("updated"), int):
            self.outcome.created += body["created"]
            self.outcome.updated += body["updated"]
            return
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and all(isinstance(c, dict) and "upserted" in c for c in data):
            updated = sum(1 for c in data if c.get("upserted") == "updated")
            self.outcome.updated += updated
            self.outcome.created += len(data) - updated
            return
        self.outcome.created += sent

    # --- the file side: chunks ----------------------------------------------------------------

    def chunks(self):
        """The file's rows after --skip, checked, cut into batches."""
        mapping = self.source_mapping
        chunk: Chunk | None = None
        row = 0
        previous_offset = 0
        for record in self.source:
            row += 1
            if row <= self.args.skip:
                previous_offset = record.end_offset
                continue
            if chunk is None:
                chunk = Chunk(first_row=row, first_line=record.line)
            chunk.last_row, chunk.end_offset = row, record.end_offset
            if record.error is not None:
                chunk.rejected.append((record.line, "", record.error, record.cells, record.raw))
                previous_offset = record.end_offset
                continue
            try:
                payload = _table.row_payload(mapping, record.cells)
            except _table.RowError as err:
                chunk.rejected.append((record.line, err.field, err.message, record.cells, record.raw))
                previous_offset = record.end_offset
                continue
            upsert_by = self.args.upsert_by
            if upsert_by and not (payload.get("via") or {}).get(upsert_by, "").strip():
                # Matched by nothing, it would be created again on every run of the file.
                column = mapping.column_of(f"via.{upsert_by}") or f"via.{upsert_by}"
                chunk.rejected.append((record.line, column, f"the row has no via.{upsert_by} to --upsert-by", record.cells, record.raw))
                previous_offset = record.end_offset
                continue
            encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            size = len(encoded) + 1
            if chunk.payloads and chunk.size + size > MAX_BATCH_BYTES:
                # This row starts the next batch: the chunk ends with the row before.
                chunk.last_row, chunk.end_offset = row - 1, previous_offset
                yield chunk
                chunk = Chunk(first_row=row, first_line=record.line, last_row=row, end_offset=record.end_offset)
            chunk.payloads.append(encoded)
            chunk.sources.append((record.line, record.cells, record.raw))
            chunk.size += size
            previous_offset = record.end_offset
            if len(chunk.payloads) >= self.args.batch_size:
                yield chunk
                chunk = None
        if chunk is not None:
            yield chunk


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        binary = open(args.file, "rb")
    except OSError as err:
        print(f"contacts import: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return EXIT_UNUSABLE
    with binary:
        try:
            source = _table.CsvSource(binary, encoding=args.encoding, delimiter=args.delimiter)
            mapping = _table.map_columns(source.header, _table.parse_maps(args.map))
        except _table.MappingError as err:
            print(f"contacts import: {args.file}: {err}", file=sys.stderr)
            return EXIT_UNUSABLE
        except LookupError as err:
            print(f"contacts import: {err}", file=sys.stderr)
            return EXIT_UNUSABLE
        return _import(args, source, mapping, started)


def _import(args, source: _table.CsvSource, mapping: _table.Mapping, started: float) -> int:
    errors_file = args.errors or errors_path(args.file)
    if args.skip == 0 and errors_file.exists():
        errors_file.unlink()  # a stale errors file from an earlier run would mislead
    errors = _table.ErrorFile(errors_file, source.header, source.delimiter, append=args.skip > 0)
    try:
        total = os.fstat(source.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        total = None
    what = "checking" if args.dry_run else "importing"
    progress = Progress(f"{what} {args.file.name}", total)
    url = service_url(args)
    client = None if args.dry_run else Client(url, service_token(args), retry_for=args.retry_for, say=progress.say)
    importer = Importer(args, client, errors, progress, source, mapping)
    mapped = ", ".join(f"{h} -> {t}" for h, t in mapping.used)
    progress.say(f"columns: {mapped}" + (f"; skipping the first {args.skip:,} rows" if args.skip else ""))

    interrupted = []

    def on_sigint(_signum, _frame):
        if interrupted or args.dry_run:
            raise KeyboardInterrupt
        interrupted.append(True)
        importer.stopping.set()
        progress.say("stopping after the batch in flight (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if client is None:
            for chunk in importer.chunks():
                importer.settle(chunk)
        else:
            _pipeline(importer)
    except KeyboardInterrupt:
        progress.close()
        _print_summary(args, importer, errors, started, url)
        chunk = importer.in_flight
        if chunk is not None:
            print(
                f"stopped while rows {chunk.first_row:,}..{chunk.last_row:,} (lines {chunk.first_line:,}..) were being imported: "
                "the service may or may not have imported them.",
                file=sys.stderr,
            )
        _print_resume(args, importer)
        return EXIT_INTERRUPTED
    except ServiceError as err:
        importer.outcome.fatal = err.message
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.close()
        errors.close()
        if client is not None:
            client.close()
    _print_summary(args, importer, errors, started, url)
    if importer.outcome.fatal:
        print(f"contacts import: {importer.outcome.fatal}", file=sys.stderr)
        if not importer.outcome.unsupported:
            _print_resume(args, importer)
        return EXIT_FAILED
    if interrupted:
        _print_resume(args, importer)
        return EXIT_INTERRUPTED
    return EXIT_REJECTED if importer.outcome.rejected else EXIT_OK


def _pipeline(importer: Importer) -> None:
    """Reads and checks the next batches while the service works on the one in flight."""
    ready: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def send():
        while True:
            chunk = ready.get()
            if chunk is None or importer.stopping.is_set() or failure:
                return
            try:
                importer.settle(chunk)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                failure.append(err)
                importer.stopping.set()
                return

    sender = threading.Thread(target=send, name="contacts-import-sender", daemon=True)
    sender.start()
    try:
        for chunk in importer.chunks():
            while not importer.stopping.is_set():
                try:
                    ready.put(chunk, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if importer.stopping.is_set():
                break
    finally:
        while importer.stopping.is_set():  # stopped: the sender takes no more, drop what waits
            try:
                ready.get_nowait()
            except queue.Empty:
                break
        ready.put(None)
        while sender.is_alive():
            sender.join(0.2)
    if failure:
        raise failure[0]


def _print_summary(args, importer: Importer, errors: _table.ErrorFile, started: float, url: str) -> None:
    outcome = importer.outcome
    seconds = time.monotonic() - started
    rows = outcome.rows_done
    rate = rows / seconds if seconds > 0 else 0.0
    verb = "would create" if args.dry_run else "created"
    parts = [f"{verb} {outcome.created:,}"]
    if not args.dry_run:
        parts.append(f"updated {outcome.updated:,}")
    parts.append(f"rejected {outcome.rejected:,}" + (f" (rows in {errors.path})" if outcome.rejected else ""))
    where = " (dry run: nothing sent)" if args.dry_run else f" into {url}"
    print(f"{args.file}: {', '.join(parts)}; {rows:,} rows in {seconds:.1f}s ({rate:,.0f} rows/s){where}")
    if outcome.retries:
        print(f"{outcome.retries} request(s) retried after a 503 or a lost connection")


def _print_resume(args, importer: Importer) -> None:
    position = importer.outcome.last_row
    if position == args.skip:
        return  # nothing got done: the same command again is the way on
    options = _rest_of_command(sys.argv[1:] if sys.argv and "import" in sys.argv[1:2] else [])
    print(f"stopped after row {position:,} of {args.file}; to resume: contacts import {options or str(args.file)} --skip {position}", file=sys.stderr)


def _rest_of_command(argv: list[str]) -> str:
    """The command line as given, minus its --skip (the resume line adds the new one)."""
    import shlex

    out, skip_next = [], False
    for item in argv[1:]:
        if skip_next:
            skip_next = False
            continue
        if item == "--skip":
            skip_next = True
            continue
        if item.startswith("--skip="):
            continue
        out.append(item)
    return shlex.join(out)


def _strip_index(message: str, index: int) -> str:
    return message.replace(f"[{index}].", "", 1)


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _batch_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= model.MAX_IMPORT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {model.MAX_IMPORT}")
    return value
