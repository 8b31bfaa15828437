"""The HTTP layer: validation, status codes and JSON shapes. Stream and store logic live in
`contacts_streams/`; this package only translates. `create_app` wires the parts: the Contacts API
(`contacts_api`), the operations paths (`operations`), the console (`console`), the error
handlers (`errors`), the request metrics (`request_metrics`) and auth and CORS (`security`).
"""

from __future__ import annotations

from flask import Flask

from api import errors, reads, request_metrics, security
from api.console import console
from api.contacts_api import contacts_api
from api.fastpath import FastReads
from api.operations import operations
from api.wire import MAX_BODY_BYTES
from contacts_streams.config import Config
from contacts_streams.service import Service

__all__ = ["MAX_BODY_BYTES", "close_service", "create_app"]


def create_app(config: Config, service: Service | None = None, on_fatal=None, fast_reads: bool = True) -> Flask:
    """Build the app from a config; without a service, one is made and started in the background
    (`on_fatal` is called if its start meets a FatalError). `fast_reads=False` leaves out the
    fast path for hot reads (api/fastpath.py): the bare Flask app, which the tests compare it with."""
    if service is None:
        service = Service(config, on_fatal=on_fatal).start()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["contacts_service"] = service
    app.extensions["contacts_config"] = config
    app.extensions["contacts_guard"] = security.Guard(config)
    app.extensions["contacts_json"] = reads.ContactJson(service.store.codec.decode_contact)
    app.extensions["contacts_page_json"] = reads.ContactJson(
        service.store.codec.decode_contact, reads.PAGE_ITEM_JSON_BYTES, shape=reads.page_item
    )
    # Hooks run in this order: the timer starts first, a preflight is answered before the
    # Contacts API's gate (registered with its blueprint) asks for a token.
    app.extensions["contacts_request_metrics"] = request_metrics.register(app, service.metrics)
    security.allow_origins(app, config.allowed_origins)
    errors.register(app)
    app.register_blueprint(contacts_api)
    app.register_blueprint(operations)
    app.register_blueprint(console)
    if fast_reads:
        app.wsgi_app = FastReads(app, app.wsgi_app)  # type: ignore[method-assign]
    return app


def close_service(app: object) -> None:
    """Close the service an app made (producer flushed, store closed): each server's worker,
    once it has drained its requests (anything else, or no app yet: nothing to close)."""
    service = getattr(app, "extensions", {}).get("contacts_service")
    if service is not None:
        service.close()
