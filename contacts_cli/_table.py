"""CSV files of contacts: reading them row by row (dialect, encoding, broken quoting), mapping
their columns to contact fields, and writing the rows the service refused.

Pure logic, no HTTP: `contacts import` and `contacts export` build on it, and its unit tests
need no service.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from contacts_streams import model

# --- the fields a column can map to ---------------------------------------------------------------

SCALARS = model.SCALAR_FIELDS
ADDRESS_FIELDS = model.ADDRESS_FIELDS
#: Columns holding a whole map as JSON text (what `export` writes for metadata and conversations).
JSON_COLUMNS = ("via", "address", "metadata", "conversations")
#: What the service sets: `export` writes them, `import` accepts them back and ignores them.
SERVED = model.SERVED_FIELDS
#: The columns of an errors file (FILE.errors.csv): ignored when that file is imported again.
ERROR_COLUMNS = ("error_line", "error_field", "error_message")
IGNORE = ""  # the target of a column that is read and dropped

# Header spellings people use, after _normal() (lowercase, "_" for spaces, hyphens and camelCase).
ALIASES: dict[str, str] = {
    **{name: name for name in SCALARS},
    **{f"address_{name}": f"address.{name}" for name in ADDRESS_FIELDS},
    "name": "display_name",
    "full_name": "display_name",
    "fullname": "display_name",
    "contact_name": "display_name",
    "contact": "display_name",
    "email": "via.email",
    "e_mail": "via.email",
    "email_address": "via.email",
    "e_mail_address": "via.email",
    "mail": "via.email",
    "phone": "via.phone",
    "phone_number": "via.phone",
    "mobile": "via.phone",
    "mobile_phone": "via.phone",
    "mobile_number": "via.phone",
    "cell": "via.phone",
    "cell_phone": "via.phone",
    "telephone": "via.phone",
    "tel": "via.phone",
    "company": "organization_name",
    "company_name": "organization_name",
    "organization": "organization_name",
    "organisation": "organization_name",
    "organisation_name": "organization_name",
    "org": "organization_name",
    "job_title": "title",
    "position": "title",
    "avatar": "avatar_url",
    "picture": "avatar_url",
    "photo": "avatar_url",
    "image": "avatar_url",
    "language": "locale",
    "lang": "locale",
    "time_zone": "timezone",
    "tz": "timezone",
    "sex": "gender",
    "city": "address.city",
    "town": "address.city",
    "postcode": "address.postcode",
    "post_code": "address.postcode",
    "postal_code": "address.postcode",
    "zip": "address.postcode",
    "zip_code": "address.postcode",
    "zipcode": "address.postcode",
    "country": "address.country",
    "state": "address.state",
    "province": "address.state",
    "region": "address.state",
    "street": "address.address_line1",
    "street_address": "address.address_line1",
    "address_line1": "address.address_line1",
    "address_line_1": "address.address_line1",
    "address1": "address.address_line1",
    "address_line2": "address.address_line2",
    "address_line_2": "address.address_line2",
    "address2": "address.address_line2",
    **{name: "json:" + name for name in JSON_COLUMNS},
    **{name: IGNORE for name in SERVED},
    **{name: IGNORE for name in ERROR_COLUMNS},
}


class MappingError(ValueError):
    """The columns cannot be mapped: nothing is sent. The message lists what to do."""


def _normal(header: str) -> str:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", header.strip())  # camelCase -> camel_Case
    return re.sub(r"[\s\-]+", "_", text).lower()


def parse_target(text: str) -> str:
    """A field as a person writes it (`display_name`, `via.email`, `address.city`,
    `metadata.plan`, `metadata`) -> the mapping's target; raises MappingError."""
    text = text.strip()
    if text in ("", "-"):
        return IGNORE
    if text in SCALARS:
        return text
    if text in JSON_COLUMNS:
        return "json:" + text
    prefix, dot, key = text.partition(".")
    if dot and key:
        if prefix in ("via", "metadata"):
            return text
        if prefix == "address" and key in ADDRESS_FIELDS:
            return text
        if prefix == "address":
            raise MappingError(f"{text}: address has the fields {', '.join(ADDRESS_FIELDS)}")
    raise MappingError(f"{text} is not a contact field: {describe_fields()}")


