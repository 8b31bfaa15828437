"""The platform's inbox against this service: its HTTP client's exact calls, replayed over HTTP.

The inbox (frontend/inbox in github.com/airyhq/airy) reaches contacts through its TypeScript HTTP
client, lib/typescript/httpclient/src/endpoints/. Each function below ports one endpoint file at
one commit (named in its docstring, with the file's blob) to the request body it produces, with
`undefined` values dropped as JSON.stringify drops them, and sends it the way client.ts's
doFetchFromBackend does (POST, JSON, Accept and X-Requested-With). The answers then go through
what the client and the inbox do with them: camelcase-keys (ported below, v7/v8 with camelcase
7.0.1 and map-obj 4), the reducer's merge of an edit into the contact it shows, and the paging of
actions/contacts/index.ts.

Every version the repository has had of the four contacts endpoints is here: on the main line
updateContactDetails.ts has had three request mappings (6681ce50c, 8fb95c084, f271b8e2b; f0466fca7
restored the first), getContactDetails.ts two (6681ce50c, 8fb95c084; e35db2232 changed only the
import), listContacts.ts and deleteContact.ts one request shape each. Branch-only versions that
never reached the main line are here too: updateContactDetails.ts at e24acc9f9 (no id: a 400) and
its predecessor updateContactInfoDef.ts at f3644326e (the request spread as it is), and the list
payload with `pageSize` of 617d7ec3f/bceaf3eac, the shape DESIGN.md quotes.

The conversation side: the client has no other `contacts.*` endpoint. The conversation view reads
its contact with getContactDetails({conversationId}) (components/ContactDetails), covered here; its
name edit also calls conversations.update-contact (updateConversationContactInfo.ts), an endpoint
of the conversations API that the platform's ingress routes to api-communication, not here.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid

import pytest

from api.app import create_app
from contacts_streams.service import Service
from support import test_config

INBOX_ORIGIN = "https://inbox.example.org"
IGNORED = "X-Contacts-Ignored-Fields"


class _Undefined:
    """JavaScript's undefined: JSON.stringify leaves such object members out."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()


# --- JavaScript, as far as these files use it ----------------------------------------------------


def js_get(value, *path):
    """`value?.a?.b`."""
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return UNDEFINED
        value = value[key]
    return value


def truthy(value) -> bool:
    return value not in (UNDEFINED, None, False, 0, "")


def spread_if(condition, members: dict) -> dict:
    """`...(condition && {members})`: spreading a falsy value adds nothing."""
    return members if truthy(condition) else {}


