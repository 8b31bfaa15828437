"""Progress: a bar with rows/s and ETA on a terminal, plain lines in a log."""

from __future__ import annotations

import io

from contacts_cli._progress import Progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress("importing people.csv", total=1000, stream=out, every=0)
    progress.update(250, 250)
    progress.say("a message")
    progress.close()
    text = out.getvalue()
    assert "importing people.csv: 250 rows (25%)" in text and "rows/s" in text and "ETA" in text
    assert "a message\n" in text
    assert "\x1b" not in text  # no control characters in a log


def test_a_bar_with_rows_per_second_and_eta_on_a_terminal():
    out = io.StringIO()
    progress = Progress("importing people.csv", total=1000, stream=out, bar=True)
    progress.update(500, 500)
    progress.close()
    text = out.getvalue()
    assert "importing people.csv" in text and "500 rows" in text and "rows/s" in text and "ETA" in text
