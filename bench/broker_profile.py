"""Where the embedded broker's CPU goes during a phase: its requests by type (JMX) and its CPU
by thread (/proc), the broker's half of a write's cost that py-spy cannot see.

The request counts come from the broker's own `kafka.network:type=RequestMetrics` MBeans, read
by `BrokerRequests.java` through the JDK's attach API (no JMX port, no change to the broker's
command line); the thread CPU from `/proc/<pid>/task/*/stat`, grouped by thread name (digits
dropped), so the JIT compiler, the garbage collector, the network threads and the request
handlers each get a share. Both need the broker's pid: the embedded broker's, never an external
one.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("BrokerRequests.java")


def requests(pid: int) -> dict[str, tuple[int, float]]:
    """{request type: (count, total ms)} since the broker started; {} if the JDK can't attach."""
    java = shutil.which("java")
    if java is None:
        return {}
    try:
        out = subprocess.run([java, str(_SOURCE), str(pid)], capture_output=True, text=True, timeout=60, check=True).stdout
        return {k: (int(v[0]), float(v[1])) for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        log.warning("broker requests of %s unreadable: %s", pid, e)
        return {}


def threads(pid: int) -> tuple[dict[str, float], float, float]:
    """CPU seconds by thread group, and the process's user and system seconds."""
    groups: collections.Counter = collections.Counter()
    user = system = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            u, s = procs.stat_times(task / "stat")
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        groups[re.sub(r"\d+", "N", name)] += u + s
        user += u
        system += s
    return dict(groups), user, system


@dataclass
class Snapshot:
    requests: dict[str, tuple[int, float]] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    user: float = 0.0
    system: float = 0.0

    @classmethod
    def take(cls, pid: int, ending: bool = False) -> "Snapshot":
        """Reading the MBeans costs the broker CPU too (an RMI connection): the starting
        snapshot reads them before the threads and the ending one after, so the phase's CPU
        holds neither."""
        if ending:
            groups, user, system = threads(pid)
            return cls(requests(pid), groups, user, system)
        counts = requests(pid)
        groups, user, system = threads(pid)
        return cls(counts, groups, user, system)


def describe(before: Snapshot, after: Snapshot, operations: int, unit: str = "operation") -> str:
    """The phase's broker profile as text: requests per operation by type (with the broker's mean
    time for each), then CPU by thread group."""
    n = max(1, operations)
    cpu = (after.user - before.user) + (after.system - before.system)
    lines = [f"broker CPU {cpu:.1f} s for {operations:,} {unit}s = {cpu * 1000 / n:.2f} ms per {unit} "
             f"(user {after.user - before.user:.1f} s, system {after.system - before.system:.1f} s)"]
    rows = []
    for kind, (count, total) in after.requests.items():
        c0, t0 = before.requests.get(kind, (0, 0.0))
        if count > c0 and kind != "FetchConsumer":  # FetchConsumer repeats Fetch
            rows.append((count - c0, total - t0, kind))
    if rows:
        every = sum(r[0] for r in rows)
        lines.append(f"requests: {every:,} = {every / n:.2f} per {unit}")
        for count, total, kind in sorted(rows, reverse=True)[:10]:
            waits = " (its long-poll wait included)" if kind == "Fetch" else ""
            lines.append(f"  {count / n:7.2f} per {unit}  {kind:<32} mean {total / count:.2f} ms in the broker{waits}")
    spent = {k: v - before.threads.get(k, 0.0) for k, v in after.threads.items()}
    busy = sum(v for v in spent.values() if v > 0) or 1.0
    lines.append("CPU by broker thread:")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:8]:
        if seconds > 0:
            lines.append(f"  {100 * seconds / busy:5.1f}%  {name}")
    return "\n".join(lines)
