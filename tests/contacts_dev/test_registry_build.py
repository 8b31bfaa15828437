"""contacts_dev.schema_registry: the registry binary is built once and safely when two runs race,
and the registry it starts listens on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import listening

from contacts_dev import schema_registry

ROOT = Path(__file__).resolve().parents[2]


def test_two_first_runs_at_once_build_one_binary(tmp_path):
    # An empty contacts-streams cache of its own; Go's build cache stays the machine's, so this
    # costs seconds, not the two minutes of a machine's first build.
    go_cache = subprocess.run([schema_registry._go(), "env", "GOCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "GOCACHE": go_cache, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "contacts_dev.schema_registry", "build"]
    runs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    binary = Path(paths.pop())
    assert binary.is_relative_to(tmp_path / "cache" / "contacts-streams" / "schema-registry")
    assert sum("building the schema registry" in err for _, err in outputs) == 1  # the other waited and found it
    assert [p.name for p in binary.parent.iterdir() if not p.name.startswith(".lock")] == ["schema-registry"]  # no scratch left
    version = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=10)
    assert version.returncode == 0 and schema_registry.version() in version.stdout


def test_the_registry_listens_on_loopback_only(private_registry):
    addresses = [address for address, _inode in listening(private_registry.port)]
    assert addresses == ["0100007F"]  # 127.0.0.1, nothing on 0.0.0.0 or ::
