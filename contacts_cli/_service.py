"""Talking to a running contacts service over HTTP: where it is (`--url`, `--token`), and
requests that ride out a restart (503 with Retry-After, a refused or dropped connection) with
backoff, resending the same body with the same Idempotency-Key.

Standard library only (one keep-alive connection): the command also runs in the service's image.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from contacts_streams import model

DEFAULT_URL = "http://localhost:8080"
FIRST_CONTACT_S = 10.0  # how long to retry a service that has never answered
USER_AGENT = "contacts-cli/0.1"


def add_service_arguments(parser) -> None:
    parser.add_argument("--url", help=f"the service's URL [default: CONTACTS_URL, else `make run`'s, else {DEFAULT_URL}]")
    parser.add_argument("--token", help="Bearer token when the service has auth on [default: the systemToken environment variable]")


def service_url(args, environ=os.environ) -> str:
    if getattr(args, "url", None):
        return args.url
    if environ.get("CONTACTS_URL", "").strip():
        return environ["CONTACTS_URL"].strip()
    try:  # a clone's `make run` says where it serves; the service's image has no contacts_dev
        from contacts_dev import run as make_run

        kept = make_run.running() or {}
        if kept.get("url"):
            return kept["url"]
    except ImportError:
        pass
    return DEFAULT_URL


def service_token(args, environ=os.environ) -> str | None:
    return getattr(args, "token", None) or environ.get("systemToken") or None


class ServiceError(Exception):
    """The service answered something other than success, or never answered in time."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}


@dataclass
class Answer:
    status: int
    body: object
    headers: dict[str, str]
    retries: int = 0


class Client:
    """POSTs JSON to one service. Transient failures (503, no connection, a dropped or timed-out
    request) are retried with backoff for up to ``retry_for`` seconds; ``say`` hears about each."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, retry_for: float = 120.0, say: Callable[[str], None] | None = None):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(f"--url {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self.retry_for = retry_for
        self._say = say or (lambda _m: None)
        self._conn: http.client.HTTPConnection | None = None
        self.answered = False  # the service has answered once (any status)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _once(self, path: str, data: bytes, headers: dict[str, str], raw_ok: bool = False) -> Answer:
        conn = self._connection()
        try:
            conn.request("POST", self._base + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise
        if response.will_close:
            self.close()
        if raw_ok and response.status == 200:
            return Answer(response.status, raw, {k.lower(): v for k, v in response.getheaders()})
        try:
            body = model.json_loads_exact(raw) if raw else {}
        except ValueError:
            body = {"message": raw[:300].decode("utf-8", "replace")}
        return Answer(response.status, body, {k.lower(): v for k, v in response.getheaders()})

    def post(
        self, path: str, body: bytes | dict | list, idempotency_key: str | None = None, raw_ok: bool = False, minimal: bool = False
    ) -> Answer:
        """The service's answer (any status but 503); raises ServiceError once retrying is over.
        ``raw_ok``: a 200's body is left as the bytes received (the caller parses it when it
        wants to); any other status's is parsed as always. ``minimal``: ask for an answer
        without the written contacts (``Prefer: return=minimal``; a service that does not know
        it answers in full)."""
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        # X-Contacts-Origin: the change events of these writes say they came from the command line.
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT, "X-Contacts-Origin": "cli"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if minimal:
            headers["Prefer"] = "return=minimal"
        started = time.monotonic()
        deadline = started + self.retry_for
        retries, delay = 0, 0.5
        while True:
            try:
                answer = self._once(path, data, headers, raw_ok)
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, dropped
                why = _describe(err)
                wait = delay
                answer = None
                if not self.answered and time.monotonic() + wait > started + FIRST_CONTACT_S:
                    # Never reached: most likely a wrong --url, not a restart to ride out.
                    raise ServiceError(f"no service answers at {self.url} ({why}): start it, or pass --url") from None
            else:
                self.answered = True
                if answer.status != 503:
                    answer.retries = retries
                    return answer
                why = f"503 {_message(answer.body)}"
                wait = _retry_after(answer.headers, delay)
            if time.monotonic() + wait > deadline:
                raise ServiceError(
                    f"{self.url}{path}: no answer after retrying for {self.retry_for:.0f}s (last: {why})",
                    status=answer.status if answer else None,
                    body=answer.body if answer and isinstance(answer.body, dict) else None,
                )
            retries += 1
            self._say(f"{self.url}{path}: {why}; retrying in {wait:.1f}s" + (" (same Idempotency-Key)" if idempotency_key else ""))
            time.sleep(wait)
            delay = min(delay * 2, 10.0)


def _retry_after(headers: dict[str, str], fallback: float) -> float:
    try:
        return min(max(float(headers.get("retry-after", "")), 0.2), 30.0)
    except ValueError:
        return fallback


def _message(body) -> str:
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:200]
    return str(body)[:200]


def _describe(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the service running?)"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def error_text(answer: Answer) -> str:
    body = answer.body
    if isinstance(body, dict):
        text = body.get("message") or json.dumps(body)[:300]
        if body.get("field"):
            text += f" (field {body['field']})"
        return f"{answer.status} {text}"
    return f"{answer.status} {str(body)[:300]}"
