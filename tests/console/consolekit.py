"""The console tests' service: a started service with its app served over HTTP on a port of its own."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import requests


@dataclass
class Console:
    """A started service with the console served over HTTP on a port of its own."""

    url: str
    token: str | None = None

    def api(self, path: str, body, status: int):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = requests.post(self.url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == status, (response.status_code, response.text)
        return response.json() if response.content else None

    def create(self, **fields) -> dict:
        return self.api("/contacts.create", fields, 201)


def serve_console(kafka: str, name: str, state_dir: str, **overrides):
    """Yield a Console: a service with topics of its own and its app on 127.0.0.1 (from a
    module-scoped fixture)."""
    from support import test_config
    from werkzeug.serving import make_server

    from api.app import create_app
    from contacts_streams.service import Service

    config = test_config(kafka, f"{name}-{uuid.uuid4().hex[:8]}", state_dir, **overrides)
    service = Service(config).start(wait=True, timeout=60)
    server = make_server("127.0.0.1", 0, create_app(config, service), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"console-{name}", daemon=True)
    thread.start()
    try:
        yield Console(f"http://127.0.0.1:{server.server_port}", overrides.get("system_token"))
    finally:
        server.shutdown()
        thread.join(timeout=10)
        service.close()
