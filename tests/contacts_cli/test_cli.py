"""The `contacts` command: subcommands are the package's modules, found by themselves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import contacts_cli
from contacts_cli.__main__ import commands, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_subcommands():
    contacts = Path(sys.executable).with_name("contacts")
    command = [str(contacts)] if contacts.exists() else [sys.executable, "-m", "contacts_cli"]
    done = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "demo" in done.stdout


def test_a_new_subcommand_is_one_module(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello.py").write_text(textwrap.dedent('''
        """Say hello."""
        HELP = "say hello"

        def add_arguments(parser):
            parser.add_argument("--name", default="world")

        def run(args):
            print(f"hello {args.name}")
            return 0
    '''))
    monkeypatch.setattr(contacts_cli, "__path__", [*contacts_cli.__path__, str(tmp_path)])
    monkeypatch.syspath_prepend(str(tmp_path.parent))
    sys.modules.pop("contacts_cli.hello", None)
    try:
        assert "hello" in commands() and "demo" in commands()
        assert main(["hello", "--name", "Ada"]) == 0
        assert capsys.readouterr().out == "hello Ada\n"
    finally:
        sys.modules.pop("contacts_cli.hello", None)


def test_demo_without_the_development_package_says_so():
    # The service's image installs contacts_cli but not contacts_dev.
    script = (
        "import sys; sys.modules['contacts_dev'] = None\n"
        "from contacts_cli.__main__ import main; sys.exit(main(['demo']))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "needs a clone of the repository" in done.stderr


def test_demo_without_a_broker_says_how_to_get_one(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CONTACTS_RUN_DIR": str(tmp_path / "nothing")}
    done = subprocess.run([sys.executable, "-m", "contacts_cli", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "start `make run`" in done.stderr and "--brokers" in done.stderr


@pytest.mark.parametrize("bad", [["--conversations", "0"], ["--duplicate-groups", "-1"]])
def test_demo_refuses_bad_counts(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", *bad])
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err