def describe_fields() -> str:
    return (
        f"the fields are {', '.join(SCALARS)}, via.<key> (via.email, via.phone, ...), "
        f"address.<{'|'.join(ADDRESS_FIELDS)}>, metadata.<key>, and metadata, conversations, via, "
        "address as JSON text; an empty field ignores the column"
    )


def target_for(header: str) -> str | None:
    """The field a column maps to by its name (None: none)."""
    name = header.strip()
    if not name:
        return None
    try:
        return parse_target(name)
    except MappingError:
        pass
    prefix, dot, key = name.partition(".")
    if dot and key and _normal(prefix) in ("via", "metadata"):
        return f"{_normal(prefix)}.{key}"
    if dot and key and _normal(prefix) == "address" and _normal(key) in ADDRESS_FIELDS:
        return f"address.{_normal(key)}"
    return ALIASES.get(_normal(name))


def candidates(header: str) -> list[str]:
    """Fields a column could have meant, best first (for the error message)."""
    choices = sorted(set(ALIASES) | set(ALIASES.values()) - {IGNORE})
    close = difflib.get_close_matches(_normal(header), choices, n=3, cutoff=0.6)
    out = []
    for choice in close:
        target = ALIASES.get(choice, choice)
        shown = target.removeprefix("json:")
        if target and shown not in out:
            out.append(shown)
    key = re.sub(r"\W+", "_", header.strip()).strip("_").lower() or "key"
    out.append(f"metadata.{key}")
    return out


@dataclass
class Mapping:
    """Column index -> target, for one header."""

    header: list[str]
    targets: list[str]  # per column: a field, "json:<map>", or IGNORE

    @property
    def used(self) -> list[tuple[str, str]]:
        return [(h, t.removeprefix("json:")) for h, t in zip(self.header, self.targets) if t != IGNORE]

    def column_of(self, path: str) -> str | None:
        """The column a validation error's path (`via.email`, `metadata.tags`) came from."""
        best = None
        for header, target in zip(self.header, self.targets):
            plain = target.removeprefix("json:")
            if target and (path == plain or path.startswith(plain + ".")):
                if best is None or len(plain) > len(best[1]):
                    best = (header, plain)
        return best[0] if best else None


def map_columns(header: list[str], overrides: dict[str, str] | None = None) -> Mapping:
    """The mapping of a header; ``overrides`` is --map COLUMN=FIELD (FIELD "" ignores).
    Raises MappingError naming every column it cannot map, with candidates, before any row."""
    overrides = dict(overrides or {})
    unknown_overrides = [c for c in overrides if c not in header]
    if unknown_overrides:
        raise MappingError(
            f"--map names {', '.join(repr(c) for c in unknown_overrides)}, which the file does not have; "
            f"its columns are: {', '.join(repr(h) for h in header)}"
        )
    seen: dict[str, int] = {}
    for index, name in enumerate(header):
        if name in seen and name:
            raise MappingError(f"the column {name!r} appears twice (columns {seen[name] + 1} and {index + 1})")
        seen[name] = index
    targets: list[str] = []
    problems: list[str] = []
    for index, name in enumerate(header):
        if name in overrides:
            targets.append(parse_target(overrides[name]))
            continue
        target = target_for(name)
        if target is None:
            shown = repr(name) if name.strip() else f"(unnamed column {index + 1})"
            ideas = candidates(name) if name.strip() else []
            hint = ""
            if ideas:
                hint = f": it could be {' or '.join(ideas)} (--map {_quote_arg(name)}={ideas[0]})"
            problems.append(f"  {shown}{hint}, or ignore it (--map {_quote_arg(name)}=)")
            targets.append(IGNORE)
        else:
            targets.append(target)
    if problems:
        mapped = [f"{h!r} -> {t.removeprefix('json:')}" for h, t in zip(header, targets) if t]
        raise MappingError(
            "these columns map to no contact field, so nothing was sent:\n"
            + "\n".join(problems)
            + ("\nthe others map as: " + ", ".join(mapped) if mapped else "")
            + f"\n({describe_fields()})"
        )
    owners: dict[str, str] = {}
    for name, target in zip(header, targets):
        if not target:
            continue
        plain = target.removeprefix("json:")
        if plain in owners:
            raise MappingError(f"the columns {owners[plain]!r} and {name!r} both map to {plain}: ignore one (--map {_quote_arg(name)}=) or map it elsewhere")
        owners[plain] = name
    return Mapping(list(header), targets)


