"""The console in a real browser, against a real service on the real broker: what a person who keeps
contacts clean does there, with the API confirming each outcome."""

from __future__ import annotations

import re
import uuid

import pytest
import requests
from consolekit import serve_console
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def console(kafka, tmp_path_factory):
    yield from serve_console(kafka, "console", str(tmp_path_factory.mktemp("state")))


def group_of(page, *names):
    """The duplicates queue's section holding the contacts with these names."""
    section = page.locator("section.group")
    for name in names:
        section = section.filter(has=page.get_by_role("link", name=name, exact=True))
    return section


def test_search_as_you_type_finds_a_contact_and_the_keyboard_opens_it(console, page, shot):
    # The module's service is its own: each test's people are unique within it.
    conversation = str(uuid.uuid4())
    ada = console.create(
        display_name="Ada Lovelace",
        organization_name="Analytical Engines",
        via={"email": "ada.lovelace@example.org", "phone": "+44 20 7946 0123"},
        conversations={conversation: "facebook"},
    )
    console.create(display_name="Charles Babbage", via={"email": "charles@example.org"})

    page.goto(console.url + "/console")
    search = page.get_by_label("Search by name, e-mail or phone")
    expect(search).to_be_focused()
    search.press_sequentially("lovel", delay=30)  # no Enter: the list follows the typing
    expect(page.locator("#results .count")).to_have_text(re.compile(r"^1 found"))
    expect(page.get_by_role("link", name="Ada Lovelace")).to_be_visible()
    expect(page).to_have_url(re.compile(r"\?q=lovel$"))
    shot(page, "search")

    page.keyboard.press("Tab")  # the Search button
    page.keyboard.press("Tab")  # the first result
    expect(page.get_by_role("link", name="Ada Lovelace")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(console.url + f"/console/contacts/{ada['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ada Lovelace")
    conversations = page.locator("section", has=page.get_by_role("heading", name="Conversations"))
    expect(conversations.get_by_role("row", name=re.compile(conversation))).to_contain_text("facebook")
    expect(page.locator("section", has=page.get_by_role("heading", name="Identities"))).to_contain_text("+44 20 7946 0123")

    # a phone number's last digits find it too, and a search without JavaScript is a plain GET
    page.goto(console.url + "/console?q=7946+0123")
    expect(page.get_by_role("link", name="Ada Lovelace")).to_be_visible()


def test_the_duplicates_queue_merge_from_the_console_then_unmerge(console, page, shot):
    email = "grace@navy.example"
    source = console.create(display_name="Grace Hopper", title="Rear Admiral", via={"email": email}, conversations={str(uuid.uuid4()): "twilio.sms"})
    destination = console.create(display_name="G. Hopper", title="Dr", via={"email": email.upper(), "phone": "+1 202 555 0147"})

    page.goto(console.url + "/console/duplicates")
    group = group_of(page, "Grace Hopper", "G. Hopper")
    expect(group).to_have_count(1)
    expect(group.get_by_role("heading")).to_contain_text(email)  # the reason they were grouped
    title_row = group.get_by_role("row", name=re.compile(r"^title"))
    expect(title_row).to_have_class(re.compile("conflict"))
    expect(title_row).to_contain_text("differs")
    expect(group.get_by_role("row", name=re.compile(r"^via\.phone"))).not_to_have_class(re.compile("conflict"))
    group.scroll_into_view_if_needed()
    shot(page, "duplicates")

    group.get_by_label("Keep this one (G. Hopper)").check()
    group.get_by_role("button", name="Preview merge").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Merge preview")
    lost = page.get_by_role("row", name=re.compile(r"^title"))
    expect(lost).to_contain_text("Dr")
    expect(lost.locator("del")).to_have_text("Rear Admiral")
    # a dry run: nothing written yet
    console.api("/contacts.info", {"id": source["id"]}, 200)
    shot(page, "merge-preview")

    page.get_by_role("button", name="Merge", exact=True).click()
    expect(page).to_have_url(re.compile(f"/console/contacts/{destination['id']}"))
    expect(page.get_by_role("status").first).to_have_text("Merged.")
    merged = console.api("/contacts.info", {"id": destination["id"]}, 200)
    assert [entry["id"] for entry in merged["merge_history"]] == [source["id"]]
    assert len(merged["conversations"]) == 1
    assert console.api("/contacts.info", {"id": source["id"]}, 404)["merged_into"] == destination["id"]

    # opening the merged-away contact leads to the one it went into
    page.goto(console.url + f"/console/contacts/{source['id']}")
    expect(page).to_have_url(re.compile(f"/console/contacts/{destination['id']}"))
    expect(page.get_by_text(f"Contact {source['id']} was merged into this one.")).to_be_visible()

    entries = page.locator("section", has=page.get_by_role("heading", name="Merged into this contact"))
    expect(entries).to_contain_text("Grace Hopper")
    shot(page, "contact-merged")
    entries.get_by_role("button", name="Unmerge Grace Hopper").click()
    expect(page.get_by_role("status").first).to_have_text(re.compile("Unmerged"))
    # The status names the restored contact (the history timeline links it too).
    expect(page.get_by_role("paragraph").filter(has_text="The unmerged contact:").get_by_role("link", name=source["id"])).to_be_visible()
    assert console.api("/contacts.info", {"id": source["id"]}, 200)["title"] == "Rear Admiral"
    assert console.api("/contacts.info", {"id": destination["id"]}, 200)["merge_history"] == []


def test_not_duplicates_dismisses_the_group_for_good(console, page, shot):
    a = console.create(display_name="Lin Wei", via={"phone": "+49 30 901820 77"})
    console.create(display_name="Lina Weiss", via={"phone": "+4930 90182077", "email": "lina@weiss.example"})

    page.goto(console.url + "/console/duplicates")
    group = group_of(page, "Lin Wei", "Lina Weiss")
    group.get_by_role("button", name="Not duplicates").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("not duplicates"))
    expect(group_of(page, "Lin Wei", "Lina Weiss")).to_have_count(0)
    assert console.api("/contacts.duplicates", {"id": a["id"]}, 200)["data"] == []
    shot(page)


