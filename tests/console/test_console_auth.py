"""The console with the API's auth on: it asks for a token, keeps it where the page's scripts
cannot read it, and shows nothing the API would not show that token."""

from __future__ import annotations

import re
import time
import uuid

import jwt
import pytest
import requests
from consolekit import serve_console
from playwright.sync_api import expect

SYSTEM_TOKEN = "console-test-" + uuid.uuid4().hex
JWT_SECRET = "console-jwt-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def console(kafka, tmp_path_factory):
    yield from serve_console(kafka, "console-auth", str(tmp_path_factory.mktemp("state")), system_token=SYSTEM_TOKEN, jwt_secret=JWT_SECRET)


def test_the_console_asks_for_a_token_and_keeps_it_in_an_httponly_strict_cookie(console, page, shot):
    name = f"Hedy {uuid.uuid4().hex[:8]}"
    console.create(display_name=name)

    page.goto(console.url + "/console/duplicates")
    expect(page).to_have_url(re.compile(r"/console/login"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    token = page.get_by_label("API token")
    expect(token).to_be_focused()
    shot(page, "token-prompt")

    token.fill("not-the-token")
    token.press("Enter")
    expect(page.get_by_role("alert")).to_have_text(re.compile("refused"))
    expired = jwt.encode({"sub": "ada", "exp": int(time.time()) - 60}, JWT_SECRET, algorithm="HS256")
    page.get_by_label("API token").fill(expired)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("expired"))
    assert page.context.cookies() == []

    page.get_by_label("API token").fill(SYSTEM_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(console.url + "/console/duplicates")  # back where it was going
    (cookie,) = page.context.cookies()
    assert cookie["value"] == SYSTEM_TOKEN
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert SYSTEM_TOKEN not in page.evaluate("document.cookie")

    page.get_by_role("link", name="Contacts", exact=True).click()
    page.get_by_label("Search by name, e-mail or phone").press_sequentially(name.split()[1], delay=30)
    expect(page.get_by_role("link", name=name)).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    assert page.context.cookies() == []
    page.goto(console.url + "/console")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_jwt_works_and_an_expired_one_sends_the_person_back_to_the_prompt(console, page):
    name = f"Katherine {uuid.uuid4().hex[:8]}"
    contact = console.create(display_name=name)
    fresh = jwt.encode({"sub": "kj", "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")
    page.goto(console.url + "/console/login")
    page.get_by_label("API token").fill(fresh)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(console.url + "/console")
    page.goto(console.url + f"/console/contacts/{contact['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)

    # the token in the cookie expires (as a cookie set before its expiry would hold it)
    stale = jwt.encode({"sub": "kj", "exp": int(time.time()) - 1}, JWT_SECRET, algorithm="HS256")
    (cookie,) = page.context.cookies()
    page.context.add_cookies([{**cookie, "value": stale}])
    assert [c["value"] for c in page.context.cookies()] == [stale]
    page.reload()
    expect(page).to_have_url(re.compile(r"/console/login\?"))
    expect(page.get_by_role("alert")).to_have_text(re.compile("expired"))
    page.get_by_label("API token").fill(fresh)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(console.url + f"/console/contacts/{contact['id']}")


def test_without_a_token_the_console_writes_nothing(console):
    a = console.create(display_name="No Token A", via={"email": "no-token@example.org"})
    b = console.create(display_name="No Token B", via={"email": "no-token@example.org"})
    response = requests.post(
        console.url + "/console/merge", data={"destination": a["id"], "source": b["id"]}, headers={"Origin": console.url}, timeout=30, allow_redirects=False
    )
    assert response.status_code == 302 and "/console/login" in response.headers["Location"]
    console.api("/contacts.info", {"id": b["id"]}, 200)  # not merged
