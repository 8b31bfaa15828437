"""`python -m api` with HTTP_SERVER=granian: granian's Rust HTTP server in front of the WSGI app.

The layout is gunicorn's: a master process that holds the socket and forwards signals, and one
worker process that owns the RocksDB store and runs the app on HTTP_THREADS blocking threads.
Granian has no worker-exit hook, so the worker's body is wrapped instead: granian's own WSGI
worker returns once SIGTERM has drained every request it accepted (in flight and queued), and
then the service closes (producer flushed, store closed) before the process ends.
"""

from __future__ import annotations

import logging
import sys

from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.mp import MPServer, WorkerProcess

from contacts_streams import logs
from contacts_streams.config import Config

log = logging.getLogger("contacts_streams")

# The same code as gunicorn's boot-error halt (api.__main__.WORKER_BOOT_ERROR), so the platform
# and the tests see one exit code for "cannot start" whatever the server.
WORKER_BOOT_ERROR = 3
# As gunicorn's graceful_timeout: how long SIGTERM waits for the worker to drain and close
# before it is killed (the chart's terminationGracePeriodSeconds leaves room for it).
GRACEFUL_TIMEOUT_S = 30
BACKLOG = 2048

# granian's WSGI worker body, without the process wrapper (wrap_target: logging, the socket,
# the app loader) that _worker below adds back around our own body.
_wsgi_worker_body = MPServer._spawn_wsgi_worker.__wrapped__


@WorkerProcess.wrap_target
def _worker(worker_id, app, *args):
    try:
        _wsgi_worker_body(worker_id, app, *args)
    finally:
        from api.app import close_service

        close_service(app)


def _load_app(_target: str):
    """Runs in the worker: the only process that opens the store and the Kafka clients."""
    from api.__main__ import _stop_process, collect_less
    from api.app import create_app

    config = Config.from_env()
    logs.setup(config.log_format, config.log_level)
    return collect_less(create_app(config, on_fatal=_stop_process))


def granian_logging(level: str) -> dict:
    """granian's loggers hand their records to the root logger, which `logs.setup` formats as
    every other line of the service (LOG_FORMAT=json: every line)."""
    return {
        "loggers": {
            "_granian": {"handlers": [], "propagate": True, "level": level.upper()},
            "granian.access": {"handlers": [], "propagate": True, "level": level.upper()},
        },
    }


class _NoThreadCountAdvice(logging.Filter):
    """granian warns at every start when the blocking threads outnumber twice the cores. Here
    they are HTTP_THREADS, the operator's choice, and most of them wait for the broker (a write
    waits for its reply), not for the interpreter: a warning in every pod's start would be noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


class Server(MPServer):
    def __init__(self, config: Config):
        super().__init__(
            "api.granian_server:_load_app",  # what granian names in its logs; _load_app builds it
            address="0.0.0.0",
            port=config.port,
            interface=Interfaces.WSGI,
            workers=1,  # one process owns the store
            blocking_threads=config.http_threads,
            backlog=BACKLOG,
            http=HTTPModes.http1,
            websockets=False,
            log_level=LogLevels(config.log_level.lower()),
            log_dictconfig=granian_logging(config.log_level),
            # A worker that dies ends the process (the platform restarts it, the store is
            # crash-safe): no respawn loop for an error no retry fixes.
            respawn_failed_workers=False,
            workers_kill_timeout=GRACEFUL_TIMEOUT_S,
        )
        # granian's dictConfig above replaced the handlers: the service's format again.
        logs.setup(config.log_format, config.log_level)
        logging.getLogger("_granian").addFilter(_NoThreadCountAdvice())

    def shutdown(self, exit_code=0):
        if any(worker.inner.exitcode == WORKER_BOOT_ERROR for worker in self.wrks):
            exit_code = WORKER_BOOT_ERROR
        super().shutdown(exit_code)

    def run(self) -> None:
        self.serve(spawn_target=_worker, target_loader=_load_app)


def run(config: Config) -> int:
    try:
        Server(config).run()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    sys.stdout.flush()
    return 0
