"""The runtime packages (what the chart's image ships) hold only what runs in production."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("contacts_streams", "api")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_runtime_packages_never_import_development_support():
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] in ("contacts_dev", "tests", "bench"))
        for package in RUNTIME
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_embedded_broker_and_record_builders_are_not_in_the_runtime_package():
    assert not (ROOT / "contacts_streams" / "embedded_kafka.py").exists()
    assert not (ROOT / "contacts_streams" / "kafka-pom.xml").exists()
    import contacts_streams.serialization as serialization

    assert not hasattr(serialization, "airy_message") and not hasattr(serialization, "airy_metadata")


def test_the_contacts_command_loads_without_development_support():
    # The image ships contacts_cli; a subcommand that needs contacts_dev imports it when run.
    offenders = {}
    for path in (ROOT / "contacts_cli").rglob("*.py"):
        top_level = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.module}
        bad = sorted(n for n in names if n.split(".")[0] in ("contacts_dev", "tests", "bench"))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY contacts_cli ./contacts_cli" in dockerfile and "contacts_dev" not in dockerfile
