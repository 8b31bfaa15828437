"""What the webhook tests share: a real HTTP receiver (http.server in a thread) that checks
signatures with the README's snippet and fails on demand, and a transactional producer of change
events (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from confluent_kafka import Producer

from contacts_streams.events import EventCodec

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_verifier() -> Callable[[str, bytes, str], bool]:
    """The `verified` function of the README's Webhooks section, run as a reader would copy it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (Webhooks)", "exec"), namespace)
    return namespace["verified"]


class Receiver:
    """A local HTTP receiver. `behaviour(event, try_number)` answers "ok" (200, recorded), "500",
    "timeout" (answers nothing for `hang_s`, then drops the connection) or "close" (drops the
    connection without an answer). `accepted` lists what it answered 2xx to, in arrival order."""

    def __init__(self, secret: str, behaviour: Callable[[dict, int], str] | None = None, port: int = 0, hang_s: float = 1.0):
        self.secret = secret
        self.behaviour = behaviour or (lambda event, n: "ok")
        self.hang_s = hang_s
        self.verify = readme_verifier()
        self.lock = threading.Lock()
        self.accepted: list[dict] = []  # {"event", "event_id_header", "signature_ok", "content_type"}
        self.unique: set[str] = set()
        self.tries: dict[str, int] = defaultdict(int)
        self.requests = 0
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
            # http.server writes the headers and the body in two writes: with Nagle on, the body
            # waits for the client's delayed ACK (40 ms) on every request.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver.connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(body)
                with receiver.lock:
                    receiver.requests += 1
                    receiver.tries[event["event_id"]] += 1
                    n = receiver.tries[event["event_id"]]
                action = receiver.behaviour(event, n)
                if action == "ok":
                    record = {
                        "event": event,
                        "event_id_header": self.headers.get("X-Contacts-Event-Id"),
                        "content_type": self.headers.get("Content-Type"),
                        "signature_ok": receiver.verify(receiver.secret, body, self.headers.get("X-Contacts-Signature", "")),
                    }
                    with receiver.lock:
                        receiver.accepted.append(record)
                        receiver.unique.add(event["event_id"])
                    self._answer(200, b'{"ok": true}')
                elif action == "500":
                    self._answer(500, b"receiver broke")
                elif action == "timeout":
                    time.sleep(receiver.hang_s)
                    self.close_connection = True
                else:  # "close"
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.allow_reuse_address = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: no listener, and the kept-alive connections are cut."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server = None

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.unique)

    def count(self) -> int:
        """Distinct events accepted."""
        return len(self.unique)

    def per_contact(self) -> dict[str, list[str]]:
        """Event ids each contact's events were accepted in, first acceptance only."""
        seen, order = set(), defaultdict(list)
        with self.lock:
            accepted = list(self.accepted)
        for a in accepted:
            event = a["event"]
            if event["event_id"] not in seen:
                seen.add(event["event_id"])
                order[event["contact_id"]].append(event["event_id"])
        return order


class Events:
    """Change events of a few contacts, produced in transactions as the writer does."""

    def __init__(self, kafka: str, topic: str):
        self.topic = topic
        self.codec = EventCodec()
        self.producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"events-{uuid.uuid4()}", "linger.ms": 5})
        self.producer.init_transactions(30)
        self.by_contact: dict[str, list[str]] = defaultdict(list)  # produced order
        self.events: dict[str, dict] = {}

    def event(self, contact_id: str, operation: str = "updated") -> dict:
        n = len(self.by_contact[contact_id])
        return {
            "event_id": str(uuid.uuid4()),
            "contact_id": contact_id,
            "operation": operation if n else "created",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "actor": "system",
            "origin": "http",
            "other_contact_id": None,
            "changes": [{"path": "display_name", "before": json.dumps(f"name {n - 1}") if n else None, "after": json.dumps(f"name {n}")}],
        }

    def produce(self, contacts: list[str], per_contact: int, operation: str = "updated", batch: int = 500) -> list[dict]:
        """per_contact events of each contact, interleaved, committed in transactions of `batch`."""
        made = []
        for _ in range(per_contact):
            for contact in contacts:
                made.append(self.event(contact, operation))
                self.by_contact[contact].append(made[-1]["event_id"])
                self.events[made[-1]["event_id"]] = made[-1]
        for start in range(0, len(made), batch):
            self.producer.begin_transaction()
            for event in made[start:start + batch]:
                self.producer.produce(self.topic, key=event["contact_id"].encode(), value=self.codec.encode(event))
                self.producer.poll(0)
            self.producer.commit_transaction(30)
        return made

    def raw(self, key: str, value: bytes) -> None:
        self.producer.begin_transaction()
        self.producer.produce(self.topic, key=key.encode(), value=value)
        self.producer.commit_transaction(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
