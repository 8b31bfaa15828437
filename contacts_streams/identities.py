"""Who a contact is, normalized for matching: identities (lookup, duplicates) and search tokens.

Pure functions of a contact (a plain dict, as in ``model``). Stored values stay as sent; only the
store's indexes hold what these functions return (DESIGN.md, "Normalization").

Identities are ``(kind, value)`` pairs, one per ``via`` entry:

- ``email``: the value trimmed and case-folded;
- ``phone``: E.164 (``+491701234567``) parsed with ``phonenumbers``; a number without a country
  code is read in the default region (``DEFAULT_PHONE_REGION``). A number that cannot be parsed,
  or is not a possible number, is kept as its digits (``+`` kept when it had one), so two
  spellings of the same unparseable number still match;
- any other key: key and value trimmed and case-folded (``Telegram`` / `` @Grace `` ->
  ``telegram`` / ``@grace``).

Parsing a phone number costs tens of microseconds, far more than the rest of a store write, and
the search tokens about as much as the rest of it, so the writer computes both once and carries
them on the record in the ``identities`` header (``encode``); every replica's store indexes from
the header and computes them itself only for records without it (written before it existed, or
by another producer). The header names its format version: version 1 carried the identities
only (a store computes the tokens of such a record); a store meeting a version it does not know
computes both itself. A change of how identities or tokens are derived bumps the version.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import phonenumbers
from phonenumbers import phonenumberutil

from contacts_streams import model

EMAIL, PHONE = "email", "phone"
HEADER = "identities"
# 1: [1, identities]; 2: [2, identities, search tokens].
HEADER_VERSION = 2
# A contact may hold 100 via values of 2048 characters: a header that large would count against
# the record limit twice. Past this size the header is left out and each store computes them.
MAX_HEADER_BYTES = 16 * 1024
# Index keys hold a token; longer tokens are cut (a query word longer than this is checked
# against the whole token by the search, not by the key).
MAX_TOKEN_CHARS = 64
MIN_PHONE_DIGITS = 4
# Characters people type inside phone numbers.
_PHONE_PUNCTUATION = re.compile(r"[\s+\-().\/]")
_WORD_SPLIT = re.compile(r"[\W_]+")

Identity = tuple[str, str]
Token = tuple[str, str]


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, case-folded, trimmed.
    U+0000 (the indexes' separator) is dropped."""
    if text.isascii():  # most names: nothing to decompose, and ASCII case-folds as lower()
        return text.lower().strip().replace("\x00", "")
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).casefold().strip().replace("\x00", "")


def _clean(text: str) -> str:
    return text.strip().casefold().replace("\x00", "")


def normalize_email(value: str) -> str:
    return _clean(value)


_NOT_ASCII_DIGITS = re.compile(r"[^0-9]+")


def digits(value: str) -> str:
    """The ASCII digits of ``value`` (the only characters both isdigit() and isascii())."""
    return _NOT_ASCII_DIGITS.sub("", value)


# What _e164_of_plus_digits reads of phonenumbers beyond its public API (phonenumbers<10, the
# pin in pyproject.toml; tests/contacts_streams/test_phone_fast_path.py holds it to parse).
_pnu = phonenumberutil
_NOT_STRIPPED = (
    _pnu.ValidationResult.TOO_SHORT,
    _pnu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    _pnu.ValidationResult.INVALID_LENGTH,
)
_POSSIBLE = (_pnu.ValidationResult.IS_POSSIBLE, _pnu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)


