"""`contacts COMMAND ...` (installed as the `contacts` console script; `python -m contacts_cli`)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

import contacts_cli


def commands() -> dict[str, ModuleType]:
    """Every subcommand module of the package, by name (a module name's `_` is a `-`)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(contacts_cli.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"contacts_cli.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            # A trailing "_" lets a command be named after a keyword (import_.py: `contacts import`).
            found[info.name.rstrip("_").replace("_", "-")] = module
    return found


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="contacts", description="Tools for people around the contacts service.")
    subcommands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in commands().items():
        doc = (module.__doc__ or "").strip()
        sub = subcommands.add_parser(name, help=module.HELP, description=doc or module.HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