def _drop_undefined(value):
    if isinstance(value, dict):
        return {k: _drop_undefined(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [None if v is UNDEFINED else _drop_undefined(v) for v in value]
    return value


def json_stringify(value) -> str:
    """JSON.stringify: no spaces, non-ASCII as it is, undefined members left out."""
    return json.dumps(_drop_undefined(value), ensure_ascii=False, separators=(",", ":"))


# --- camelcase 7.0.1 and camelcase-keys 7/8 (with map-obj 4), ported --------------------------


def _is_identifier(char: str) -> bool:  # [\p{Alpha}\p{N}_]
    return char == "_" or char.isalpha() or unicodedata.category(char).startswith("N")


def _preserve_camel_case(text: str) -> str:
    last_lower = last_upper = last_last_upper = False
    index = 0
    while index < len(text):
        char = text[index]
        last_last_preserved = text[index - 3] == "-" if index > 2 else True
        if last_lower and unicodedata.category(char) == "Lu":
            text = text[:index] + "-" + text[index:]
            last_lower, last_last_upper, last_upper = False, last_upper, True
            index += 1
        elif last_upper and last_last_upper and unicodedata.category(char) == "Ll" and not last_last_preserved:
            text = text[: index - 1] + "-" + text[index - 1 :]
            last_last_upper, last_upper, last_lower = last_upper, False, True
        else:
            last_lower = char.lower() == char and char.upper() != char
            last_last_upper = last_upper
            last_upper = char.upper() == char and char.lower() != char
        index += 1
    return text


def _replace_separators(text: str) -> str:  # /[_.\- ]+([\p{Alpha}\p{N}_]|$)/gu -> upper(identifier)
    out, index = [], 0
    while index < len(text):
        if text[index] in "_.- ":
            end = index
            while end < len(text) and text[end] in "_.- ":
                end += 1
            if end == len(text):
                break
            if _is_identifier(text[end]):
                out.append(text[end].upper())
                index = end + 1
                continue
            out.append(text[index:end])
            index = end
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


def camel_case(text: str) -> str:
    """sindresorhus/camelcase 7.0.1 with {pascalCase: false, locale: false}."""
    text = text.strip()
    if not text:
        return ""
    if len(text) == 1:
        return "" if text in "_.- " else text.lower()
    if text != text.lower():
        text = _preserve_camel_case(text)
    text = text.lstrip("_.- ").lower()
    text = _replace_separators(text)
    # /\d+([\p{Alpha}\p{N}_]|$)/gu -> upper(match); JavaScript's \d is [0-9]
    return re.sub(r"[0-9]+(?:[^\W]|_|$)", lambda m: m.group(0).upper(), text)


def camelcase_keys(value, deep: bool = False, stop_paths: tuple[str, ...] = ()):
    """sindresorhus/camelcase-keys 7.0.2/8.0.2: keys camel-cased; with ``deep``, nested objects and
    arrays of objects too, except below ``stop_paths`` (dot paths of the original keys)."""

    def map_object(obj, parent_path):
        if isinstance(obj, list):  # map-obj 4 maps the objects of an array with the same mapper
            return [map_object(item, parent_path) if isinstance(item, (dict, list)) else item for item in obj]
        out = {}
        for key, item in obj.items():
            if deep and isinstance(item, (dict, list)):
                path = key if parent_path is None else f"{parent_path}.{key}"
                if path not in stop_paths:
                    item = map_object(item, path)
            out[camel_case(key)] = item
        return out

    if isinstance(value, list):
        return [map_object(item, None) if isinstance(item, (dict, list)) else item for item in value]
    return map_object(value, None) if isinstance(value, dict) else value


@pytest.mark.parametrize(
    "text, expected",
    [
        # From camelcase 7.0.1's test.js.
        ("foo", "foo"), ("IDs", "ids"), ("FooIDs", "fooIds"), ("foo-bar", "fooBar"), ("--foo--bar", "fooBar"),
        ("FOO-BAR", "fooBar"), ("foo-1", "foo1"), ("foo.bar", "fooBar"), ("  foo  bar  ", "fooBar"), ("-", ""),
        ("fooBar-baz", "fooBarBaz"), ("FBBazzy", "fbBazzy"), ("XMLHttpRequest", "xmlHttpRequest"),
        ("AjaxXMLHttpRequest", "ajaxXmlHttpRequest"), ("mGridCol6@md", "mGridCol6@md"), ("A::a", "a::a"),
        ("Hello1World11foo", "hello1World11Foo"), ("1hello", "1Hello"), ("h2w", "h2W"), ("foo bar?", "fooBar?"),
        ("розовый_пушистый-единороги", "розовыйПушистыйЕдинороги"), ("桑德_在这里。", "桑德在这里。"),
        # The keys this service serves.
        ("display_name", "displayName"), ("address_line1", "addressLine1"), ("merge_history", "mergeHistory"),
        ("pagination_data", "paginationData"), ("next_cursor", "nextCursor"), ("id", "id"),
    ],
)
def test_the_camelcase_port_agrees_with_camelcases_own_tests(text, expected):
    assert camel_case(text) == expected


# --- the client's endpoint files -----------------------------------------------------------------


def list_contacts_request(payload: dict) -> dict:
    """endpoints/listContacts.ts at 8fb95c084 (blob 9912a7312) and e35db2232 (45babfd17): no
    mapRequest, the payload is sent as it is."""
    return payload


def list_contacts_response(response: dict) -> dict:
    """listContacts.ts (8fb95c084, e35db2232) mapResponse: camelcaseKeys without `deep`."""
    return {"data": camelcase_keys(response["data"]), "paginationData": camelcase_keys(response["pagination_data"])}


def get_contact_details_request_6681ce50c(request: dict) -> dict:
    """endpoints/getContactDetails.ts at 6681ce50c (blob 4d502e20c): `{conversation_id: request.conversationId}`."""
    return {"conversation_id": js_get(request, "conversationId")}


def get_contact_details_request_8fb95c084(request: dict) -> dict:
    """endpoints/getContactDetails.ts at 8fb95c084 (blob fe70dc3ac; e35db2232, 98b40c195, changed
    only the import): `{...(request.id && {id}), ...(request.conversationId && {conversation_id})}`."""
    return {
        **spread_if(js_get(request, "id"), {"id": js_get(request, "id")}),
        **spread_if(js_get(request, "conversationId"), {"conversation_id": js_get(request, "conversationId")}),
    }


def get_contact_details_response(response: dict) -> dict:
    """getContactDetails.ts (every version): camelcaseKeys(response, {deep: true, stopPaths: ['conversations']})."""
    return camelcase_keys(response, deep=True, stop_paths=("conversations",))


def update_6681ce50c(request: dict) -> dict:
    """endpoints/updateContactDetails.ts at 6681ce50c (blob bf9b27121), again at f0466fca7; the
    same mapping as updateContactInfoDef.ts at 4c314596a, 0230f7474 and bceaf3eac (branch)::

        ({...request, display_name: request?.displayName, organization_name: request?.organizationName,
          address: {address_line1: request?.address?.addressLine1, city: request?.address?.city}})
    """
    body = dict(request)
    body["display_name"] = js_get(request, "displayName")
    body["organization_name"] = js_get(request, "organizationName")
    body["address"] = {"address_line1": js_get(request, "address", "addressLine1"), "city": js_get(request, "address", "city")}
    return body


def update_8fb95c084(request: dict) -> dict:
    """endpoints/updateContactDetails.ts at 8fb95c084 (blob 6f539cdac): `camelcaseKeys(request)`,
    not deep: the camelCase request goes out as it is."""
    return camelcase_keys(request)


def update_f271b8e2b(request: dict) -> dict:
    """endpoints/updateContactDetails.ts at f271b8e2b (blob db7cc0a12), the current one: id and
    title always (undefined dropped), the rest only when truthy."""
    address, via = js_get(request, "address"), js_get(request, "via")
    return {
        "id": js_get(request, "id"),
        "title": js_get(request, "title"),
        **spread_if(js_get(request, "displayName"), {"display_name": js_get(request, "displayName")}),
        **spread_if(js_get(request, "organizationName"), {"organization_name": js_get(request, "organizationName")}),
        **spread_if(
            truthy(address) and (truthy(js_get(address, "addressLine1")) or truthy(js_get(address, "city"))),
            {
                "address": {
                    **spread_if(js_get(address, "addressLine1"), {"address_line1": js_get(address, "addressLine1")}),
                    **spread_if(js_get(address, "city"), {"city": js_get(address, "city")}),
                }
            },
        ),
        **spread_if(
            via,
            {
                "via": {
                    **spread_if(js_get(via, "phone"), {"phone": js_get(via, "phone")}),
                    **spread_if(js_get(via, "email"), {"email": js_get(via, "email")}),
                }
            },
        ),
    }


def update_e24acc9f9(request: dict) -> dict:
    """endpoints/updateContactDetails.ts at e24acc9f9 (blob ade29bb09), a branch commit that never
    reached the main line: no id, and phone/email spread at the top level."""
    via = js_get(request, "via")
    return {
        "display_name": js_get(request, "displayName"),
        "organization_name": js_get(request, "organizationName"),
        "address": {"address_line1": js_get(request, "address", "addressLine1"), "city": js_get(request, "address", "city")},
        **spread_if(
            via,
            {
                **spread_if(js_get(via, "phone"), {"phone": js_get(via, "phone")}),
                **spread_if(js_get(via, "email"), {"email": js_get(via, "email")}),
            },
        ),
    }


def update_f3644326e(request: dict) -> dict:
    """endpoints/updateContactInfoDef.ts at f3644326e (blob b78d30ee4), the branch predecessor of
    updateContactDetails.ts: `({...request})`."""
    return dict(request)


def delete_contact_request(contact_id: str) -> dict:
    """endpoints/deleteContact.ts at 8fb95c084 (blob ba4a2034d): `id => ({id})`."""
    return {"id": contact_id}


# --- the service, and sending as client.ts does -------------------------------------------------


@pytest.fixture(scope="module")
def client(kafka, tmp_path_factory):
    unique = f"t{uuid.uuid4().hex[:12]}"
    config = test_config(kafka, unique, str(tmp_path_factory.mktemp("inbox") / "state"), allowed_origins=(INBOX_ORIGIN,))
    service = Service(config).start(wait=True, timeout=60)
    try:
        yield create_app(config, service).test_client()
    finally:
        service.close()


def send(client, endpoint: str, body: dict):
    """client.ts doFetchFromBackend: POST `${apiUrl}/${endpoint}` with JSON.stringify(body)."""
    return client.post(
        f"/{endpoint}",
        data=json_stringify(body).encode(),
        headers={
            "Accept": "application/json",
            "X-Requested-With": "XMLHttpRequest",
            "Content-Type": "application/json",
            "Origin": INBOX_ORIGIN,
        },
    )


def parse_body(response):
    """client.ts parseBody: the JSON of an ok answer (undefined when there is none), else a throw."""
    assert 200 <= response.status_code < 300, (response.status_code, response.data[:300])
    try:
        return json.loads(response.data)
    except ValueError:
        return UNDEFINED


CONVERSATION = "ea1cba21-2bd6-477c-9a40-59cd9bb96bef"
STORED = {
    "display_name": "Grace Brewster Murray",
    "title": "Commodore",
    "organization_name": "Navy",
    "via": {"email": "old@navy.mil", "phone": "+1 555 0000", "key": "value"},
    "address": {"address_line1": "Old Street 1", "city": "Washington", "country": "USA"},
    "metadata": {"salesforce_id": "ABC123", "facebook": {"page_id": "9876543210"}},
}


def new_contact(client, conversation: str | None = None) -> dict:
    fields = {**STORED, "conversations": {conversation or str(uuid.uuid4()): "facebook"}}
    response = client.post("/contacts.create", json=fields)
    assert response.status_code == 201, response.data[:300]
    return response.get_json()


def shown(contact) -> dict:
    """What the inbox shows of a contact: components/ContactDetails/util/fillContactInfo.ts (a
    falsy value shows the placeholder: None here) and the name of pages/Contacts."""
    values = {
        "displayName": js_get(contact, "displayName"),
        "email": js_get(contact, "via", "email"),
        "phone": js_get(contact, "via", "phone"),
        "title": js_get(contact, "title"),
        "addressLine1": js_get(contact, "address", "addressLine1"),
        "city": js_get(contact, "address", "city"),
        "organizationName": js_get(contact, "organizationName"),
    }
    return {key: value if truthy(value) else None for key, value in values.items()}


BEFORE = {
    "displayName": "Grace Brewster Murray",
    "email": "old@navy.mil",
    "phone": "+1 555 0000",
    "title": "Commodore",
    "addressLine1": "Old Street 1",
    "city": "Washington",
    "organizationName": "Navy",
}


# --- contacts.list -------------------------------------------------------------------------------


def test_the_inbox_pages_through_every_contact(client):
    """actions/contacts/index.ts (8fb95c084 on): listContacts({page_size: 54, cursor: nextCursor}),
    nextCursor starting as '' (reducers/data/contacts initialState), then the answer's
    paginationData.nextCursor, until it is null."""
    imported = client.post("/contacts.import", json=[{"display_name": f"Inbox {i:03d}", "conversations": {str(uuid.uuid4()): "facebook"}} for i in range(120)])
    assert imported.status_code == 201
    expected = {c["id"] for c in imported.get_json()["data"]}
    seen: list[dict] = []
    next_cursor = ""
    for _ in range(100):
        response = send(client, "contacts.list", list_contacts_request({"page_size": 54, "cursor": next_cursor}))
        assert IGNORED not in response.headers
        page = list_contacts_response(parse_body(response))
        seen += page["data"]
        assert set(page["paginationData"]) == {"previousCursor", "nextCursor", "total"}
        next_cursor = page["paginationData"]["nextCursor"]
        if next_cursor is None:
            break
    ids = [c["id"] for c in seen]
    assert len(ids) == len(set(ids)) == page["paginationData"]["total"]
    assert expected <= set(ids)
    item = next(c for c in seen if c["id"] in expected)
    # camelcase-keys without deep: the contact's own keys are camelCase, nested ones stay as served,
    # and the conversation ids the list item links to are intact.
    assert item["displayName"].startswith("Inbox ") and "createdAt" in item and "display_name" not in item
    (conversation_id,) = item["conversations"]
    assert uuid.UUID(conversation_id) and str(uuid.UUID(conversation_id)) == conversation_id


def test_the_list_payload_of_the_contacts_branch_pagesize_and_null_cursor(client):
    """payload/ListContactsRequestPayload.ts at 617d7ec3f and bceaf3eac (branch, before the main
    line's page_size): {cursor?: string | null, pageSize?: number | null}; DESIGN.md's
    {"cursor": null, "pageSize": N}."""
    for _ in range(3):
        new_contact(client)
    response = send(client, "contacts.list", {"cursor": None, "pageSize": 2})
    body = parse_body(response)
    assert len(body["data"]) == 2 and body["pagination_data"]["next_cursor"]
    assert IGNORED not in response.headers
    following = parse_body(send(client, "contacts.list", {"cursor": body["pagination_data"]["next_cursor"], "pageSize": 2}))
    assert not {c["id"] for c in following["data"]} & {c["id"] for c in body["data"]}


def test_the_inbox_may_read_the_list_across_origins(client):
    """client.ts fetches with mode 'cors' and credentials 'include': a listed origin is answered
    with itself and Allow-Credentials, and the headers it sends are allowed."""
    preflight = client.options(
        "/contacts.list",
        headers={"Origin": INBOX_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-requested-with"},
    )
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-requested-with"} <= allowed
    response = send(client, "contacts.list", {"page_size": 1, "cursor": ""})
    assert response.headers["Access-Control-Allow-Origin"] == INBOX_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


# --- contacts.info -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping, request_payload, key",
    [
        (get_contact_details_request_6681ce50c, {"conversationId": CONVERSATION}, "conversation_id"),
        (get_contact_details_request_8fb95c084, {"conversationId": CONVERSATION}, "conversation_id"),
        (get_contact_details_request_8fb95c084, {"id": "@id"}, "id"),
    ],
    ids=["6681ce50c by conversation", "8fb95c084 by conversation", "8fb95c084 by id"],
)
def test_the_inbox_reads_a_contact(client, mapping, request_payload, key):
    """components/ContactDetails: getContactDetails({conversationId}) in the conversation view,
    getContactDetails({id}) on the contacts page; the answer camel-cased deep, conversations kept."""
    contact = client.post("/contacts.info", json={"conversation_id": CONVERSATION})
    if contact.status_code == 404:
        contact = new_contact(client, CONVERSATION)
    else:
        contact = contact.get_json()
    request_payload = {k: contact["id"] if v == "@id" else v for k, v in request_payload.items()}
    body = mapping(request_payload)
    assert list(body) == [key]
    response = send(client, "contacts.info", body)
    assert IGNORED not in response.headers
    seen = get_contact_details_response(parse_body(response))
    assert seen["id"] == contact["id"]
    assert shown(seen) == BEFORE
    assert CONVERSATION in seen["conversations"]  # stopPaths keeps the ids the view links to
    assert seen["mergeHistory"] == [] and seen["createdAt"] == contact["created_at"]
    # Deep also camel-cases the keys inside metadata: the inbox's own doing, it does not show them.
    assert seen["metadata"] == {"salesforceId": "ABC123", "facebook": {"pageId": "9876543210"}}


def test_both_ids_in_one_info_call_is_a_400_naming_conversation_id(client):
    """getContactDetails.ts at 8fb95c084 sends both when given both; the inbox's components give
    one or the other (Airy's Java service used the id)."""
    contact = new_contact(client)
    body = get_contact_details_request_8fb95c084({"id": contact["id"], "conversationId": str(uuid.uuid4())})
    response = send(client, "contacts.info", body)
    assert response.status_code == 400 and response.get_json()["field"] == "conversation_id"


# --- contacts.update -----------------------------------------------------------------------------

# The payloads the inbox builds: the name edit of pages/Contacts/ContactInformation and
# pages/Inbox/Messenger/ConversationMetadata ({id, displayName}), and the details form of
# components/ContactDetails (util/getInfoDetailPayload.ts: id, via {email, phone}, title,
# address {addressLine1, city}, organizationName), filled in, or with fields cleared.
NAME = {"displayName": "Grace Hopper"}
DETAILS = {
    "via": {"email": "grace@navy.mil", "phone": "+1 555 0100"},
    "title": "Rear Admiral",
    "address": {"addressLine1": "1 Navy Way", "city": "Arlington"},
    "organizationName": "US Navy",
}
CLEARED = {
    "via": {"email": "", "phone": "+1 555 0199"},
    "title": "",
    "address": {"addressLine1": "", "city": "Boston"},
    "organizationName": "",
}
DETAILS_SHOWN = {
    "email": "grace@navy.mil",
    "phone": "+1 555 0100",
    "title": "Rear Admiral",
    "addressLine1": "1 Navy Way",
    "city": "Arlington",
    "organizationName": "US Navy",
}

# (mapping, input, the exact body (ID for the id), X-Contacts-Ignored-Fields, what the inbox shows
# once it reads the contact again, and where that differs from what it showed right after saving:
# the fields that version of the client loses, sent in a form the service does not read (named
# in the header) or not sent at all)
UPDATE_CASES = {
    "6681ce50c name": (
        update_6681ce50c, NAME,
        '{"id":ID,"displayName":"Grace Hopper","display_name":"Grace Hopper","address":{}}',
        "displayName",
        {**BEFORE, "displayName": "Grace Hopper"},
        set(),
    ),
    "6681ce50c details": (
        update_6681ce50c, DETAILS,
        '{"id":ID,"via":{"email":"grace@navy.mil","phone":"+1 555 0100"},"title":"Rear Admiral",'
        '"address":{"address_line1":"1 Navy Way","city":"Arlington"},"organizationName":"US Navy","organization_name":"US Navy"}',
        "organizationName",
        {**BEFORE, **DETAILS_SHOWN},
        set(),
    ),
    "6681ce50c cleared": (
        update_6681ce50c, CLEARED,
        '{"id":ID,"via":{"email":"","phone":"+1 555 0199"},"title":"","address":{"address_line1":"","city":"Boston"},'
        '"organizationName":"","organization_name":""}',
        "organizationName",
        {**BEFORE, "email": None, "phone": "+1 555 0199", "title": None, "addressLine1": None, "city": "Boston", "organizationName": None},
        set(),
    ),
    # The camelCase request goes out as it is: the service ignores (and names) what it does not
    # know, as Airy's Java service did, so this version's name edits never landed anywhere.
    "8fb95c084 name": (update_8fb95c084, NAME, '{"id":ID,"displayName":"Grace Hopper"}', "displayName", BEFORE, {"displayName"}),
    "8fb95c084 details": (
        update_8fb95c084, DETAILS,
        '{"id":ID,"via":{"email":"grace@navy.mil","phone":"+1 555 0100"},"title":"Rear Admiral",'
        '"address":{"addressLine1":"1 Navy Way","city":"Arlington"},"organizationName":"US Navy"}',
        "organizationName,address.addressLine1",
        {**BEFORE, **DETAILS_SHOWN, "addressLine1": "Old Street 1", "organizationName": "Navy"},
        {"addressLine1", "organizationName"},
    ),
    "8fb95c084 cleared": (
        update_8fb95c084, CLEARED,
        '{"id":ID,"via":{"email":"","phone":"+1 555 0199"},"title":"","address":{"addressLine1":"","city":"Boston"},"organizationName":""}',
        "organizationName,address.addressLine1",
        {**BEFORE, "email": None, "phone": "+1 555 0199", "title": None, "city": "Boston"},
        {"addressLine1", "organizationName"},
    ),
    "f271b8e2b name": (update_f271b8e2b, NAME, '{"id":ID,"display_name":"Grace Hopper"}', None, {**BEFORE, "displayName": "Grace Hopper"}, set()),
    "f271b8e2b details": (
        update_f271b8e2b, DETAILS,
        '{"id":ID,"title":"Rear Admiral","organization_name":"US Navy","address":{"address_line1":"1 Navy Way","city":"Arlington"},'
        '"via":{"phone":"+1 555 0100","email":"grace@navy.mil"}}',
        None,
        {**BEFORE, **DETAILS_SHOWN},
        set(),
    ),
    # Only title goes out empty (removing it); the other cleared fields are not sent at all.
    "f271b8e2b cleared": (
        update_f271b8e2b, CLEARED,
        '{"id":ID,"title":"","address":{"city":"Boston"},"via":{"phone":"+1 555 0199"}}',
        None,
        {**BEFORE, "phone": "+1 555 0199", "title": None, "city": "Boston"},
        {"email", "addressLine1", "organizationName"},
    ),
    "f3644326e (branch) details": (
        update_f3644326e, DETAILS,
        '{"id":ID,"via":{"email":"grace@navy.mil","phone":"+1 555 0100"},"title":"Rear Admiral",'
        '"address":{"addressLine1":"1 Navy Way","city":"Arlington"},"organizationName":"US Navy"}',
        "organizationName,address.addressLine1",
        {**BEFORE, **DETAILS_SHOWN, "addressLine1": "Old Street 1", "organizationName": "Navy"},
        {"addressLine1", "organizationName"},
    ),
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_the_inbox_edits_a_contact(client, case):
    mapping, payload, expected_body, ignored, expected_shown, lost = UPDATE_CASES[case]
    contact = new_contact(client)
    request_payload = {"id": contact["id"], **payload}
    body = mapping(request_payload)
    assert json_stringify(body) == expected_body.replace("ID", json.dumps(contact["id"]))

    response = send(client, "contacts.update", body)
    assert response.status_code == 202, response.data[:300]
    assert parse_body(response) is UNDEFINED  # an empty 202: parseBody's response.json() fails, caught
    assert response.headers.get(IGNORED) == ignored
    assert response.headers["Access-Control-Allow-Origin"] == INBOX_ORIGIN

    # The reducer shows the request merged into the contact at once (reducers/data/contacts:
    # {...items[id], ...payload}); reading it again shows what the service kept.
    local = {**get_contact_details_response(contact), **request_payload}
    served = get_contact_details_response(parse_body(send(client, "contacts.info", get_contact_details_request_8fb95c084({"id": contact["id"]}))))
    assert shown(served) == expected_shown
    assert {field for field, value in shown(local).items() if shown(served)[field] != value} == lost
    assert served["via"]["key"] == "value" and served["address"]["country"] == "USA"  # maps update key by key
    assert served["createdAt"] == contact["created_at"]


def test_the_branch_update_without_an_id_is_a_400_naming_id(client):
    """updateContactDetails.ts at e24acc9f9 (branch, never on the main line) sends no id."""
    body = update_e24acc9f9({"id": new_contact(client)["id"], **DETAILS})
    assert "id" not in body
    response = send(client, "contacts.update", body)
    assert response.status_code == 400 and response.get_json()["field"] == "id"


def test_a_contact_read_by_the_inbox_and_sent_back_raw_is_accepted(client):
    """Not an inbox call, the DESIGN.md promise next to them: a contact as contacts.info serves it,
    sent back to contacts.update, is accepted (served fields ignored) and changes nothing."""
    contact = new_contact(client)
    served = parse_body(send(client, "contacts.info", {"id": contact["id"]}))
    response = send(client, "contacts.update", served)
    assert response.status_code == 202 and IGNORED not in response.headers
    assert parse_body(send(client, "contacts.info", {"id": contact["id"]})) == served


# --- contacts.delete -----------------------------------------------------------------------------


def test_the_inbox_deletes_a_contact(client):
    """actions/contacts deleteContact(id) -> deleteContact.ts (8fb95c084): {id}; the reducer drops it."""
    contact = new_contact(client)
    response = send(client, "contacts.delete", delete_contact_request(contact["id"]))
    assert response.status_code == 202 and parse_body(response) is UNDEFINED
    assert send(client, "contacts.info", {"id": contact["id"]}).status_code == 404
    cursor, ids = "", set()
    while cursor is not None:
        page = list_contacts_response(parse_body(send(client, "contacts.list", {"page_size": 54, "cursor": cursor})))
        ids |= {c["id"] for c in page["data"]}
        cursor = page["paginationData"]["nextCursor"]
    assert contact["id"] not in ids