def _e164_of_plus_digits(text: str) -> str | None:
    """``normalize_phone`` of ``+`` and ASCII digits, the spelling most numbers arrive in, with
    the steps ``phonenumbers.parse`` takes for it and none of those it takes for any spelling
    (finding the number in the text, extensions, Unicode digits, a PhoneNumber object, the
    formatting): a third of its cost. None where it would take another branch (no known
    country code, too short or too long, all zeros): parse decides those."""
    digits = text[1:]
    if not (3 <= len(digits) <= 20 and text[0] == "+" and digits.isdigit() and digits.isascii()):
        return None
    country_code, national = _pnu._extract_country_code(digits)
    if country_code == 0:
        return None
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, _pnu.region_code_for_country_code(country_code)
    )
    if metadata is None or len(national) < _pnu._MIN_LENGTH_FOR_NSN:
        return None
    # A national prefix after the country code goes when what remains still has a possible length.
    _carrier, stripped, _ = _pnu._maybe_strip_national_prefix_carrier_code(national, metadata)
    if _pnu._test_number_length(stripped, metadata) not in _NOT_STRIPPED:
        national = stripped
    if not _pnu._MIN_LENGTH_FOR_NSN <= len(national) <= _pnu._MAX_LENGTH_FOR_NSN or not national.strip("0"):
        return None
    # parse keeps leading zeros (Italian numbers) beside the integer: the national significant
    # number is the digits as they are.
    if _pnu._test_number_length(national, metadata) in _POSSIBLE:
        return f"+{country_code}{national}"
    return text  # not a possible number: its digits with the +, as below


@functools.lru_cache(maxsize=16384)
def normalize_phone(value: str, region: str | None) -> str:
    """E.164 when the number parses (in ``region`` when it has no country code), else its digits.
    Cached: parsing costs tens of microseconds, and a contact's number is normalized again at
    every write of the contact (its identities header) and at every upsert that looks it up."""
    text = value.strip()
    fast = _e164_of_plus_digits(text)
    if fast is not None:
        return fast
    return _parse_phone(text, region)


def _parse_phone(text: str, region: str | None) -> str:
    """``normalize_phone`` through ``phonenumbers.parse``, for any spelling."""
    try:
        number = phonenumbers.parse(text, (region or None) if not text.startswith("+") else None)
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    found = digits(text)
    if not found:
        return _clean(text)
    return ("+" + found) if text.startswith("+") else found


def normalize(kind: str, value: str, region: str | None) -> Identity:
    """One ``via`` entry as an identity; ``kind`` is the via key as sent."""
    key = _clean(kind)
    if key == EMAIL:
        return key, normalize_email(value)
    if key == PHONE:
        return key, normalize_phone(value, region)
    return key, _clean(value)


