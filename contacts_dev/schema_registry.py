"""A real schema registry for the tests and `make run`: AxonOps Schema Registry, a Go
implementation of Confluent's Schema Registry REST API (Apache-2.0).

The version is pinned by the Go tool module beside this file (``registry/go.mod``, ``go.sum``,
``tools.go``). It is built once per machine with the local Go toolchain into the per-user cache
(about two minutes cold), like helm::

    ~/.cache/contacts-streams/schema-registry/<version>-<pins hash>/schema-registry

Later runs find the binary. A concurrent first build is safe: one process builds (under a file
lock) into a temporary name and renames it into place, so the path is either absent or complete.

``Registry`` runs it on 127.0.0.1 with in-memory storage (it starts in about 0.1 s and forgets
everything when stopped), and can be stopped and started again on the same port (fault tests)::

    registry = Registry().start()
    registry.url            # http://127.0.0.1:<port>
    registry.stop()         # SIGTERM; start() again: same port, empty registry
    registry.pause()        # SIGSTOP: hangs with its schemas kept; resume() (SIGCONT)
    registry.close()

As a program: ``python -m contacts_dev.schema_registry build`` builds it and prints its path;
``python -m contacts_dev.schema_registry -- CMD`` runs CMD with ``KAFKA_SCHEMA_REGISTRY_URL`` set
to a registry that stops when CMD ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from contacts_dev.child import run_beside
from contacts_dev.embedded_kafka import _die_with_parent, _ensure, _free_port, _tail, cache_dir

MODULE_DIR = Path(__file__).with_name("registry")
PACKAGE = "github.com/axonops/axonops-schema-registry/cmd/schema-registry"
START_TIMEOUT_S = 15.0
BUILD_TIMEOUT_S = 900.0


class RegistryError(RuntimeError):
    """The registry could not be built or started; the message says why."""


def version() -> str:
    """The registry version go.mod pins."""
    for line in (MODULE_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", "github.com/axonops/axonops-schema-registry"] and len(parts) >= 3:
            return parts[2]
    raise RegistryError(f"{MODULE_DIR / 'go.mod'} does not require github.com/axonops/axonops-schema-registry")


def _pins_hash() -> str:
    # A change of go.mod/go.sum (a new version, a patched dependency) builds a new binary.
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def binary_path() -> Path:
    return cache_dir() / "schema-registry" / f"{version()}-{_pins_hash()}" / "schema-registry"


def _go() -> str:
    go = os.environ.get("GO") or shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise RegistryError("no Go toolchain (set GO=/path/to/go or put go on PATH); it builds the schema registry the tests use")
    return go


def registry_binary() -> Path:
    """The registry's binary, built on first use (see the module docstring)."""
    target = binary_path()
    if os.access(target, os.X_OK):
        return target
    folder = _ensure(target.parent)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent first run waits here, then finds the binary
        if os.access(target, os.X_OK):
            return target
        scratch = folder / f".schema-registry.{os.getpid()}.tmp"
        env = {
            **os.environ,
            # The toolchain on the machine, never one downloaded because a go.mod asks for it.
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=readonly",  # go.sum is committed: the build never changes the pins
        }
        command = [
            _go(), "build", "-trimpath", "-ldflags", f"-s -w -X main.version={version()}", "-o", str(scratch), PACKAGE,
        ]
        print(f"contacts_dev.schema_registry: building the schema registry {version()} (once; cached in {folder})", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=MODULE_DIR, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            scratch.unlink(missing_ok=True)
            raise RegistryError(f"building the schema registry took longer than {BUILD_TIMEOUT_S:.0f}s") from None
        if done.returncode != 0 or not scratch.exists():
            scratch.unlink(missing_ok=True)
            raise RegistryError(
                f"`{' '.join(command)}` in {MODULE_DIR} failed (it needs the Go version go.mod names and the Go module proxy):\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        os.replace(scratch, target)
        print(f"contacts_dev.schema_registry: built {target} in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return target


class Registry:
    """The registry as a process on 127.0.0.1 (in-memory storage), restartable on its port."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None):
        self.binary = registry_binary()
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = _ensure(log_dir or Path(tempfile.gettempdir())) / f"contacts-schema-registry-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> "Registry":
        """Start (again) on the same port; returns once it answers. Memory storage: it starts empty."""
        if self.running:
            return self
        # Only what it is meant to read: none of our environment's VAULT_*, AWS_*, ... (they switch
        # on key-management providers) nor SCHEMA_REGISTRY_* settings reach it.
        env = {
            "SCHEMA_REGISTRY_HOST": "127.0.0.1",  # its default is 0.0.0.0
            "SCHEMA_REGISTRY_PORT": str(self.port),
            "SCHEMA_REGISTRY_STORAGE_TYPE": "memory",
            "SCHEMA_REGISTRY_COMPATIBILITY_LEVEL": "BACKWARD",
            "HOME": tempfile.gettempdir(),
        }
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(
                [str(self.binary)], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(f"the schema registry exited with {self._proc.returncode}; log {self.log_file}:\n{_tail(self.log_file)}")
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RegistryError(f"the schema registry did not answer within {timeout:.0f}s; log {self.log_file}:\n{_tail(self.log_file)}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/config", timeout=1) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, SIGKILL if it hangs); it forgets every schema."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    close = stop

    def pause(self) -> None:
        """SIGSTOP: it keeps its port and schemas but answers nothing (connections hang), as a
        registry that is stuck would; resume() lets it answer again."""
        assert self._proc is not None and self.running
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    # The few REST calls the tests make directly (Confluent's API; the registry's own client is
    # confluent-kafka's SchemaRegistryClient).

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | list | None]:
        """(HTTP status, JSON body) of one call; error statuses are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        print(registry_binary())
        return 0
    if "--" not in argv:
        print("usage: python -m contacts_dev.schema_registry build | -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    registry = Registry().start()
    print(f"schema registry {version()} at {registry.url} (in memory); log: {registry.log_file}", flush=True)
    return run_beside(command, {"KAFKA_SCHEMA_REGISTRY_URL": registry.url}, registry.stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
