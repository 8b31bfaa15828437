"""How `contacts import` cuts a file into batches and names them: a resumed run (--skip N at a
batch boundary) sends the very batches, with the very Idempotency-Keys, the first run would have."""

from __future__ import annotations

import argparse
from pathlib import Path

from contacts_cli import _table
from contacts_cli._progress import Progress
from contacts_cli.import_ import Importer, add_arguments


def batches(path: Path, *options: str) -> list[tuple[int, int, int, str, int]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(path), *options])
    with open(path, "rb") as binary:
        source = _table.CsvSource(binary)
        mapping = _table.map_columns(source.header)
        importer = Importer(args, None, None, Progress("test", None, every=3600), source, mapping)
        out = []
        for chunk in importer.chunks():
            out.append((chunk.first_row, chunk.last_row, len(chunk.payloads), importer._key(chunk, importer._body(chunk.payloads)), len(chunk.rejected)))
        return out


def test_a_resumed_run_sends_the_same_batches_and_keys(tmp_path):
    path = tmp_path / "people.csv"
    rows = [f"Person {i},p{i}@example.org" if i % 7 else f"Person {i},not-an-email" for i in range(1, 1001)]
    path.write_text("name,email\n" + "\n".join(rows) + "\n")
    whole = batches(path, "--batch-size", "100")
    assert sum(n for _, _, n, _, _ in whole) + sum(r for *_, r in whole) == 1000
    assert all(n == 100 for _, _, n, _, _ in whole[:-1])
    # Batches hold good rows only: a batch boundary falls after the batch's last good row.
    boundary = whole[3][1]
    resumed = batches(path, "--batch-size", "100", "--skip", str(boundary))
    assert resumed == whole[4:]
    assert len({key for _, _, _, key, _ in whole}) == len(whole)  # one key per batch


def test_upsert_changes_the_body_and_so_the_key(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("name,email\nAda,ada@example.org\n")
    plain = batches(path)
    upsert = batches(path, "--upsert-by", "email")
    assert plain[0][3] != upsert[0][3]


def test_with_upsert_a_row_without_the_identity_is_rejected(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("name,email\nAda,ada@example.org\nAlan,\n")
    (first, last, sent, _, rejected), = batches(path, "--upsert-by", "email")
    assert (first, last, sent, rejected) == (1, 2, 1, 1)