def identities_of(contact: dict, region: str | None) -> list[Identity]:
    """The contact's identities, sorted, without duplicates and without empty values."""
    found = set()
    for key, value in (contact.get("via") or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        kind, normalized = normalize(key, value, region)
        if kind and normalized:
            found.add((kind, normalized))
    return sorted(found)


def encode(identities: list[Identity], tokens: list[Token]) -> str | None:
    """The ``identities`` header's value; None when it would be too large to carry."""
    raw = model.json_bytes([HEADER_VERSION, identities, tokens])  # strings only: the same bytes as json.dumps
    return raw.decode("utf-8") if len(raw) <= MAX_HEADER_BYTES else None


def decode(text: str | None) -> tuple[list, list | None] | None:
    """(identities, search tokens) a header carries, as sorted lists of ``[kind, value]`` and
    ``[namespace, token]`` lists; tokens None for a version 1 header; None when absent, of an
    unknown version, or malformed. The shapes inside are checked where the store uses them
    (it computes both itself from the contact when they are not pairs of strings)."""
    if not text:
        return None
    try:
        found = model.json_loads(text)
        if type(found) is not list or not found:
            return None
        if found[0] == 1 and len(found) == 2 and type(found[1]) is list:
            identities, tokens = found[1], None
        elif found[0] == HEADER_VERSION and len(found) == 3 and type(found[1]) is list and type(found[2]) is list:
            identities, tokens = found[1], found[2]
            tokens.sort()  # already sorted when the writer wrote it: one pass
        else:
            return None
        identities.sort()
    except (ValueError, TypeError):
        return None
    # U+0000 separates the parts of index keys: a header holding one is not used. JSON writes
    # it as an escape, so the text says whether to look (a key spelled "\\u0000" says so too).
    if "\\u0000" in text and (_holds_nul(identities) or _holds_nul(tokens or [])):
        return None
    return identities, tokens


def _holds_nul(pairs: list) -> bool:
    return any(type(part) is str and "\x00" in part for pair in pairs if type(pair) is list for part in pair)


def header(contact: dict | None, region: str | None) -> dict[str, str]:
    """The headers to add to a contact record (none for a tombstone or a too large header)."""
    if contact is None:
        return {}
    found = identities_of(contact, region)
    value = encode(found, search_tokens(contact, found))
    return {HEADER: value} if value is not None else {}


# --- search ---------------------------------------------------------------------------------------

WORD, EMAIL_WHOLE, DIGITS = "w", "e", "p"


def words(text: str) -> list[str]:
    """The searchable words of a name: folded, split at anything that is not a letter or digit."""
    return [w for w in _WORD_SPLIT.split(fold(text)) if w]


def search_tokens(contact: dict, identities: list[Identity] | None = None) -> list[tuple[str, str]]:
    """``(namespace, token)`` pairs a contact is found by, sorted and unique.

    ``w``: the words of display name and organization (``organization_name`` and
    ``address.organization_name``) and of each email's local part; ``e``: each email whole;
    ``p``: each phone's digits reversed (a prefix of reversed digits is a suffix of the number),
    of the value as sent and of its E.164 form when the identities give one.

    Whole emails have a namespace of their own, and the local part is indexed by its words only:
    a query word (letters and digits) that is a prefix of an email or of its local part is a
    prefix of the local part's first word too, so those tokens would only add entries that
    search walks past (a contact is shown once, at its first matching token): under a common
    first name, every contact's email and local part again, at the end of the name's range.
    """
    found: set[tuple[str, str]] = set()
    for name in (
        contact.get("display_name"),
        contact.get("organization_name"),
        (contact.get("address") or {}).get("organization_name"),
    ):
        if isinstance(name, str):
            found.update((WORD, w[:MAX_TOKEN_CHARS]) for w in words(name))
    via = contact.get("via") or {}
    for key, value in via.items():
        if not isinstance(value, str):
            continue
        kind = _clean(key) if isinstance(key, str) else ""
        if kind == EMAIL:
            email = fold(value)
            if email:
                found.add((EMAIL_WHOLE, email[:MAX_TOKEN_CHARS]))
                # A query is split into words the way names are: "grace.hopper" finds
                # grace.hopper@... through the local part's words.
                found.update((WORD, w[:MAX_TOKEN_CHARS]) for w in words(email.split("@", 1)[0]))
        elif kind == PHONE:
            number = digits(value)
            if len(number) >= MIN_PHONE_DIGITS:
                found.add((DIGITS, number[::-1][:MAX_TOKEN_CHARS]))
    for kind, value in identities or ():
        if kind == PHONE:
            number = digits(value)
            if len(number) >= MIN_PHONE_DIGITS:
                found.add((DIGITS, number[::-1][:MAX_TOKEN_CHARS]))
    return sorted(found)


def query_terms(query: str) -> list[tuple[str, str]]:
    """A search query as ``(namespace, term)`` pairs that must all match by prefix.

    A query of phone characters only (digits, spaces, ``+-()./``) with at least
    MIN_PHONE_DIGITS digits is one phone term: its digits reversed. Otherwise each
    white-space-separated word is a term: one with ``@`` is matched against whole emails by
    prefix, others are split into words like names are.
    """
    text = query.strip()
    number = digits(text)
    if len(number) >= MIN_PHONE_DIGITS and not _PHONE_PUNCTUATION.sub("", text).strip("0123456789"):
        return [(DIGITS, number[::-1])]
    terms: list[tuple[str, str]] = []
    for part in text.split():
        if "@" in part:
            folded = fold(part)
            if folded:
                terms.append((EMAIL_WHOLE, folded))
        else:
            terms.extend((WORD, w) for w in words(part))
    unique = list(dict.fromkeys(terms))
    # Longest first: the store walks the first term's entries, the most selective one usually.
    return sorted(unique, key=lambda t: -len(t[1]))
