"""The console's history timeline and erase, in a real browser. They need `/contacts.history` and
`/contacts.erase` (other branches): on a service without them the console says "history not
available" and cannot erase, so these tests fail there by design."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

import pytest
from consolekit import serve_console
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def console(kafka, tmp_path_factory):
    yield from serve_console(kafka, "console-history", str(tmp_path_factory.mktemp("state")))


def timeline(page):
    return page.locator("section", has=page.get_by_role("heading", name="History")).locator("ol.timeline > li")


def test_the_history_timeline_shows_who_changed_what_and_links_merges_to_the_other_contact(console, page, shot):
    word = uuid.uuid4().hex[:8]
    kept = console.create(display_name=f"Kept {word}", title="Engineer")
    console.api("/contacts.update", {"id": kept["id"], "title": "Principal engineer"}, 202)
    other = console.create(display_name=f"Other {word}", via={"email": f"{word}@history.example"})
    console.api("/contacts.merge", {"source_id": other["id"], "destination_id": kept["id"]}, 200)

    page.goto(console.url + f"/console/contacts/{kept['id']}")
    events = timeline(page)
    expect(events.first).to_have_attribute("data-operation", "merged")  # newest first
    expect(events.first.get_by_role("link", name=other["id"])).to_be_visible()
    expect(events.first).to_contain_text("by anonymous via http")
    # One event lists all its changed fields (updated_at too): the title's change, not its creation.
    updated = events.locator("ul.changes > li").filter(has=page.locator("code", has_text=re.compile(r"^title$"))).filter(has=page.locator("del"))
    expect(updated.locator("del")).to_have_text("Engineer")
    expect(updated.locator("ins")).to_have_text("Principal engineer")
    expect(events.last).to_have_attribute("data-operation", "created")
    shot(page, "history")

    page.get_by_role("button", name=f"Unmerge Other {word}").click()
    expect(timeline(page).first).to_have_attribute("data-operation", "unmerged")
    timeline(page).first.get_by_role("link", name=other["id"]).click()
    expect(page).to_have_url(re.compile(f"/console/contacts/{other['id']}"))
    restored = timeline(page).first
    expect(restored).to_have_attribute("data-operation", "restored")
    expect(restored.get_by_role("link", name=kept["id"])).to_be_visible()


def test_erase_says_what_will_be_gone_and_by_when_then_it_is_gone(console, page, shot):
    word = uuid.uuid4().hex[:8]
    email = f"{word}@erase.example"
    contact = console.create(display_name=f"Erase {word}", via={"email": email}, conversations={str(uuid.uuid4()): "facebook"})

    page.goto(console.url + f"/console/contacts/{contact['id']}")
    page.get_by_role("link", name="Erase…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Erase Erase {word}?")
    gone = page.locator("ul.gone")
    expect(gone).to_contain_text(email)
    expect(gone).to_contain_text("1 conversation")
    expect(page.locator("#erase-by")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
    shot(page, "erase-confirm")

    page.get_by_role("button", name="Erase for good").click()  # not confirmed: the browser holds the form
    expect(page.get_by_label("I understand that this erases the contact for good")).not_to_be_checked()
    console.api("/contacts.info", {"id": contact["id"]}, 200)
    page.get_by_label("I understand that this erases the contact for good").check()
    page.get_by_role("button", name="Erase for good").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Erased")
    complete_by = page.locator("#complete-by").inner_text()
    assert datetime.fromisoformat(complete_by.replace("Z", "+00:00")) > datetime.now(timezone.utc)
    shot(page, "erased")

    console.api("/contacts.info", {"id": contact["id"]}, 404)
    assert console.api("/contacts.lookup", {"via": {"email": email}}, 200)["data"] == []
    page.goto(console.url + f"/console?q={word}")
    expect(page.locator("#results .count")).to_have_text(re.compile(r"^0 found"))
