"""Servers the benchmark runs besides `python -m api`.

    python -m bench.serve --server gunicorn|waitress|granian|asyncio --app service|constant|flask-constant

- ``service``: the Contacts API (``api.app.create_app``) under another production server, to
  compare with gunicorn gthread. One process owns RocksDB in every case (one worker).
- ``constant``: a bare WSGI callable answering a constant small JSON body: the HTTP ceiling of
  that server (the baseline of ``/contacts.info``).
- ``flask-constant``: the same body from a Flask view: what the framework costs on top.
- ``asyncio`` server: a raw asyncio constant responder, to check the load client alone.

Settings come from the service's own environment (PORT, HTTP_THREADS, LOG_LEVEL), so a baseline
runs with exactly the threads the service gets.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import signal
import sys

from contacts_streams.config import Config

CONSTANT_BODY = json.dumps(
    {
        "id": "6b3b1d8e-4c1e-4f4f-9b9b-0d4b1f0e0c11",
        "display_name": "Grace Hopper",
        "via": {"email": "grace@example.org", "phone": "+15550100"},
        "conversations": {"0c7f4b0e-5d5b-4a53-9d0e-3f6a4d1e2b77": "facebook"},
        "created_at": "2021-11-16T13:21:03.580Z",
        "updated_at": "2021-11-16T13:21:03.580Z",
        "merge_history": [],
    },
    separators=(",", ":"),
).encode()
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(CONSTANT_BODY)))]


def constant_app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", list(_HEADERS))
    return [CONSTANT_BODY]


constant_app.extensions = {}  # what api.__main__'s worker_exit hook looks up


def flask_constant_app():
    from flask import Flask, Response, request

    app = Flask("constant")

    @app.post("/contacts.info")
    def info():
        json.loads(request.get_data(cache=False) or b"{}")
        return Response(CONSTANT_BODY, status=200, mimetype="application/json")

    @app.get("/actuator/health")
    def health():
        return Response(b'{"status":"UP"}', status=200, mimetype="application/json")

    return app


def service_app():
    """The Contacts API with its service, as `python -m api` builds it."""
    from api.app import create_app
    from contacts_streams import logs

    config = Config.from_env()
    logs.setup(config.log_format, config.log_level)
    app = create_app(config)
    service = app.extensions["contacts_service"]
    atexit.register(service.close)
    return app


def make_app(name: str):
    if name == "constant":
        return constant_app
    if name == "flask-constant":
        return flask_constant_app()
    if name == "service":
        return service_app()
    raise SystemExit(f"unknown app {name!r}")


# granian imports its target in the worker process: these are its factories.
def granian_service():
    return service_app()


def granian_constant():
    return constant_app


def granian_flask_constant():
    return flask_constant_app()


def run_gunicorn(config: Config, app_name: str) -> None:
    from api.__main__ import Server  # the production settings, unchanged

    class BenchServer(Server):
        def load(self):
            return make_app(app_name)

    BenchServer(config).run()


def run_waitress(config: Config, app_name: str) -> None:
    import waitress

    app = make_app(app_name)
    server = waitress.create_server(app, host="0.0.0.0", port=config.port, threads=config.http_threads, backlog=2048)

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    finally:
        service = getattr(app, "extensions", {}).get("contacts_service")
        if service is not None:
            service.close()


def run_granian(config: Config, app_name: str) -> None:
    target = {"service": "granian_service", "constant": "granian_constant", "flask-constant": "granian_flask_constant"}[app_name]
    argv = [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1",
        "--blocking-threads", str(config.http_threads), "--host", "0.0.0.0", "--port", str(config.port),
        "--no-ws", "--http", "1", "--log-level", "warning", "--factory", f"bench.serve:{target}",
    ]
    os.execv(sys.executable, argv)


def run_asyncio(config: Config) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CONSTANT_BODY) + CONSTANT_BODY
    )

    class Constant(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.transport.write(response)

    async def main():
        server = await asyncio.get_running_loop().create_server(Constant, "0.0.0.0", config.port, backlog=2048)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--server", choices=("gunicorn", "waitress", "granian", "asyncio"), required=True)
    parser.add_argument("--app", choices=("service", "constant", "flask-constant"), default="constant")
    args = parser.parse_args(argv)
    config = Config.from_env()
    if args.server == "gunicorn":
        run_gunicorn(config, args.app)
    elif args.server == "waitress":
        run_waitress(config, args.app)
    elif args.server == "granian":
        run_granian(config, args.app)
    else:
        run_asyncio(config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
