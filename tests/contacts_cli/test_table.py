"""The CSV side of `contacts import` / `export`: dialect detection, reading broken files without
losing the rows after a break, column mapping, and a row to a contact. No service needed."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contacts_cli import _table, export
from contacts_cli._table import CsvSource, MappingError, RowError, detect_delimiter, map_columns, row_payload


def read(text: str | bytes, **options) -> tuple[CsvSource, list[_table.Record]]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    source = CsvSource(io.BytesIO(data), **options)
    return source, list(source)


# --- dialect -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        ("name,email,phone", ","),
        ("name;email;phone", ";"),
        ("name\temail", "\t"),
        ('"last, first";email;phone', ";"),  # the comma is inside quotes
        ('"a;b",email', ","),
        ("name", ","),
    ],
)
def test_the_delimiter_is_the_one_that_splits_the_header(header, expected):
    assert detect_delimiter(header + "\r\n") == expected


def test_a_semicolon_file_with_a_bom_and_crlf():
    source, records = read("\ufeffName;E-Mail;Stadt\r\nJürgen Müller;j@example.de;Köln\r\n")
    assert source.delimiter == ";"
    assert source.header == ["Name", "E-Mail", "Stadt"]  # no BOM glued to the first column
    assert [r.cells for r in records] == [["Jürgen Müller", "j@example.de", "Köln"]]


def test_quoted_fields_with_delimiters_quotes_and_line_breaks():
    _, records = read('name,city\n"Hopper, Grace","New\nYork"\n"Ada ""Countess"" Lovelace",London\n')
    assert [r.cells for r in records] == [["Hopper, Grace", "New\nYork"], ['Ada "Countess" Lovelace', "London"]]
    assert [r.line for r in records] == [2, 4]


def test_a_stray_quote_costs_one_row_not_the_rest_of_the_file():
    text = 'name,email\nAda,a@example.org\n"Broken,b@example.org\nGrace,g@example.org\nAlan,"al"an@example.org\nLast,l@example.org\n'
    _, records = read(text)
    good = [r.cells[0] for r in records if r.error is None]
    bad = [(r.line, r.raw.strip()) for r in records if r.error]
    assert good == ["Ada", "Grace", "Last"]
    assert bad == [(3, '"Broken,b@example.org'), (5, 'Alan,"al"an@example.org')]
    assert all("stray quote" in r.error for r in records if r.error)


def test_wrong_field_counts_and_empty_lines_are_records_of_their_own():
    _, records = read("name,email\nAda,a@example.org,extra\n\nGrace,g@example.org\n")
    assert [(r.line, r.cells, bool(r.error)) for r in records] == [
        (2, ["Ada", "a@example.org", "extra"], True),
        (3, [], False),
        (4, ["Grace", "g@example.org"], False),
    ]


def test_bytes_that_are_not_utf8_reject_their_line_only():
    _, records = read(b"name,city\nJ\xfcrgen,K\xf6ln\nAda,London\n")
    assert records[0].error and "not valid utf-8" in records[0].error and "--encoding" in records[0].error
    assert records[1].cells == ["Ada", "London"]
    _, latin = read(b"name,city\nJ\xfcrgen,K\xf6ln\n", encoding="latin-1")
    assert latin[0].cells == ["Jürgen", "Köln"]


def test_an_empty_file_says_it_needs_a_header():
    with pytest.raises(MappingError, match="header"):
        read("")


def test_offsets_grow_to_the_file_size():
    text = "name\nAda\nGrace\n"
    _, records = read(text)
    assert records[-1].end_offset == len(text.encode())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=12), min_size=3, max_size=3),
        max_size=8,
    ),
    delimiter=st.sampled_from([",", ";"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_what_csv_writes_reads_back(rows, delimiter, newline, bom):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(["name", "e-mail", "city"])
    writer.writerows(rows)
    data = ("\ufeff" if bom else "") + out.getvalue()
    source, records = read(data)
    assert source.delimiter == delimiter or not rows
    assert [(r.error, r.cells) for r in records] == [(None, row) for row in rows]


# --- column mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, field",
    [
        ("name", "display_name"),
        ("Name", "display_name"),
        ("Full Name", "display_name"),
        ("displayName", "display_name"),
        ("email", "via.email"),
        ("E-mail", "via.email"),
        ("E-Mail Address", "via.email"),
        ("phone", "via.phone"),
        ("Mobile", "via.phone"),
        ("company", "organization_name"),
        ("company_name", "organization_name"),
        ("Organisation", "organization_name"),
        ("city", "address.city"),
        ("address.city", "address.city"),
        ("Zip Code", "address.postcode"),
        ("via.telegram", "via.telegram"),
        ("metadata.plan", "metadata.plan"),
        ("metadata.Customer Tier", "metadata.Customer Tier"),
        ("metadata", "json:metadata"),
        ("conversations", "json:conversations"),
        ("id", ""),
        ("created_at", ""),
        ("updated_at", ""),
        ("merge_history", ""),
        ("error_message", ""),
    ],
)
def test_columns_map_by_name_and_alias(header, field):
    assert map_columns([header]).targets == [field]


def test_an_unmapped_column_is_an_error_naming_columns_and_candidates():
    with pytest.raises(MappingError) as raised:
        map_columns(["Name", "Emial", "Nickname"])
    message = str(raised.value)
    assert "nothing was sent" in message
    assert "'Emial': it could be via.email" in message and "--map Emial=via.email" in message
    assert "'Nickname'" in message and "metadata.nickname" in message and "--map Nickname=" in message
    assert "'Name' -> display_name" in message


def test_map_overrides_and_ignores():
    mapping = map_columns(["Name", "Nickname", "Notes", "email"], {"Nickname": "metadata.nickname", "Notes": "", "email": "via.work_email"})
    assert mapping.targets == ["display_name", "metadata.nickname", "", "via.work_email"]


@pytest.mark.parametrize(
    "header, overrides, match",
    [
        (["email", "e-mail"], {}, "both map to via.email"),
        (["name", "name"], {}, "appears twice"),
        (["name"], {"nmae": "display_name"}, "does not have"),
        (["name"], {"name": "nickname"}, "is not a contact field"),
        (["name"], {"name": "address.street"}, "address has the fields"),
    ],
)
def test_mapping_mistakes_are_refused(header, overrides, match):
    with pytest.raises(MappingError, match=match):
        map_columns(header, overrides)


def test_parse_maps():
    assert _table.parse_maps(["Notes=", "Tier=metadata.tier", "x=via.x"]) == {"Notes": "", "Tier": "metadata.tier", "x": "via.x"}
    with pytest.raises(MappingError, match="COLUMN=FIELD"):
        _table.parse_maps(["nothing"])


# --- a row to a contact --------------------------------------------------------------------------

HEADER = ["Name", "E-mail", "Phone", "City", "metadata.plan", "metadata", "conversations", "id", "Timezone"]


def payload(**cells):
    mapping = map_columns(HEADER)
    row = [cells.get(h.replace(".", "_").replace("-", "_"), "") for h in HEADER]
    return row_payload(mapping, row)


def test_a_row_becomes_a_contact_and_empty_cells_set_nothing():
    assert payload(Name="Ada", E_mail="ada@example.org", City="London", metadata_plan="pro", id="ignored") == {
        "display_name": "Ada",
        "via": {"email": "ada@example.org"},
        "address": {"city": "London"},
        "metadata": {"plan": "pro"},
    }


def test_json_columns_and_key_columns_merge():
    conversation = "6b80b10c-ae6e-4995-844d-c56c4da11623"
    got = payload(Name="Ada", metadata='{"tier": {"level": 2}}', metadata_plan="pro", conversations=json.dumps({conversation: "facebook"}))
    assert got["metadata"] == {"tier": {"level": 2}, "plan": "pro"}
    assert got["conversations"] == {conversation: "facebook"}


@pytest.mark.parametrize(
    "cells, column, words",
    [
        ({"Name": "Ada", "E_mail": "ada.example.org"}, "E-mail", "not an e-mail"),
        ({"Name": "Ada", "E_mail": "ada@example"}, "E-mail", "not an e-mail"),
        ({"Name": "Ada", "Phone": "call me"}, "Phone", "not a phone"),
        ({"Name": "x" * 3000}, "Name", "at most 2048"),
        ({"Name": "Ada", "metadata": '{"tags": ["a", "b"]}'}, "metadata", "arrays are not allowed"),
        ({"Name": "Ada", "metadata": "{not json"}, "metadata", "JSON text"),
        ({"Name": "Ada", "conversations": '{"nope": "facebook"}'}, "conversations", "must be UUIDs"),
        ({}, "", "the row is empty"),
    ],
)
def test_bad_rows_name_their_column(cells, column, words):
    with pytest.raises(RowError) as raised:
        payload(**cells)
    assert raised.value.field == column
    assert words in raised.value.message


@pytest.mark.parametrize("phone", ["+44 20 7946 0000", "(555) 010-0100", "0151 1234567 ext. 12", "+1.555.010.0100"])
def test_phones_as_people_write_them(phone):
    assert payload(Name="Ada", Phone=phone)["via"]["phone"] == phone


# --- what export writes, import reads back -------------------------------------------------------


def test_an_exported_row_maps_back_to_the_same_contact():
    contact = {
        "id": "6b80b10c-ae6e-4995-844d-c56c4da11623",
        "display_name": "Grace Hopper",
        "timezone": "Europe/Berlin",
        "organization_name": "Navy",
        "via": {"email": "grace@example.org", "phone": "+1 555 0100", "telegram": "@grace"},
        "address": {"city": "Arlington", "address_line1": "1 Main St"},
        "metadata": {"rank": "admiral", "nested": {"n": 1}},
        "conversations": {"e0ad5cc9-6d48-4b58-9c2c-2b6c4b6a1c3f": "facebook"},
        "created_at": "2021-11-16T13:21:03.580Z",
        "updated_at": "2021-11-16T13:21:03.580Z",
    }
    columns = export.csv_columns(contact["via"])
    row = export.csv_row(contact, columns)
    back = row_payload(map_columns(columns), row)
    assert back == {k: v for k, v in contact.items() if k not in ("id", "created_at", "updated_at")}


VIA_KEYS = st.sampled_from(["email", "phone", "telegram", "line", "a,b", "zz"])
EXPORTED = st.fixed_dictionaries(
    {"id": st.uuids().map(str)},
    optional={
        "display_name": st.text(max_size=12),
        "timezone": st.one_of(st.text(max_size=6), st.integers(-50_000, 50_000), st.floats(-14, 14)),
        "via": st.dictionaries(VIA_KEYS, st.text(max_size=10), max_size=4),
        "address": st.fixed_dictionaries({}, optional={"city": st.text(max_size=8), "country": st.text(max_size=3)}),
        "metadata": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    },
)


@settings(max_examples=150, deadline=None)
@given(pages=st.lists(st.lists(EXPORTED, max_size=4), max_size=5), delimiter=st.sampled_from([",", ";"]))
def test_an_exports_csv_is_every_row_under_the_final_columns_whenever_a_new_via_key_turns_up(tmp_path_factory, pages, delimiter):
    """Rows written straight to the file before a page brought another via key end up with
    empty cells in its column, exactly as if every row had been made with the final columns."""
    file = tmp_path_factory.mktemp("export") / "out.csv"
    out = export.CsvOut(file, delimiter)
    for page in pages:
        out.page(page)
    whole = out.finish()
    contacts = [contact for page in pages for contact in page]
    columns = export.csv_columns({key for contact in contacts for key in contact.get("via") or ()})
    expected = io.StringIO()
    writer = csv.writer(expected, delimiter=delimiter)
    writer.writerow(columns)
    writer.writerows(export.csv_row(contact, columns) for contact in contacts)
    assert whole.read_bytes().decode("utf-8") == expected.getvalue()
    for path in out.leftovers():
        if path != whole:
            path.unlink(missing_ok=True)
    whole.unlink()
