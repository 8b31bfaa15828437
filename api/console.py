"""The console at /console: pages for the people who keep contacts clean (issue #14).

It renders on the server and is a client of the service's own HTTP API: every read and write is
a POST to a /contacts.* endpoint dispatched in-process to this same Flask app, through its guard,
readiness gate, validation and metrics, with the token from the console's HttpOnly cookie as
`Authorization`. So the console can do nothing the API can't, and the API's answers (400s, 404s,
503s) are what the pages show. In-process rather than over a socket: no second connection pool, no
URL of its own to configure, and the token never reaches the browser's scripts.

CSRF: the token cookie is SameSite=Strict, and every POST must carry an Origin (or, failing that,
a Referer) naming this host. The Origin check also covers an open API (no token, so no cookie for
SameSite to hold back), where a per-session CSRF token would have no session to belong to.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.test import Client, TestResponse

from api.wire import RETRY_AFTER_S
from contacts_streams import model

TOKEN_COOKIE = "contacts_console_token"
PAGE_SIZE = 20
GROUPS_PER_PAGE = 10
HISTORY_PAGE_SIZE = 25
# Scalar fields the edit form offers, in the order the contact page shows them.
EDITABLE = ("display_name", "title", "organization_name", "gender", "locale", "avatar_url")
EDITABLE_VIA = ("email", "phone")
# The answer a finished action leaves in the query string after its redirect: a fixed sentence
# each, so a crafted link cannot put words on the page.
NOTICES = {
    "merged": "Merged.",
    "unmerged": "Unmerged: the other contact is back.",
    "updated": "Saved.",
    "deleted": "Contact deleted.",
    "dismissed": "Marked as not duplicates: this group will not be offered again.",
    "logged_out": "Logged out.",
}
SECURITY_HEADERS = {
    # Pages hold personal data: no caching, no framing, no third-party anything.
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static/console",
    static_url_path="/static",
)


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def page_status(self) -> int:
        """The page's status for this answer: the API's own, but a 5xx is the API failing the
        console (a bad gateway), not the console failing."""
        return self.status if self.status < 500 else 502

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and self.body.get("message"):
            return str(self.body["message"])
        return f"the API answered {self.status}"


class LoginNeeded(Exception):
    """The API refused the console's token (none, expired, wrong): ask for one."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Unavailable(Exception):
    def __init__(self, answer: Answer):
        super().__init__(answer.message)
        self.answer = answer


def _auth_enabled() -> bool:
    return current_app.extensions["contacts_guard"].enabled


def _post(path: str, payload: Any, headers: dict[str, str]) -> TestResponse:
    """POST to this app in-process; a fresh app context keeps the API's `g` (caller, body,
    timers) apart from this page's."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    with app.app_context():
        return Client(app, use_cookies=False).post(path, json=payload, headers=headers)


def api(path: str, payload: Any, idempotency_key: str | None = None) -> Answer:
    """POST `payload` to the API endpoint `path` of this app, as the person at the console.

    A 403 means the token is not (or no longer) good; a 503 is passed up as the page's own 503."""
    headers = {}
    token = request.cookies.get(TOKEN_COOKIE)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = _post(path, payload, headers)
    try:
        body = json.loads(response.get_data()) if response.get_data() else None
    except ValueError:
        body = None
    answer = Answer(response.status_code, body)
    if answer.status == 403:
        raise LoginNeeded(answer.message)
    if answer.status == 503:
        raise Unavailable(answer)
    return answer


def has_endpoint(path: str) -> bool:
    """Whether this service serves the API endpoint (history and erase come with other issues)."""
    try:
        current_app.url_map.bind("localhost").match(path, method="POST")
        return True
    except (NotFound, MethodNotAllowed):
        return False


def _same_origin() -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    # Host only: behind a proxy that ends TLS the scheme the app sees differs from the browser's.
    return urlsplit(source).netloc.lower() == request.host.lower()


