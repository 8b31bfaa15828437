"""`contacts import` and `contacts export` run as a person runs them: the installed command in a
subprocess, against the service as a process of its own (`python -m api`) on the real broker."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from faults.faultkit import Names, ServiceProcess, new_service, wait_for

CONTACTS = Path(sys.executable).with_name("contacts")
COMMAND = [str(CONTACTS)] if CONTACTS.exists() else [sys.executable, "-m", "contacts_cli"]
RUN_S = 180.0


def contacts(*args, timeout: float = RUN_S, env_extra: dict | None = None, **options) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("systemToken", "CONTACTS_URL")}
    env["CONTACTS_RUN_DIR"] = "/nonexistent"  # never a developer's `make run`
    env.update(env_extra or {})
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, **options)


def total(service: ServiceProcess) -> int:
    answer = service.post("/contacts.list", {"page_size": 1})
    assert answer.status_code == 200, answer.text
    return answer.json()["pagination_data"]["total"]


@pytest.fixture(scope="module")
def services(kafka, tmp_path_factory):
    """Starts services on topics of the module's own; every one is killed at the end."""
    started: list[ServiceProcess] = []
    folder = tmp_path_factory.mktemp("cli-services")

    def start(prefix: str, state: str, **env) -> ServiceProcess:
        service = new_service(Names(kafka, prefix), folder / state, folder, instance_id=state, **env)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running():
            service.kill()


@pytest.fixture(scope="module")
def service(services) -> ServiceProcess:
    """One service the tests of this module share (each counts what it adds)."""
    live = services(f"cli{uuid.uuid4().hex[:8]}", "shared")
    live.wait_ready()
    return live


# --- files ---------------------------------------------------------------------------------------


