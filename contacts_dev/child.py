"""Run a command beside something this process provides (a broker, a registry) and stop that
when the command ends: `python -m contacts_dev.embedded_kafka -- CMD` and its registry twin."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable


def run_beside(command: list[str], env: dict[str, str], stop: Callable[[], None]) -> int:
    """Run `command` with `env` added to this environment; Ctrl-C and SIGTERM go to it (it
    decides how to end), and `stop` runs once it has ended. Returns its exit code."""
    child = subprocess.Popen(command, env={**os.environ, **env})

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    finally:
        stop()
