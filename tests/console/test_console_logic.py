"""The console's pure logic, without a browser or a broker."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from api import console as console_module


@pytest.fixture(scope="module")
def app():
    app = Flask("console-logic")
    app.register_blueprint(console_module.console)
    return app


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/console", "/\\evil.example", "/consolex", "javascript:alert(1)", "/contacts.list", "", None, "/console\\@evil", "/console/\r\nSet-Cookie: x=1"],
)
def test_sign_in_never_sends_the_person_off_the_console(app, target):
    with app.test_request_context():
        assert console_module._safe_next(target) == "/console"


@pytest.mark.parametrize("target", ["/console", "/console/duplicates", "/console?q=ada", "/console/contacts/1b2c?history_cursor=x"])
def test_sign_in_returns_to_the_console_page_asked_for(app, target):
    with app.test_request_context():
        assert console_module._safe_next(target) == target


@settings(deadline=None)  # a Flask app per example: over 200 ms on a loaded machine
@given(st.text())
def test_whatever_next_says_the_browser_stays_on_this_host_under_console(target):
    app = Flask("console-logic-property")
    app.register_blueprint(console_module.console)
    with app.test_request_context("http://console.example/console/login"):
        chosen = console_module._safe_next(target)
    resolved = urlsplit("http://console.example" + chosen if chosen.startswith("/") and not chosen.startswith("//") else chosen)
    assert resolved.netloc == "console.example" and resolved.path.startswith("/console")


@pytest.mark.parametrize(
    "origin, referer, allowed",
    [
        ("http://console.example", None, True),
        ("https://console.example", None, True),  # TLS ended by a proxy: the scheme differs
        (None, "http://console.example/console/duplicates", True),
        ("http://evil.example", None, False),
        ("http://console.example.evil.example", None, False),
        ("null", None, False),
        (None, None, False),
        (None, "http://evil.example/console", False),
    ],
)
def test_a_post_must_come_from_this_host(app, origin, referer, allowed):
    headers = {name: value for name, value in (("Origin", origin), ("Referer", referer)) if value}
    with app.test_request_context("http://console.example/console/dismiss", method="POST", headers=headers):
        assert console_module._same_origin() is allowed


def test_the_erase_bound_reads_as_a_person_says_it():
    assert console_module._duration(timedelta(days=7)) == "7 days"
    assert console_module._duration(timedelta(minutes=1)) == "1 minute"
    assert console_module._duration(timedelta(hours=36)) == "36 hours"
    assert console_module._duration(timedelta(seconds=30)) == "30 seconds"


def test_side_by_side_rows_cover_every_field_and_mark_only_the_conflicts():
    a = {"id": "a", "display_name": "Ada", "via": {"email": "ada@x.org"}, "created_at": "t1"}
    b = {"id": "b", "display_name": "Ada L.", "title": "Countess", "via": {"email": "ada@x.org", "phone": "+1"}, "metadata": {"crm": {"id": 1}}, "created_at": "t2"}
    rows = console_module._rows([a, b], [{"field": "display_name", "values": ["Ada", "Ada L."]}])
    assert [(r["field"], r["values"], r["conflict"]) for r in rows] == [
        ("display_name", ["Ada", "Ada L."], True),
        ("title", [None, "Countess"], False),
        ("via.email", ["ada@x.org", "ada@x.org"], False),
        ("via.phone", [None, "+1"], False),
        ("metadata.crm", [None, '{"id": 1}'], False),
        ("created_at", ["t1", "t2"], False),
    ]