def test_edit_a_field_and_a_refused_value_is_named_at_its_field(console, page, shot):
    contact = console.create(display_name="Edith Clarke", title="Engineer", locale="en_GB")
    page.goto(console.url + f"/console/contacts/{contact['id']}")
    page.get_by_label("Title").fill("Principal engineer")
    page.get_by_label("Locale").fill("")  # emptied: removed
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.locator("dl.fields").first).to_contain_text("Principal engineer")
    after = console.api("/contacts.info", {"id": contact["id"]}, 200)
    assert after["title"] == "Principal engineer" and "locale" not in after

    page.get_by_label("Organization").fill("x" * 2049)  # over the API's 2048 characters
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("organization_name")
    expect(page.get_by_label("Organization")).to_have_attribute("aria-invalid", "true")
    assert "organization_name" not in console.api("/contacts.info", {"id": contact["id"]}, 200)
    shot(page)


def test_delete_asks_first_then_the_contact_is_gone(console, page, shot):
    contact = console.create(display_name="Dorothy Vaughan")
    page.goto(console.url + f"/console/contacts/{contact['id']}")
    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile("^Delete"))
    shot(page)
    console.api("/contacts.info", {"id": contact["id"]}, 200)  # asking deletes nothing
    page.get_by_role("button", name="Delete this contact").click()
    expect(page.get_by_role("status")).to_have_text("Contact deleted.")
    console.api("/contacts.info", {"id": contact["id"]}, 404)


def test_at_phone_width_every_control_has_a_label_and_only_tables_scroll_sideways(console, browser, shot):
    email = "mary.jackson@nasa.example"
    console.create(display_name="Mary Winston Jackson, Aerospace Engineer", via={"email": email}, metadata={"crm": {"id": "A-1"}})
    contact = console.create(display_name="Mary Jackson", via={"email": email}, address={"city": "Hampton"})
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        for path in ("/console", f"/console/contacts/{contact['id']}", "/console/duplicates"):
            page.goto(console.url + path)
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
                    .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim())
                    .map(c => c.outerHTML)"""
            )
            assert unlabelled == [], (path, unlabelled)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, overflow)
        shot(page, "duplicates-phone")
    finally:
        context.close()


def test_a_form_posted_from_another_site_is_refused(console):
    a = console.create(display_name="Csrf A", via={"email": "csrf@example.org"})
    b = console.create(display_name="Csrf B", via={"email": "csrf@example.org"})
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}, {}):
        response = requests.post(console.url + "/console/dismiss", data={"ids": [a["id"], b["id"]]}, headers=headers, timeout=30, allow_redirects=False)
        assert response.status_code == 403, headers
    groups = console.api("/contacts.duplicates", {"id": a["id"]}, 200)["data"]
    assert [sorted(c["id"] for c in g["contacts"]) for g in groups] == [sorted([a["id"], b["id"]])]
    # the same form from the console itself goes through
    response = requests.post(console.url + "/console/dismiss", data={"ids": [a["id"], b["id"]]}, headers={"Origin": console.url}, timeout=30, allow_redirects=False)
    assert response.status_code == 302
    assert console.api("/contacts.duplicates", {"id": a["id"]}, 200)["data"] == []


def test_console_pages_are_not_cached_framed_or_scripted_from_elsewhere(console):
    response = requests.get(console.url + "/console", timeout=30)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    # an unknown contact is a 404 page, not an error
    assert requests.get(console.url + f"/console/contacts/{uuid.uuid4()}", timeout=30).status_code == 404
    assert requests.get(console.url + "/console/contacts/not-an-id", timeout=30).status_code == 404