def line(cells: list[str], delimiter: str = ",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


HEADER = ["Name", "E-mail", "Phone", "Company", "city", "metadata.plan", "metadata"]


def ten_thousand_rows(tag: str) -> tuple[str, list[str], dict[int, str]]:
    """(file text, the names of the good rows, bad line number -> what is wrong with it): 10,000
    rows, 37 of them bad in different ways."""
    bad_every = {
        "bad e-mail": 10,
        "over-long name": 8,
        "array in metadata": 8,
        "empty line": 5,
        "stray quote": 6,
    }
    kinds = [kind for kind, n in bad_every.items() for _ in range(n)]
    assert len(kinds) == 37
    positions = {100 + i * 263: kind for i, kind in enumerate(kinds)}  # rows 100 .. 9568
    text = [line(HEADER)]
    good, bad = [], {}
    for row in range(1, 10_001):
        number = row + 1  # the file's line: the header is line 1
        name = f"{tag} {row:05d}"
        cells = [name, f"{tag.lower()}.{row}@example.org", f"+44 20 7946 {row % 10000:04d}", "Acme" if row % 3 else "", "London", "pro" if row % 2 else "", ""]
        kind = positions.get(row)
        if kind == "bad e-mail":
            cells[1] = f"{tag.lower()}.{row}.example.org"
        elif kind == "over-long name":
            cells[0] = name + "x" * 2048
        elif kind == "array in metadata":
            cells[6] = json.dumps({"tags": ["vip", "new"]})
        if kind == "empty line":
            text.append("\r\n")
        elif kind == "stray quote":
            text.append('"' + line(cells)[:-2] + "\r\n")  # a quote that opens and never closes
        else:
            text.append(line(cells))
        if kind:
            bad[number] = kind
        else:
            good.append(name)
    return "".join(text), good, bad


# --- tests ---------------------------------------------------------------------------------------


def test_ten_thousand_rows_with_37_bad_ones(service, tmp_path):
    text, good, bad = ten_thousand_rows("Tenk")
    path = tmp_path / "people.csv"
    path.write_text(text, encoding="utf-8")
    before = total(service)

    dry = contacts("import", path, "--dry-run", "--url", service.base)
    assert dry.returncode == 3, dry.stderr
    assert f"would create {len(good):,}" in dry.stdout and "rejected 37" in dry.stdout
    assert total(service) == before  # a dry run sends nothing

    done = contacts("import", path, "--url", service.base)
    assert done.returncode == 3, done.stdout + done.stderr
    errors_file = tmp_path / "people.errors.csv"
    assert f"created {len(good):,}, updated 0, rejected 37 (rows in {errors_file})" in done.stdout
    assert "rows/s" in done.stdout
    assert "importing people.csv:" in done.stderr  # plain progress lines: stderr is no terminal
    assert total(service) == before + len(good)

    with open(errors_file, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["error_line", "error_field", "error_message", *HEADER]
    by_line = {int(r[0]): r for r in rows[1:]}
    assert sorted(by_line) == sorted(bad)
    expected = {
        "bad e-mail": ("E-mail", "not an e-mail address"),
        "over-long name": ("Name", "at most 2048 characters"),
        "array in metadata": ("metadata", "arrays are not allowed"),
        "empty line": ("", "the row is empty"),
        "stray quote": ("", "stray quote"),
    }
    for number, kind in bad.items():
        column, words = expected[kind]
        assert by_line[number][1] == column and words in by_line[number][2], (kind, by_line[number][:3])
    # The original row comes along (a stray quote's line as it was).
    some_email = next(n for n, k in bad.items() if k == "bad e-mail")
    assert by_line[some_email][3].startswith("Tenk ") and by_line[some_email][4].endswith(".example.org")

    names = {c.get("display_name") for c in service.list_all(quiet=False) if c.get("display_name", "").startswith("Tenk ")}
    assert names == set(good)  # every good row, the rows after each stray quote included


def test_a_semicolon_file_with_a_bom(service, tmp_path):
    path = tmp_path / "kunden.csv"
    rows = [["Name", "E-Mail", "Mobil", "Company", "City", "Zip"], ["Jürgen Müller", "juergen@example.de", "+49 30 901820", "Bäckerei Schön", "Köln", "50667"]]
    # "Mobil" is German: mapped by hand, the rest by alias.
    path.write_bytes(b"\xef\xbb\xbf" + "".join(line(r, ";") for r in rows).encode("utf-8"))
    refused = contacts("import", path, "--url", service.base)
    assert refused.returncode == 2 and "'Mobil'" in refused.stderr and "--map Mobil=" in refused.stderr
    done = contacts("import", path, "--url", service.base, "--map", "Mobil=via.phone")
    assert done.returncode == 0, done.stderr
    assert "created 1," in done.stdout
    found = [c for c in service.list_all(quiet=False) if c.get("display_name") == "Jürgen Müller"]
    assert len(found) == 1
    contact = found[0]
    assert contact["via"] == {"email": "juergen@example.de", "phone": "+49 30 901820"}
    assert contact["organization_name"] == "Bäckerei Schön"
    assert contact["address"] == {"city": "Köln", "postcode": "50667"}


def test_an_unmapped_column_sends_nothing(service, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("name,emial,shoe size\nAda,ada@example.org,38\n")
    before = total(service)
    done = contacts("import", path, "--url", service.base)
    assert done.returncode == 2
    assert "nothing was sent" in done.stderr and "'emial': it could be via.email" in done.stderr and "'shoe size'" in done.stderr
    assert total(service) == before


def test_ctrl_c_stops_after_the_batch_and_skip_resumes(service, tmp_path):
    names = [f"Resume {i:05d}" for i in range(1, 4001)]
    path = tmp_path / "resume.csv"
    path.write_text("name,email\n" + "".join(f"{n},r{i}@example.org\n" for i, n in enumerate(names)))
    before = total(service)
    env = {k: v for k, v in os.environ.items() if k not in ("systemToken", "CONTACTS_URL")}
    run = subprocess.Popen(COMMAND + ["import", str(path), "--url", service.base, "--batch-size", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: total(service) >= before + 300 or run.poll() is not None, 120, "the import to be under way")
        assert run.poll() is None, "the import ended before it could be interrupted"
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, out + err
    assert "stopping after the batch in flight" in err
    resume = [l for l in err.splitlines() if "to resume:" in l]
    assert resume, err
    skip = int(resume[-1].rsplit("--skip ", 1)[1])
    assert 300 <= skip < 4000 and skip % 100 == 0  # a batch boundary
    assert total(service) == before + skip  # stopped after the batch in flight, none half done
    assert f"--url {service.base}" in resume[-1] and "--batch-size 100" in resume[-1]

    done = contacts("import", path, "--url", service.base, "--batch-size", "100", "--skip", skip)
    assert done.returncode == 0, done.stderr
    assert f"created {4000 - skip:,}" in done.stdout
    imported = [c["display_name"] for c in service.list_all(quiet=False) if c.get("display_name", "").startswith("Resume ")]
    assert sorted(imported) == names  # each row once


def test_the_same_file_twice_with_upsert_creates_nothing_new(service, tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("name,email,city\nTwice Ada,twice.ada@example.org,London\nTwice Alan,TWICE.alan@example.org,\n")
    before = total(service)
    first = contacts("import", path, "--url", service.base, "--upsert-by", "email")
    assert first.returncode == 0, first.stderr
    path.write_text("name,email,city\nTwice Ada,Twice.Ada@example.org,Paris\nTwice Alan,twice.alan@example.org,\n")
    second = contacts("import", path, "--url", service.base, "--upsert-by", "email")
    assert second.returncode == 0, second.stderr
    assert "created 0, updated 2" in second.stdout
    assert total(service) == before + 2
    ada = [c for c in service.list_all(quiet=False) if c.get("display_name") == "Twice Ada"]
    assert len(ada) == 1 and ada[0]["address"]["city"] == "Paris"


RICH = [
    {
        "display_name": "Round Grace",
        "title": "Rear Admiral",
        "timezone": "America/New_York",
        "gender": "female",
        "locale": "en_US",
        "organization_name": "US Navy",
        "avatar_url": "https://example.org/grace.jpg",
        "via": {"email": "round.grace@example.org", "phone": "+1 202 555 0100", "telegram": "@grace"},
        "address": {"address_line1": "1 Main St,\nApt 2", "city": "Arlington", "country": "US"},
        "metadata": {"rank": "admiral", "nested": {"level": 2, "ok": True}, "quote": 'say "hi"; then,'},
        "conversations": {str(uuid.uuid4()): "facebook", str(uuid.uuid4()): "twilio.sms"},
    },
    {"display_name": "Round Ada", "via": {"email": "round.ada@example.org", "line": "ada-line"}},
    {"via": {"phone": "+44 20 7946 0999"}},  # no name: listed last
    {"display_name": "Round Ünïcødé 🙂", "timezone": 3600, "metadata": {"n": 1.5}},
]


def test_export_then_import_into_an_empty_service_then_export_gives_the_same_rows(services, service, tmp_path):
    answer = service.post("/contacts.import", RICH)
    assert answer.status_code == 201, answer.text
    first_csv, first_ndjson = tmp_path / "first.csv", tmp_path / "first.ndjson"
    done = contacts("export", first_csv, "--url", service.base)
    assert done.returncode == 0, done.stderr
    count = total(service)
    assert f"exported {count:,} contacts" in done.stdout
    done = contacts("export", first_ndjson, "--url", service.base)
    assert done.returncode == 0, done.stderr
    served = service.list_all(quiet=False)
    with open(first_ndjson, encoding="utf-8") as f:
        assert [json.loads(l) for l in f] == served  # NDJSON: the contacts as the API serves them

    empty = services(f"cli{uuid.uuid4().hex[:8]}", "empty")
    empty.wait_ready()
    imported = contacts("import", first_csv, "--url", empty.base)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert total(empty) == count
    second_csv = tmp_path / "second.csv"
    done = contacts("export", second_csv, "--url", empty.base)
    assert done.returncode == 0, done.stderr

    def rows(path: Path):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            dropped = [header.index(c) for c in ("id", "created_at", "updated_at")]
            return header, sorted(tuple(v for i, v in enumerate(r) if i not in dropped) for r in reader)

    header_one, rows_one = rows(first_csv)
    header_two, rows_two = rows(second_csv)
    assert header_one == header_two
    assert "via.telegram" in header_one and "via.line" in header_one and "address.city" in header_one
    assert len(rows_one) == count
    assert rows_one == rows_two
    grace = [r for r in rows_one if r[header_one.index("display_name") - 1] == "Round Grace"]
    assert len(grace) == 1


def test_a_503_while_the_service_restarts_is_retried_and_imports_each_batch_once(services, tmp_path):
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    first = services(prefix, "before-restart")
    first.wait_ready()
    seed = [{"display_name": f"Seed {i:05d}"} for i in range(5000)]
    for start in range(0, len(seed), 1000):
        assert first.post("/contacts.import", seed[start : start + 1000], timeout=60).status_code == 201
    names = [f"Retry {i:05d}" for i in range(1, 3001)]
    path = tmp_path / "retry.csv"
    path.write_text("name\n" + "".join(n + "\n" for n in names))
    env = {k: v for k, v in os.environ.items() if k not in ("systemToken", "CONTACTS_URL")}
    run = subprocess.Popen(
        COMMAND + ["import", str(path), "--url", first.base, "--batch-size", "100", "--retry-for", "150"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_for(lambda: total(first) >= 5300 or run.poll() is not None, 120, "the import to be under way")
        assert run.poll() is None, "the import ended before the restart"
        # A graceful stop answers the batch in flight; then the same port answers nothing, then
        # 503 while a replica on a fresh state folder rebuilds its store from the topic.
        first.stop()
        second = ServiceProcess({**first.env, "STATE_DIR": str(tmp_path / "fresh-state"), "INSTANCE_ID": "after-restart"}, tmp_path / "after-restart.log").start()
        try:
            seen = second.wait_ready()
            out, err = run.communicate(timeout=180)
            assert run.returncode == 0, out + err
            assert "retrying" in err and "same Idempotency-Key" in err
            assert "request(s) retried" in out
            retried = [l for l in err.splitlines() if "retrying" in l]
            assert any("connection refused" in l or "503" in l for l in retried), retried
            counted = [c["display_name"] for c in second.list_all(quiet=False) if c.get("display_name", "").startswith("Retry ")]
            assert sorted(counted) == names, f"{len(counted)} imported for {len(names)} rows"  # no batch twice, none lost
            assert total(second) == 5000 + len(names)
            print(f"\n[cli] restart mid-import: health statuses {seen}, {len(retried)} retries")
        finally:
            second.kill()
    finally:
        if run.poll() is None:
            run.kill()


def test_a_service_with_auth_takes_the_token_from_the_flag_or_system_token(services, tmp_path):
    token = uuid.uuid4().hex
    secured = services(f"cli{uuid.uuid4().hex[:8]}", "secured", systemToken=token)
    secured.wait_ready()
    path = tmp_path / "few.csv"
    path.write_text("name\nToken Ada\nToken Alan\n")
    refused = contacts("import", path, "--url", secured.base)
    assert refused.returncode == 1 and "pass --token or set systemToken" in refused.stderr
    done = contacts("import", path, "--url", secured.base, env_extra={"systemToken": token})
    assert done.returncode == 0, done.stderr
    exported = contacts("export", tmp_path / "few.ndjson", "--url", secured.base, "--token", token)
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 contacts" in exported.stdout
