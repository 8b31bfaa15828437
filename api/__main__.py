"""Entry point: `python -m api` serves the Contacts API (`--help` lists the settings).

HTTP_SERVER picks the server: gunicorn (gthread) or granian (api/granian_server.py). Either way
one worker process owns the RocksDB store and serves HTTP with HTTP_THREADS threads; SIGTERM
drains in-flight requests, then closes the service (producer flushed, store closed) and exits 0;
a start-up error no retry fixes ends the process with exit code 3.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from contacts_streams import kafka_security, logs
from contacts_streams.config import Config, ConfigError, describe

log = logging.getLogger("contacts_streams")
M_ARENA_MAX = -8
# The cyclic collector's first threshold (allocations less frees between young collections;
# CPython's default is 700). A write allocates thousands of short-lived objects, nearly none in
# cycles: at 700 a 1000-contact import ran ~2,000 collections and spent ~6% of its CPU in them
# (bench/writer_cpu.py), ~1% at this value; the memory the collector leaves for later is a few MB.
GC_YOUNG_THRESHOLD = 20_000
# gunicorn's arbiter halts the whole server (exit code 3) when a worker exits with this code,
# instead of booting a new worker that would fail the same way for ever.
WORKER_BOOT_ERROR = 3


def _stop_process(err) -> None:
    """A start-up error no retry fixes (credentials, CA, schema): the message is already logged;
    end the process so the platform sees a failed start, not a pod that is never ready."""
    print(f"contacts-streams cannot start: {err}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(WORKER_BOOT_ERROR)


def _close_service(worker) -> None:
    from api.app import close_service

    close_service(getattr(worker, "wsgi", None))


class JsonGunicornLogger(GunicornLogger):
    """gunicorn's own lines in the service's format, so LOG_FORMAT=json means every line."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.JsonFormatter())


class Server(BaseApplication):
    def __init__(self, config: Config):
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": f"0.0.0.0:{self.config.port}",
            "workers": 1,  # one process owns the store
            "worker_class": "gthread",
            "threads": self.config.http_threads,
            "graceful_timeout": 30,
            "timeout": 60,
            "keepalive": 30,
            "backlog": 2048,
            # gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
            # replicas on one machine (the multi-replica tests, make run beside them) would take
            # it from each other. Nothing here uses gunicornc.
            "control_socket_disable": True,
            "worker_exit": lambda server, worker: _close_service(worker),
            "loglevel": self.config.log_level.lower(),
        }
        if self.config.log_format == "json":
            settings["logger_class"] = JsonGunicornLogger
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from api.app import create_app

        logs.setup(self.config.log_format, self.config.log_level)
        return collect_less(create_app(self.config, on_fatal=_stop_process))


def _fewer_malloc_arenas() -> None:
    # glibc gives each thread its own malloc arena; with HTTP, consumer and producer threads
    # that fragments the heap into far more RSS than the service uses. Two arenas suffice.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def collect_less(app):
    """In the worker, once the app is built: what it holds so far (modules, the app, the
    service's objects) is moved out of the collector's reach (gc.freeze: never garbage, and the
    full collections no longer walk it), and young collections run less often. Returns the app."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    return app


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip() + "\n\n" + describe())
        return 0
    try:
        config = Config.from_env()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    _fewer_malloc_arenas()
    logs.setup(config.log_format, config.log_level)
    log.info(
        "serving the Contacts API on http://localhost:%d with %s (state in %s)", config.port, config.http_server, config.state_dir
    )
    log.info("Kafka at %s: %s", config.kafka_brokers, kafka_security.describe(config.extra_kafka))
    log.info('try: curl -s localhost:%d/contacts.create -d \'{"display_name": "Grace Hopper"}\'', config.port)
    if config.http_server == "granian":
        from api import granian_server

        return granian_server.run(config)
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
