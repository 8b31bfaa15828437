"""Sampling the service process with py-spy during a phase, summarized as text.

py-spy attaches from outside (no change to the service), `--nonblocking` so the service is not
paused while sampled; `--subprocesses` follows gunicorn's worker; `--gil` keeps only the thread
holding the GIL: with one process serving everything, the GIL is the resource the threads
queue for, so these samples say where the interpreter's time goes.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    def __init__(self, pid: int, out: Path, rate: int = 250):
        self.out = out
        binary = py_spy()
        self.proc = None
        if binary is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil", "--rate", str(rate),
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarize(self.out) if self.out.exists() else None


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; the line number is dropped so
    # that one function's samples add up.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("contacts_streams", "api", "bench", "site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            path = "/".join(parts[i + 1 :] if anchor in ("site-packages", "lib") else parts[i:])
            break
    return f"{name} ({path})"


def _package(short: str) -> str:
    path = short.rsplit(" (", 1)[-1].rstrip(")")
    parts = [p for p in path.split("/") if p and not p.startswith("python3")]
    if not parts:
        return "?"
    head = parts[0]
    return head[:-3] if head.endswith(".py") else head


def summarize(path: Path, top: int = 15) -> str:
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    packages: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        leaf = _short(frames[-1])
        self_time[leaf] += n
        packages[_package(leaf)] += n
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += n
    if not total:
        return "no samples"
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    out = [f"{total} samples holding the GIL", "", "self time by package:"]
    out += ["  " + ", ".join(f"{p} {100 * n / total:.0f}%" for p, n in packages.most_common(10))]
    out += ["", "self time:"]
    out += [f"  {pct(n)}  {f}" for f, n in self_time.most_common(top)]
    out += ["", "inclusive (project code):"]
    roots = ("<module> (", "main (api/__main__.py)")
    ours = [(f, n) for f, n in inclusive.most_common() if ("contacts_streams/" in f or "api/" in f) and not f.startswith(roots)]
    out += [f"  {pct(n)}  {f}" for f, n in ours[:top]]
    return "\n".join(out) + os.linesep
