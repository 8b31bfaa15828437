"""A small HTTP/1.1 keep-alive load client on raw asyncio streams.

Requests are prepared as bytes before the clock starts, so the client spends its time on the
socket, not on building JSON: on 2 cores the client must not be what is measured. Every load is
bounded by a request count and a wall-clock limit.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

HOST = "127.0.0.1"


def post(path: str, body: bytes | dict | list, host: str = HOST) -> bytes:
    """One POST request as bytes (JSON body)."""
    if not isinstance(body, bytes):
        body = json.dumps(body, separators=(",", ":")).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def get(path: str, host: str = HOST) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, of the requests that answered
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection failures (not HTTP error statuses)
    elapsed: float = 0.0
    concurrency: int = 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in seconds (q in 0..100)."""
        return percentile(self.latencies, q)

    def ok(self, *expected: int) -> int:
        return sum(n for status, n in self.statuses.items() if status in expected)

    def check(self, *expected: int) -> "LoadResult":
        """Raise unless every request answered with one of the expected statuses."""
        bad = {s: n for s, n in self.statuses.items() if s not in expected}
        if bad or self.errors or not self.latencies:
            raise LoadError(f"unexpected answers: statuses {self.statuses}, connection errors {self.errors}")
        return self


class LoadError(RuntimeError):
    pass


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n)
    return ordered[rank - 1]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    close = b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.0")
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        body = await reader.readexactly(int(lower[at + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:  # no length: the body runs to the end of the connection
        body = await reader.read()
        close = True
    return status, body, close


async def _load(
    port: int,
    requests: Sequence[bytes] | Callable[[int], bytes],
    total: int,
    concurrency: int,
    time_limit: float,
    on_response: Callable[[int, int, bytes], None] | None,
    host: str,
) -> LoadResult:
    result = LoadResult(concurrency=concurrency)
    make = requests if callable(requests) else requests.__getitem__
    next_index = 0
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal next_index
        reader = writer = None
        try:
            while True:
                if next_index >= total or time.perf_counter() > deadline:
                    return
                index = next_index
                next_index += 1
                request = make(index)
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                    except OSError:
                        result.errors += 1
                        await asyncio.sleep(0.01)
                        continue
                t0 = time.perf_counter()
                try:
                    writer.write(request)
                    status, body, close = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader = writer = None
                    continue
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if on_response is not None:
                    on_response(index, status, body)
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def load(
    port: int,
    requests: Sequence[bytes] | Callable[[int], bytes],
    *,
    total: int | None = None,
    concurrency: int = 1,
    time_limit: float = 30.0,
    on_response: Callable[[int, int, bytes], None] | None = None,
    host: str = HOST,
) -> LoadResult:
    """Send `total` requests (default: all of `requests`) over `concurrency` keep-alive
    connections, each request once, stopping early at `time_limit` seconds."""
    if total is None:
        total = len(requests)  # type: ignore[arg-type]
    return asyncio.run(_load(port, requests, total, concurrency, time_limit, on_response, host))


def call(port: int, method: str, path: str, body=None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One plain request outside any measurement (setup, polling)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def call_json(port: int, path: str, body=None, timeout: float = 30.0) -> tuple[int, object]:
    status, data = call(port, "POST", path, body if body is not None else {}, timeout)
    return status, (json.loads(data) if data else None)
