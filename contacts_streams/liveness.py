"""Whether a stream stage still moves: input waiting for it, and when it last advanced.

A stage that is alive but never gets past its input (blocked on a lock, a store that does not
take writes, a batch that fails on every try) looks healthy to a thread check. Each stage keeps a
``Progress``: per partition, since when input has been waiting without the stage committing
past it. The service's watchdog reads them (``LIVENESS_STALL_MS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable


class Progress:
    def __init__(self, stage: str):
        self.stage = stage
        self._lock = threading.Lock()
        self._waiting_since: dict[Hashable, float] = {}
        self.last_problem: str | None = None

    def waiting(self, keys: Iterable[Hashable], now: float | None = None) -> None:
        """Input waits in these partitions (records in hand, or lag): the clock starts if it
        is not running already."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._waiting_since.setdefault(key, now)

    def advanced(self, keys: Iterable[Hashable]) -> None:
        """The stage committed past what waited in these partitions (or nothing waits there)."""
        with self._lock:
            for key in keys:
                self._waiting_since.pop(key, None)
            if not self._waiting_since:
                self.last_problem = None

    def only(self, keys: Iterable[Hashable]) -> None:
        """The stage holds these partitions now: others moved to another instance."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._waiting_since if k not in keep]:
                del self._waiting_since[key]

    def problem(self, message: str) -> None:
        """Why the last attempt did not advance (shown when the stage is reported stalled)."""
        self.last_problem = message

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the longest-waiting input has waited without the stage advancing past it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - min(self._waiting_since.values()) if self._waiting_since else 0.0

    def describe(self, now: float | None = None) -> str:
        waited = self.stalled_for(now)
        text = f"{self.stage} has made no progress on waiting input for {waited:.0f} s"
        return f"{text} (last problem: {self.last_problem})" if self.last_problem else text