def _quote_arg(text: str) -> str:
    return text if re.fullmatch(r"[\w.@-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def parse_maps(items: list[str] | None) -> dict[str, str]:
    """--map COLUMN=FIELD arguments -> {column: field}; raises MappingError."""
    out = {}
    for item in items or []:
        column, eq, target = item.partition("=")
        if not eq or not column:
            raise MappingError(f"--map {item!r}: write COLUMN=FIELD (COLUMN= ignores the column)")
        parse_target(target)  # refuse a bad field now
        out[column] = target
    return out


# --- a row to a contact ---------------------------------------------------------------------------

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+\Z")
_PHONE = re.compile(r"\+?[\d\s().\-/]*\d[\d\s().\-/]*(\s*(ext\.?|x|#)\s*\d+)?\Z", re.IGNORECASE)


class RowError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def row_payload(mapping: Mapping, cells: list[str]) -> dict:
    """The contacts.create payload of one row (validated with the service's model and this
    command's identity checks); raises RowError naming the column. An empty cell sets nothing."""
    payload: dict[str, Any] = {}
    for header, target, cell in zip(mapping.header, mapping.targets, cells):
        if not target or cell == "":
            continue
        if target.startswith("json:"):
            name = target[5:]
            try:
                value = json.loads(cell)
            except ValueError as err:
                raise RowError(header, f"{name} must be JSON text (like {{\"key\": \"value\"}}): {err}") from None
            if value is None:
                continue
            payload[name] = value if not isinstance(value, dict) or name not in payload else {**value, **payload[name]}
            continue
        name, dot, key = target.partition(".")
        if dot:
            bucket = payload.setdefault(name, {})
            if not isinstance(bucket, dict):
                raise RowError(header, f"{name} is given as JSON and as {target}")
            bucket[key] = cell
        else:
            payload[name] = cell
    try:
        fields = model.validate_create(payload)
    except model.ValidationError as err:
        column = mapping.column_of(err.field) or err.field or ""
        message = err.message
        if not payload:
            message = "the row is empty" if not any(cells) else "the row sets no field"
        raise RowError(column, message) from None
    via = fields.get("via") or {}
    email, phone = via.get("email"), via.get("phone")
    if email is not None and not _EMAIL.match(email.strip()):
        raise RowError(mapping.column_of("via.email") or "via.email", f"via.email {email!r} is not an e-mail address")
    if phone is not None and not _PHONE.match(phone.strip()):
        raise RowError(mapping.column_of("via.phone") or "via.phone", f"via.phone {phone!r} is not a phone number")
    return fields


# --- reading a CSV file --------------------------------------------------------------------------

MAX_RECORD_LINES = 200  # a quoted field longer than this is a stray quote, not an address


@dataclass
class Record:
    line: int  # the physical line the record starts on (1-based)
    cells: list[str] | None  # None: the line could not be read as CSV (see error)
    raw: str  # the record's text, as in the file
    error: str | None = None
    end_offset: int = 0  # bytes of the file read when the record ended


def detect_delimiter(header_line: str) -> str:
    """`,` or `;` (or a tab): the one that splits the header into the most columns."""
    best, best_count = ",", 1
    for delimiter in (",", ";", "\t"):
        try:
            count = len(next(csv.reader([header_line], delimiter=delimiter, strict=True)))
        except (csv.Error, StopIteration):
            continue
        if count > best_count:
            best, best_count = delimiter, count
    return best


class _Lines:
    """The file's physical lines, decoded and numbered, with a way to put lines back (what a
    broken record swallowed is read again)."""

    def __init__(self, binary: IO[bytes], encoding: str):
        self._binary = binary
        self.encoding = encoding
        self._back: deque[tuple[int, str, int, str | None]] = deque()
        self._count = 0
        self._offset = 0
        self.taken: list[tuple[int, str, int, str | None]] = []  # the current record's lines
        self.limit = 0  # lines a record may take (0: no limit)

    def put_back(self, lines) -> None:
        self._back.extendleft(reversed(lines))

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.limit and len(self.taken) >= self.limit:
            raise _TooLong()
        if self._back:
            item = self._back.popleft()
        else:
            raw = self._binary.readline()
            if not raw:
                raise StopIteration
            self._count += 1
            self._offset += len(raw)
            bad = None
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as err:
                text = raw.decode(self.encoding, errors="replace")
                bad = f"the line is not valid {self.encoding.removesuffix('-sig')} (byte {err.start + 1}): save the file as UTF-8 or pass --encoding"
            if self.encoding == "utf-8-sig":
                self.encoding = "utf-8"  # only the first line may start with a BOM
            item = (self._count, text, self._offset, bad)
        self.taken.append(item)
        return item[1]

    @property
    def offset(self) -> int:
        """Bytes of the file read for the records handed out so far."""
        return self.taken[-1][2] if self.taken else self._offset


class _TooLong(Exception):
    pass


class CsvSource:
    """Reads a CSV file of contacts record by record, without holding it in memory.

    UTF-8 with or without a BOM (or ``encoding``), `,` `;` or tab detected from the header
    (or ``delimiter``), quoted fields (with line breaks inside), CRLF or LF. A record that
    cannot be read (a stray quote, a wrong number of fields, bytes that are not the encoding)
    comes out with ``error`` set and its first line only: the lines a stray quote swallowed are
    read again as records of their own.
    """

    def __init__(self, binary: IO[bytes], encoding: str = "utf-8", delimiter: str | None = None):
        utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
        self._lines = _Lines(binary, "utf-8-sig" if utf8 else encoding)
        self._lines.taken = []
        try:
            first = next(self._lines)
        except StopIteration:
            raise MappingError("the file is empty: it needs a header line naming the columns") from None
        self.delimiter = delimiter or detect_delimiter(first)
        self._lines.put_back(self._lines.taken)
        self._lines.taken = []
        self.header: list[str] | None = None
        header = self._read()
        if header is None or header.error or not header.cells:
            why = header.error if header and header.error else "it is empty"
            raise MappingError(f"line 1: the header line naming the columns cannot be read: {why}")
        self.header = [cell.strip() for cell in header.cells]
        self.rows_read = 0

    @property
    def offset(self) -> int:
        return self._lines.offset

    def fileno(self) -> int:
        return self._lines._binary.fileno()

    def _read(self) -> Record | None:
        lines = self._lines
        lines.taken = []
        lines.limit = MAX_RECORD_LINES
        reader = csv.reader(lines, delimiter=self.delimiter, strict=True)
        error = None
        try:
            cells = next(reader)
        except StopIteration:
            if not lines.taken:
                return None
            cells, error = None, "the file ends inside a quoted field (a stray quote?)"
        except csv.Error as err:
            cells, error = None, f"the line is not valid CSV ({err}; a stray quote?)"
        except _TooLong:
            cells, error = None, f"a quoted field runs over more than {MAX_RECORD_LINES} lines (a stray quote?)"
        finally:
            lines.limit = 0
        taken = lines.taken
        bad = next((item[3] for item in taken if item[3]), None)
        if bad:
            error, cells = bad, None
        header = self.header
        if cells is not None and header is not None and cells and len(cells) != len(header):
            error = f"the row has {len(cells)} fields, the header {len(header)}" + (" (a stray quote?)" if len(taken) > 1 else "")
            cells = cells if len(taken) == 1 else None
        if error and len(taken) > 1:
            # What the broken record swallowed is read again: one bad line, not a lost file.
            lines.put_back(taken[1:])
            taken = taken[:1]
        lines.taken = taken
        raw = "".join(item[1] for item in taken)
        return Record(taken[0][0], cells, raw, error, taken[-1][2])

    def __iter__(self) -> Iterator[Record]:
        while True:
            record = self._read()
            if record is None:
                return
            self.rows_read += 1
            yield record


# --- the errors file -----------------------------------------------------------------------------


class ErrorFile:
    """FILE.errors.csv: `error_line`, `error_field`, `error_message`, then the original columns
    (importing it again after fixing the rows works: the error columns are ignored)."""

    def __init__(self, path, header: list[str], delimiter: str, append: bool):
        self.path = path
        self.count = 0
        self._file = None
        self._header = header
        self._delimiter = delimiter
        self._append = append

    def add(self, line: int, field: str, message: str, cells: list[str] | None, raw: str) -> None:
        if self._file is None:
            exists = self._append and self.path.exists() and self.path.stat().st_size > 0
            self._file = open(self.path, "a" if exists else "w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file, delimiter=self._delimiter)
            if not exists:
                self._writer.writerow([*ERROR_COLUMNS, *self._header])
        if cells is None:
            cells = [raw.rstrip("\r\n")]
        self._writer.writerow([line, field, message, *cells])
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