@console.before_request
def check_request():
    if request.method == "POST" and not _same_origin():
        return _page(
            "console/error.html",
            403,
            title="Refused",
            message="This form came from another site (its Origin is not this console's), so it was refused.",
        )
    return None


@console.after_request
def secure_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@console.errorhandler(LoginNeeded)
def login_needed(err: LoginNeeded):
    if not _auth_enabled():  # cannot happen with auth off; never loop on the prompt
        return _page("console/error.html", 403, title="Refused", message=err.reason)
    response = redirect(
        url_for(
            "console.login", next=request.full_path.rstrip("?") if request.method == "GET" else None, reason=_reason(err.reason)
        )
    )
    if request.cookies.get(TOKEN_COOKIE):
        response.delete_cookie(TOKEN_COOKIE, path=console.url_prefix)
    return response


@console.errorhandler(Unavailable)
def unavailable(err: Unavailable):
    response = _page("console/error.html", 503, title="Not available yet", message=err.answer.message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _reason(message: str) -> str:
    return "expired" if "expired" in message else ("missing" if "missing" in message else "invalid")


def _page(template: str, status: int = 200, **context) -> Response:
    context.setdefault("auth_enabled", _auth_enabled())
    context.setdefault("notice", NOTICES.get(request.args.get("done", "")))
    return Response(render_template(template, **context), status=status, mimetype="text/html")


def _failed(answer: Answer, title: str, message: str | None = None) -> Response:
    return _page("console/error.html", answer.page_status, title=title, message=message or answer.message)


def _not_found(message: str) -> Response:
    return _page("console/error.html", 404, title="Not found", message=message)


# --- sign in ---------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: only a console path of this site (no open redirect)."""
    if target and re.fullmatch(r"/console(?:[/?][^\\\s\x00-\x1f\x7f]*)?", target):
        return target
    return url_for("console.search")


LOGIN_REASONS = {
    "expired": "Your token has expired: enter a new one.",
    "invalid": "That token was refused by the API.",
    "missing": "The API needs a token.",
}


@console.get("/login")
def login():
    if not _auth_enabled():
        return redirect(url_for("console.search"))
    return _page("console/login.html", error=LOGIN_REASONS.get(request.args.get("reason", "")), next=request.args.get("next", ""))


@console.post("/login")
def login_submit():
    if not _auth_enabled():
        return redirect(url_for("console.search"))
    token = request.form.get("token", "").strip()
    target = _safe_next(request.form.get("next"))
    if not token:
        return _page("console/login.html", 400, error="Enter a token.", next=target)
    # The API decides whether the token is good: the same check every console call meets.
    answer = _post("/contacts.list", {"page_size": 1}, {"Authorization": f"Bearer {token}"})
    if answer.status_code == 403:
        return _page(
            "console/login.html",
            403,
            error=LOGIN_REASONS["expired" if b"expired" in answer.get_data() else "invalid"],
            next=target,
        )
    response = redirect(target)
    secure = request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(TOKEN_COOKIE, token, path=console.url_prefix, httponly=True, samesite="Strict", secure=secure)
    return response


@console.post("/logout")
def logout():
    response = redirect(url_for("console.login", done="logged_out") if _auth_enabled() else url_for("console.search"))
    response.delete_cookie(TOKEN_COOKIE, path=console.url_prefix)
    return response


# --- search ----------------------------------------------------------------------------------


def _results(query: str, cursor: str | None) -> tuple[dict, str | None]:
    """A page of contacts (search with a query, else the list by name) and an error, if any."""
    payload: dict = {"page_size": PAGE_SIZE}
    if cursor:
        payload["cursor"] = cursor
    answer = api("/contacts.search", {"query": query, **payload}) if query.strip() else api("/contacts.list", payload)
    if answer.status != 200:
        return {"data": [], "pagination_data": {}}, answer.message
    return answer.body, None


@console.get("/")
@console.get("")  # registered first: the one url_for names
def search():
    query = request.args.get("q", "")
    page, error = _results(query, request.args.get("cursor") or None)
    return _page("console/search.html", 400 if error else 200, query=query, page=page, error=error, title="Contacts")


@console.get("/results")
def results():
    """The result list alone, for the search box's as-you-type updates."""
    query = request.args.get("q", "")
    page, error = _results(query, request.args.get("cursor") or None)
    return _page("console/_results.html", 200, query=query, page=page, error=error)


# --- one contact -----------------------------------------------------------------------------


def _contact(contact_id: str) -> dict:
    """The contact, else the page shown instead: a merged-away id goes to its destination, an
    unknown one is a 404 page. Raised with `abort`, so a route needs no check of its own."""
    answer = api("/contacts.info", {"id": contact_id})
    if answer.status == 200:
        return answer.body
    if answer.status == 404 and isinstance(answer.body, dict) and answer.body.get("merged_into"):
        abort(redirect(url_for("console.contact", contact_id=answer.body["merged_into"], merged_from=contact_id)))
    if answer.status in (400, 404):
        abort(_not_found(f"No contact {contact_id}: {answer.message}"))
    abort(_page("console/error.html", answer.status, title="Error", message=answer.message))


def _history(contact_id: str, cursor: str | None) -> dict:
    """The contact's change events, or why there are none to show."""
    if not has_endpoint("/contacts.history"):
        return {"available": False, "events": [], "next_cursor": None}
    payload: dict = {"id": contact_id, "page_size": HISTORY_PAGE_SIZE}
    if cursor:
        payload["cursor"] = cursor
    answer = api("/contacts.history", payload)
    if answer.status == 404 or answer.status >= 500:
        return {"available": False, "events": [], "next_cursor": None}
    if answer.status != 200:
        return {"available": True, "error": answer.message, "events": [], "next_cursor": None}
    events = [_event_view(event) for event in answer.body.get("data", [])]
    return {"available": True, "events": events, "next_cursor": (answer.body.get("pagination_data") or {}).get("next_cursor")}


def _json_text(text: str | None) -> str | None:
    """An event's before/after (JSON text, or null for absent) as a person reads it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _event_view(event: dict) -> dict:
    changes = [
        {"path": change.get("path", ""), "before": _json_text(change.get("before")), "after": _json_text(change.get("after"))}
        for change in event.get("changes") or ()
        if change.get("path") != "merge_history"  # a whole snapshot; the merged/unmerged line says it
    ]
    return {**event, "changes": changes}


def _entries(contact: dict) -> list[dict]:
    """Its merge_history, newest first, each marked whether it can be unmerged from here (the
    API undoes only a merge into this contact, not one that came along with a later merge)."""
    out = []
    for entry in reversed(contact.get("merge_history") or ()):
        out.append({**entry, "undoable": entry.get("merged_into", contact["id"]) == contact["id"]})
    return out


@console.get("/contacts/<contact_id>")
def contact(contact_id: str):
    found = _contact(contact_id)
    return _contact_page(found, 200)


def _contact_page(found: dict, status: int, error: Answer | None = None, form: dict | None = None) -> Response:
    return _page(
        "console/contact.html",
        status,
        contact=found,
        title=found.get("display_name") or found["id"],
        entries=_entries(found),
        history=_history(found["id"], request.args.get("history_cursor") or None),
        editable=EDITABLE,
        editable_via=EDITABLE_VIA,
        error=error.message if error else None,
        error_field=(error.body or {}).get("field") if error and isinstance(error.body, dict) else None,
        form=form or {},
        merged_from=request.args.get("merged_from"),
        other=request.args.get("other"),
        key=str(uuid.uuid4()),
    )


@console.post("/contacts/<contact_id>/edit")
def edit(contact_id: str):
    found = _contact(contact_id)
    changes: dict = {}
    for name in EDITABLE:
        if name in request.form:
            value = request.form[name].strip()
            if value != (found.get(name) if isinstance(found.get(name), str) else ""):
                changes[name] = value  # "" removes the field, as the API reads it
    via = {}
    for key in EDITABLE_VIA:
        name = f"via.{key}"
        if name in request.form:
            value = request.form[name].strip()
            if value != (found.get("via") or {}).get(key, ""):
                via[key] = value
    if via:
        changes["via"] = via
    if not changes:
        return redirect(url_for("console.contact", contact_id=found["id"], done="updated"))
    answer = api("/contacts.update", {"id": found["id"], **changes})
    if answer.status == 202:
        return redirect(url_for("console.contact", contact_id=found["id"], done="updated"))
    return _contact_page(found, answer.page_status, error=answer, form=request.form.to_dict())


@console.post("/contacts/<contact_id>/unmerge")
def unmerge(contact_id: str):
    source_id = request.form.get("source_id", "")
    answer = api("/contacts.unmerge", {"destination_id": contact_id, "source_id": source_id}, request.form.get("key"))
    if answer.status == 200:
        return redirect(url_for("console.contact", contact_id=contact_id, done="unmerged", other=answer.body["restored"]["id"]))
    found = _contact(contact_id)
    return _contact_page(found, answer.page_status, error=answer)


@console.get("/contacts/<contact_id>/delete")
def delete_confirm(contact_id: str):
    found = _contact(contact_id)
    return _page(
        "console/delete.html", contact=found, title=f"Delete {found.get('display_name') or found['id']}", key=str(uuid.uuid4())
    )


@console.post("/contacts/<contact_id>/delete")
def delete(contact_id: str):
    answer = api("/contacts.delete", {"id": contact_id}, request.form.get("key"))
    if answer.status == 202:
        return redirect(url_for("console.search", done="deleted"))
    return _failed(answer, "Not deleted")


def _erase_page(found: dict, status: int, title: str, error: str | None = None) -> Response:
    """The erase form, saying by when the erase is complete everywhere."""
    within = timedelta(milliseconds=current_app.extensions["contacts_service"].config.erase_within_ms)
    return _page(
        "console/erase.html",
        status,
        contact=found,
        title=title,
        within=_duration(within),
        by=(datetime.now(UTC) + within).strftime("%Y-%m-%d %H:%M UTC"),
        available=has_endpoint("/contacts.erase"),
        error=error,
        key=str(uuid.uuid4()),
    )


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0 or seconds >= 2 * size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


@console.get("/contacts/<contact_id>/erase")
def erase_confirm(contact_id: str):
    found = _contact(contact_id)
    return _erase_page(found, 200, f"Erase {found.get('display_name') or found['id']}")


@console.post("/contacts/<contact_id>/erase")
def erase(contact_id: str):
    if request.form.get("confirm") != "yes":
        found = _contact(contact_id)
        return _erase_page(found, 400, "Erase", error="Tick the box to confirm: an erase cannot be undone.")
    if not has_endpoint("/contacts.erase"):
        return _page(
            "console/error.html", 404, title="Erase not available", message="This service has no /contacts.erase endpoint yet."
        )
    answer = api("/contacts.erase", {"id": contact_id}, request.form.get("key"))
    if answer.status in (200, 202):
        return redirect(
            url_for("console.erased", id=answer.body.get("erased", contact_id), complete_by=answer.body.get("complete_by", ""))
        )
    return _failed(answer, "Not erased")


@console.get("/erased")
def erased():
    return _page(
        "console/erased.html",
        title="Erased",
        erased_id=request.args.get("id", ""),
        complete_by=request.args.get("complete_by", ""),
    )


# --- duplicates and merging --------------------------------------------------------------------


def _rows(contacts: list[dict], conflicts: list[dict]) -> list[dict]:
    """The side-by-side table: one row per field any of them has, the contacts' values in order,
    and whether the values conflict (differ between contacts that have one)."""
    conflicting = {item["field"] for item in conflicts}
    paths: list[str] = []
    for name in model.SCALAR_FIELDS + ("via", "address", "metadata", "conversations"):
        for contact_ in contacts:
            value = contact_.get(name)
            if name in model.SCALAR_FIELDS:
                candidates = [name] if name in contact_ else []
            else:
                candidates = [f"{name}.{key}" for key in (value or {})]
            for path in candidates:
                if path not in paths:
                    paths.append(path)
    rows = []
    for path in paths + ["created_at"]:
        values = [_display(_value_at(c, path)) for c in contacts]
        rows.append({"field": path, "values": values, "conflict": path in conflicting})
    return rows


def _value_at(contact_: dict, path: str) -> Any:
    name, _, key = path.partition(".")
    if not key or name not in ("via", "address", "metadata", "conversations"):
        return contact_.get(path)
    return (contact_.get(name) or {}).get(key)


def _display(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@console.get("/duplicates")
def duplicates():
    payload: dict = {"page_size": GROUPS_PER_PAGE}
    if request.args.get("cursor"):
        payload["cursor"] = request.args["cursor"]
    answer = api("/contacts.duplicates", payload)
    if answer.status != 200:
        return _failed(answer, "Duplicates")
    groups = [
        {
            "number": number,
            "contacts": group["contacts"],
            "reasons": group.get("reasons", []),
            "rows": _rows(group["contacts"], group.get("conflicts", [])),
            "conflicts": group.get("conflicts", []),
        }
        for number, group in enumerate(answer.body.get("data", []), start=1)
    ]
    next_cursor = (answer.body.get("pagination_data") or {}).get("next_cursor")
    return _page("console/duplicates.html", title="Duplicates", groups=groups, next_cursor=next_cursor, key=str(uuid.uuid4()))


def _merge_request() -> tuple[str, list[str]]:
    source = request.form if request.method == "POST" else request.args
    destination = source.get("destination", "")
    ids = []
    for contact_id in source.getlist("ids") + source.getlist("source"):
        if contact_id and contact_id != destination and contact_id not in ids:
            ids.append(contact_id)
    return destination, ids


@console.get("/merge")
def merge_preview():
    destination, sources = _merge_request()
    if not destination or not sources:
        return _page(
            "console/error.html", 400, title="Merge", message="Choose the contact to keep and at least one other contact."
        )
    previews = []
    for source_id in sources:
        answer = api("/contacts.merge", {"source_id": source_id, "destination_id": destination, "dry_run": True})
        if answer.status != 200:
            return _failed(answer, "Merge preview")
        previews.append(
            {"source_id": source_id, "conflicts": answer.body.get("conflicts", []), "destination": answer.body["destination"]}
        )
    kept = api("/contacts.info", {"id": destination})
    names = {}
    for source_id in sources:
        info = api("/contacts.info", {"id": source_id})
        names[source_id] = (info.body or {}).get("display_name") if info.status == 200 else None
    return _page(
        "console/merge.html",
        title="Merge preview",
        destination=kept.body if kept.status == 200 else {"id": destination},
        sources=sources,
        names=names,
        previews=previews,
        result=previews[0]["destination"] if len(previews) == 1 else None,
        key=str(uuid.uuid4()),
    )


@console.post("/merge")
def merge():
    destination, sources = _merge_request()
    if not destination or not sources:
        return _page(
            "console/error.html", 400, title="Merge", message="Choose the contact to keep and at least one other contact."
        )
    key = request.form.get("key")
    merged: list[str] = []
    for index, source_id in enumerate(sources):
        # One key per source: resubmitting the form replays the first answers, merges nothing twice.
        answer = api(
            "/contacts.merge", {"source_id": source_id, "destination_id": destination}, f"{key}-{index}" if key else None
        )
        if answer.status != 200:
            done = f" {len(merged)} of {len(sources)} were merged before it." if merged else ""
            return _failed(answer, "Merge stopped", f"{answer.message}.{done}")
        merged.append(source_id)
    return redirect(url_for("console.contact", contact_id=destination, done="merged"))


@console.post("/dismiss")
def dismiss():
    ids = [contact_id for contact_id in request.form.getlist("ids") if contact_id]
    answer = api("/contacts.dismiss_duplicates", {"ids": ids}, request.form.get("key"))
    if answer.status == 202:
        return redirect(url_for("console.duplicates", done="dismissed"))
    return _failed(answer, "Not dismissed")
