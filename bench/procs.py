"""The service (and the baseline servers) as separate processes: start, ready, RSS, stop."""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("gunicorn", "waitress", "granian")


def tree(root: int) -> list[int]:
    """A process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def stat_times(stat: Path) -> tuple[float, float]:
    """User and system CPU seconds of a process or a thread: fields 14 and 15 of its
    `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`). Raises OSError once it is gone."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(root: int | None) -> float:
    """User plus system CPU time of a process and its descendants (0 for None or a gone one),
    every thread included."""
    if root is None:
        return 0.0
    total = 0.0
    for pid in tree(root):
        try:
            total += sum(stat_times(Path(f"/proc/{pid}/stat")))
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_available(server: str) -> bool:
    if server == "gunicorn":
        return True
    try:
        __import__(server)
        return True
    except ImportError:
        return False


def _die_with_parent() -> None:
    # The child gets SIGTERM if the benchmark dies, even by SIGKILL: no orphaned servers.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# The servers `python -m api` itself runs (HTTP_SERVER): the service is measured as deployed.
ENTRY_POINT_SERVERS = ("gunicorn", "granian")


def command(server: str, app: str) -> list[str]:
    """How to run `app` (service, constant, flask-constant, asyncio) under `server`."""
    if server in ENTRY_POINT_SERVERS and app == "service":
        return [sys.executable, "-m", "api"]  # the production entry point, unchanged
    return [sys.executable, "-m", "bench.serve", "--server", server, "--app", app]


def server_env(server: str, app: str) -> dict[str, str]:
    """The environment `command(server, app)` needs besides the service's settings."""
    return {"HTTP_SERVER": server} if server in ENTRY_POINT_SERVERS and app == "service" else {}


class Proc:
    """One server process; its whole process tree counts for RSS."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log_dir: Path):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.stop_seconds: float | None = None  # SIGTERM to exit

    def start(self) -> "Proc":
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log = open(self.log_path, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float, path: str = "/actuator/health") -> float:
        """Seconds from process start until `GET path` answers 200."""
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}:\n{self.tail()}")
            time.sleep(0.01)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def tree(self) -> list[int]:
        """This process and its descendants."""
        return tree(self.pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of this process and its descendants so far."""
        return cpu_seconds(self.pid)

    def rss(self) -> dict[str, float]:
        """VmRSS (MB) of the whole process tree and of its largest process (the one owning the store)."""
        sizes = []
        for pid in self.tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes.append(int(line.split()[1]) / 1024)
            except OSError:
                pass
        return {"total": sum(sizes), "largest": max(sizes, default=0.0), "processes": len(sizes)}

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        asked = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
            self.stop_seconds = time.monotonic() - asked
            return code
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session this benchmark started for it
            except ProcessLookupError:
                pass
            return self.proc.wait(10)
