"""The fast read path (api/fastpath.py) answers exactly what the bare Flask app answers: for a
wide table of requests (and generated bodies) the app with the fast path and the app without it
give the same status, body and headers, on the real broker and store. The table also proves the
fast path answered the common requests itself (else the comparison would be Flask against Flask),
and that what it answers is counted in the request metrics."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import reads
from api.app import create_app
from api.reads import ContactJson
from contacts_streams import commands, model
from contacts_streams.config import Config
from contacts_streams.service import Service

JWT_SECRET = "a-jwt-secret-long-enough-for-hs256-keys"
INBOX = "https://inbox.example.org"
# Headers a client sees that either path could get wrong (the server adds Date and Server alike).
COMPARED = {
    "content-type",
    "content-length",
    "vary",
    "retry-after",
    "x-contacts-ignored-fields",
    "x-contacts-position",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "allow",
}


class Pair:
    """The same service behind the app with the fast path and the bare Flask app; remembers
    which requests the fast path handed on to Flask."""

    def __init__(self, config: Config, service: Service):
        self.fast_app = create_app(config, service)
        self.bare = create_app(config, service, fast_reads=False).test_client()
        self.fast = self.fast_app.test_client()
        self.handed_on = 0
        inner = self.fast_app.wsgi_app.wsgi_app

        def spy(environ, start_response):
            self.handed_on += 1
            return inner(environ, start_response)

        self.fast_app.wsgi_app.wsgi_app = spy

    def compare(
        self, method: str, path: str, data: bytes | None = None, headers: dict | None = None, content_type="application/json"
    ):
        """Both answers, asserted equal; returns (the answer, whether the fast path answered)."""
        before = self.handed_on
        kwargs = dict(data=data, headers=headers or {}, content_type=content_type)
        bare = self.bare.open(path, method=method, **kwargs)
        fast = self.fast.open(path, method=method, **kwargs)
        seen = (method, path, data, headers, content_type)
        assert fast.status_code == bare.status_code, (seen, fast.get_data(), bare.get_data())
        assert fast.get_data() == bare.get_data(), seen
        assert _headers(fast) == _headers(bare), seen
        return fast, self.handed_on == before


def _info_bodies(contact_id: str) -> list[bytes]:
    """Info bodies by id in the forms clients send, which the fast path reads without json.loads."""
    return [
        b'{"id":"' + contact_id.encode() + b'"}',
        b'{"id": "' + contact_id.upper().encode() + b'"}',
        b' \r\n{\t"id" :\n "' + contact_id.encode() + b'" }\n',
        b'{"id":"' + contact_id.encode() + b'"}\x0c',  # not JSON whitespace: Flask's 400
        b'{"id":"' + contact_id.encode() + b'","id":"' + contact_id.encode() + b'"}',
        b'{"id":"' + contact_id.encode() + b'" "x"}',
        b'{"\\u0069d":"' + contact_id.encode() + b'"}',  # "id" escaped
    ]


def _headers(response) -> list[tuple[str, str]]:
    return sorted((name.lower(), value) for name, value in response.headers.items() if name.lower() in COMPARED)


def _post(pair: Pair, path: str, body, headers=None, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return pair.compare("POST", path, data, headers, content_type)


@pytest.fixture(scope="module")
def world(kafka, tmp_path_factory):
    """One started service with a few contacts: named, unnamed, merged away, with conversations."""
    from support import test_config

    unique = f"t{uuid.uuid4().hex[:12]}"
    config = test_config(kafka, unique, str(tmp_path_factory.mktemp("fast") / "state"))
    service = Service(config).start(wait=True, timeout=60)
    client = create_app(config, service, fast_reads=False).test_client()

    def create(**fields):
        response = client.post("/contacts.create", json=fields)
        assert response.status_code == 201, response.get_data()
        return response.get_json()["id"], response.headers["X-Contacts-Position"]

    conversation = str(uuid.uuid4())
    ada, position = create(
        display_name="Ada Lovelace",
        organization_name="Analytical Engines",
        via={"email": "ada@example.org", "phone": "+44 20 7946 0958"},
        conversations={conversation: "facebook"},
        metadata={"tier": "gold", "score": 2.5},
    )
    others = [create(display_name=name)[0] for name in ("Grace Hopper", "Émilie du Châtelet", "李白", "ada king")]
    unnamed, _ = create(via={"email": "nobody@example.org"})
    source, _ = create(display_name="Ada L.", via={"email": "ada.l@example.org"})
    merged = client.post("/contacts.merge", json={"source_id": source, "destination_id": ada})
    assert merged.status_code == 200, merged.get_data()
    yield dict(
        config=config,
        service=service,
        ada=ada,
        others=others,
        unnamed=unnamed,
        merged_away=source,
        conversation=conversation,
        position=merged.headers["X-Contacts-Position"] or position,
    )
    service.close()


def _bodies(world) -> list[tuple[str, object]]:
    ada, missing = world["ada"], str(uuid.uuid4())
    return [
        ("/contacts.info", {"id": ada}),
        ("/contacts.info", {"id": ada.upper()}),
        ("/contacts.info", {"id": world["unnamed"]}),
        ("/contacts.info", {"conversation_id": world["conversation"]}),
        ("/contacts.info", {"id": ada, "displayName": "ignored", "nested": {"x": 1}}),
        ("/contacts.info", {"id": missing}),
        ("/contacts.info", {"conversation_id": missing}),
        ("/contacts.info", {"id": world["merged_away"]}),
        ("/contacts.info", {"id": 7}),
        ("/contacts.info", {"id": ada, "conversation_id": world["conversation"]}),
        ("/contacts.info", {}),
        ("/contacts.info", []),
        ("/contacts.info", None),
        ("/contacts.info", b"{"),
        ("/contacts.info", b""),
        ("/contacts.info", b"  "),
        ("/contacts.info", b"\xff\xfe"),
        ("/contacts.list", {}),
        ("/contacts.list", b""),
        ("/contacts.list", {"page_size": 2}),
        ("/contacts.list", {"cursor": None, "pageSize": 3}),
        ("/contacts.list", {"page_size": 0}),
        ("/contacts.list", {"page_size": "x"}),
        ("/contacts.list", {"cursor": "not-a-cursor"}),
        ("/contacts.list", {"cursor": 5}),
        ("/contacts.list", {"unknown": True, "page_size": 1}),
        ("/contacts.search", {"query": "ada"}),
        ("/contacts.search", {"query": "ADA lov"}),
        ("/contacts.search", {"query": "0958"}),
        ("/contacts.search", {"query": "ada@example.org"}),
        ("/contacts.search", {"query": "李"}),
        ("/contacts.search", {"query": "nobody-matches-this"}),
        ("/contacts.search", {"query": "a", "page_size": 1}),
        ("/contacts.search", {"query": ""}),
        ("/contacts.search", {"query": 3}),
        ("/contacts.search", {}),
        ("/contacts.search", {"query": "ada", "cursor": "bad"}),
        ("/contacts.lookup", {"via": {"email": " ADA@example.org "}}),
        ("/contacts.lookup", {"via": {"phone": "+442079460958"}}),
        ("/contacts.lookup", {"via": {"email": "nobody-at-all@example.org"}}),
        ("/contacts.lookup", {"via": {}}),
        ("/contacts.lookup", {"via": {"email": 1}}),
        ("/contacts.lookup", {}),
        ("/contacts.create", {}),  # not a read: always Flask's
        ("/contacts.nothing", {}),
    ]


def _follow_cursors(pair: Pair, path: str, body: dict, headers=None) -> int:
    """Page through with next and previous cursors, comparing every page; returns pages seen."""
    pages, answer = 0, _post(pair, path, body, headers)[0]
    while answer.status_code == 200 and pages < 20:
        pages += 1
        cursors = answer.get_json()["pagination_data"]
        if cursors["previous_cursor"]:
            _post(pair, path, {**body, "cursor": cursors["previous_cursor"]}, headers)
        if not cursors["next_cursor"]:
            break
        answer = _post(pair, path, {**body, "cursor": cursors["next_cursor"]}, headers)[0]
    return pages


def test_the_fast_path_answers_as_flask_does_on_an_open_api(world):
    pair = Pair(world["config"], world["service"])
    fast_answers = set()
    for path, body in _bodies(world):
        answer, fast = _post(pair, path, body)
        if fast:
            fast_answers.add((path, json.dumps(body) if not isinstance(body, bytes) else body.decode("latin-1")))
            assert answer.status_code == 200
    # The common reads are the fast path's own (else this test would compare Flask with Flask).
    for expected in [
        ("/contacts.info", {"id": world["ada"]}),
        ("/contacts.info", {"conversation_id": world["conversation"]}),
        ("/contacts.list", {}),
        ("/contacts.search", {"query": "ada"}),
        ("/contacts.lookup", {"via": {"email": " ADA@example.org "}}),
    ]:
        assert (expected[0], json.dumps(expected[1])) in fast_answers, expected
    # Errors are never its own.
    assert ("/contacts.info", json.dumps({"id": 7})) not in fast_answers
    for contact_id in (world["ada"], world["merged_away"], str(uuid.uuid4())):
        for body in _info_bodies(contact_id):
            answer, fast = _post(pair, "/contacts.info", body)
            assert fast == (answer.status_code == 200), body
    assert _follow_cursors(pair, "/contacts.list", {"page_size": 2}) >= 3
    assert _follow_cursors(pair, "/contacts.search", {"query": "a", "page_size": 1}) >= 2
    # Odd lengths are Flask's to judge ("²" is a digit to str.isdigit, not to int).
    for length in ("²", "-1", "1e3", " 5"):
        bare = pair.bare.post("/contacts.info", data=b"{}", headers={"Content-Length": length}, content_type="application/json")
        fast = pair.fast.post("/contacts.info", data=b"{}", headers={"Content-Length": length}, content_type="application/json")
        assert (fast.status_code, fast.get_data()) == (bare.status_code, bare.get_data()), length
    # Other methods, content types and preflights go to Flask untouched.
    assert pair.compare("GET", "/contacts.info")[0].status_code == 405
    assert pair.compare("OPTIONS", "/contacts.info")[0].status_code == 204
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8", None):
        _post(pair, "/contacts.info", {"id": world["ada"]}, content_type=content_type)


def test_the_fast_path_answers_as_flask_does_with_auth_and_cors(world):
    config = Config(
        **{**world["config"].__dict__, "system_token": "system-token", "jwt_secret": JWT_SECRET, "allowed_origins": (INBOX,)}
    )
    pair = Pair(config, world["service"])
    now = int(time.time())
    credentials = {
        "none": {},
        "system": {"Authorization": "Bearer system-token"},
        "wrong": {"Authorization": "Bearer wrong"},
        "basic": {"Authorization": "Basic system-token"},
        "jwt": {"Authorization": "Bearer " + jwt.encode({"sub": "user", "exp": now + 600}, JWT_SECRET, algorithm="HS256")},
        "expired": {"Authorization": "Bearer " + jwt.encode({"sub": "user", "exp": now - 60}, JWT_SECRET, algorithm="HS256")},
    }
    origins = {"no origin": {}, "inbox": {"Origin": INBOX}, "stranger": {"Origin": "https://evil.example.org"}}
    for path, body in _bodies(world):
        for name, auth in credentials.items():
            for origin in origins.values():
                answer, fast = _post(pair, path, body, {**auth, **origin})
                if name not in ("system", "jwt"):
                    assert answer.status_code == 403 and not fast
    answer, fast = _post(pair, "/contacts.info", {"id": world["ada"]}, credentials["system"])
    assert fast and answer.headers["Vary"] == "Origin"
    # An allowed origin's reads are the fast path's once Flask answered one; a stranger's never.
    for path, body in [("/contacts.info", {"id": world["ada"]}), ("/contacts.list", {}), ("/contacts.search", {"query": "ada"})]:
        answer, fast = _post(pair, path, body, {**credentials["jwt"], "Origin": INBOX})
        assert fast and answer.headers["Access-Control-Allow-Origin"] == INBOX, path
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        answer, fast = _post(pair, path, body, {**credentials["jwt"], "Origin": "https://evil.example.org"})
        assert not fast and "Access-Control-Allow-Origin" not in answer.headers
    _follow_cursors(pair, "/contacts.list", {"page_size": 2}, credentials["jwt"])
    wildcard = Pair(Config(**{**world["config"].__dict__, "allowed_origins": ("*",)}), world["service"])
    for _ in range(2):
        for origin in origins.values():
            _post(wildcard, "/contacts.list", {}, origin)
            answer, fast = _post(wildcard, "/contacts.info", {"id": world["ada"]}, origin)
    assert fast and answer.headers["Access-Control-Allow-Origin"] == "*"


def test_min_position_waits_alike(world):
    config = Config(**{**world["config"].__dict__, "write_timeout_ms": 300})
    pair = Pair(config, world["service"])
    applied = world["position"]
    future = commands.encode_position({0: 10**12})
    for token in (applied, future, "garbage", commands.encode_position({})):
        for path, body in [
            ("/contacts.info", {"id": world["ada"]}),
            ("/contacts.list", {}),
            ("/contacts.search", {"query": "ada"}),
            ("/contacts.lookup", {"via": {"email": "ada@example.org"}}),
            ("/contacts.duplicates", {}),  # Flask's alone (fast is False)
        ]:
            answer, fast = _post(pair, path, body, {"X-Contacts-Min-Position": token})
            flask_only = path == "/contacts.duplicates"
            if token == future:  # every read of the store waits for a position it has not applied
                assert answer.status_code == 503 and not fast, path
            elif token in (applied, commands.encode_position({})):
                assert answer.status_code == 200 and fast != flask_only, path
            else:
                assert answer.status_code == 400 and answer.json["field"] == "X-Contacts-Min-Position", (path, token)


def test_a_timed_out_position_is_waited_for_once(world):
    config = Config(**{**world["config"].__dict__, "write_timeout_ms": 1500})
    pair = Pair(config, world["service"])
    future = {"X-Contacts-Min-Position": commands.encode_position({0: 10**12})}
    started = time.monotonic()
    answer = pair.fast.post("/contacts.info", json={"id": world["ada"]}, headers=future)
    took = time.monotonic() - started
    assert answer.status_code == 503 and pair.handed_on == 1
    assert 1.4 < took < 2 * 1.5, took  # a second wait would take at least 3 s


def test_not_ready_is_flasks_503(make_config):
    service = Service(make_config())  # made, not started: its store has not caught up
    try:
        pair = Pair(service.config, service)
        for path, body in [
            ("/contacts.info", {"id": str(uuid.uuid4())}),
            ("/contacts.list", {}),
            ("/contacts.search", {"query": "x"}),
        ]:
            answer, fast = _post(pair, path, body)
            assert answer.status_code == 503 and not fast and answer.headers["Retry-After"]
    finally:
        service.close()


_KEYS = st.sampled_from(["id", "conversation_id", "cursor", "page_size", "pageSize", "query", "via", "x"])
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.text(max_size=12),
    st.sampled_from(["ada", "0958", "ada@example.org", str(uuid.uuid4())]),
    st.dictionaries(st.sampled_from(["email", "phone", "x"]), st.text(max_size=8), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/contacts.info", "/contacts.list", "/contacts.search", "/contacts.lookup"]),
    body=st.dictionaries(_KEYS, _VALUES, max_size=3),
    use_known_id=st.booleans(),
)
def test_generated_bodies_answer_alike(world, path, body, use_known_id):
    if use_known_id and "id" in body:
        body["id"] = world["ada"]
    pair = _generated_pair(world)
    _post(pair, path, body)


_JSON_SPACE = st.text(" \t\n\r", max_size=2)
_ID_TEXT = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text("0123456789abcdefABCDEF-xg ", min_size=30, max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(_JSON_SPACE, min_size=6, max_size=6),
    key=st.sampled_from(['"id"', '"ID"', '"conversation_id"', '"\\u0069d"', "id"]),
    value=_ID_TEXT,
    tail=st.sampled_from(["", ',"x":1', '"', "\x0c", "\u00a0"]),
)
def test_the_info_id_shortcut_reads_what_validate_info_reads(parts, key, value, tail):
    """reads.info_id, which spares the common info body json.loads and validation, gives an id
    only where they give ("id", that id) with no field ignored, and for every {"id": "<uuid>"}."""
    a, b, c, d, e, f = parts
    body = f'{a}{{{b}{key}{c}:{d}"{value}"{e}}}{f}{tail}'.encode()
    shortcut = reads.info_id(body)
    try:
        ignored: list[str] = []
        validated = model.validate_info(json.loads(body), ignored)
    except (ValueError, model.ValidationError):
        validated = None
    if shortcut is not None:
        assert validated == ("id", shortcut) and ignored == []
    elif validated is not None and validated[0] == "id" and ignored == [] and key == '"id"':
        raise AssertionError(f"the shortcut missed a plain id body: {body!r}")


_PAIRS: dict[int, Pair] = {}


def _generated_pair(world) -> Pair:
    key = id(world["service"])
    if key not in _PAIRS:
        _PAIRS[key] = Pair(world["config"], world["service"])
    return _PAIRS[key]


def _sample(service, name: str, **labels) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def test_fast_answers_are_counted_in_the_request_metrics(world):
    service = world["service"]
    pair = Pair(world["config"], service)
    labels = dict(endpoint="/contacts.info", method="POST", status="200")
    count = _sample(service, "contacts_http_requests_total", **labels)
    latencies = _sample(service, "contacts_http_request_duration_seconds_count", endpoint="/contacts.info")
    for _ in range(5):
        assert pair.fast.post("/contacts.info", json={"id": world["ada"]}).status_code == 200
    assert pair.handed_on == 0
    assert _sample(service, "contacts_http_requests_total", **labels) == count + 5
    assert _sample(service, "contacts_http_request_duration_seconds_count", endpoint="/contacts.info") == latencies + 5
    # And the metrics page, served by Flask, shows them.
    assert 'endpoint="/contacts.info",method="POST",status="200"' in pair.fast.get("/metrics").get_data(as_text=True)


def test_an_updated_contact_is_never_served_from_an_old_cache_entry(world):
    client = create_app(world["config"], world["service"]).test_client()
    ada = world["ada"]
    before = client.post("/contacts.info", json={"id": ada}).get_json()
    new_title = f"title {uuid.uuid4().hex[:6]}"
    assert client.post("/contacts.update", json={"id": ada, "title": new_title}).status_code == 202
    after = client.post("/contacts.info", json={"id": ada}).get_json()
    assert after["title"] == new_title and before.get("title") != new_title


def test_a_lookup_answers_its_contacts_in_name_order_as_encoding_them_whole_would(world):
    """The lookup builds its body from the page cache's JSON of each contact: the bytes must be
    those of encoding {"data": [the contacts by name]} whole, floats and non-ASCII included,
    cached or not, and after an update the new contact, never the cached old one."""
    config, service = world["config"], world["service"]
    client = create_app(config, service).test_client()
    phone = f"+49 30 {uuid.uuid4().int % 10**7:07d}"
    ids = []
    for name, metadata in (("Zoë Ångström", {"ratio": 0.1, "n": 3}), ("adam", {"big": 1e300}), (None, {"neg": -2.5e-7})):
        fields = {"via": {"phone": phone}, "metadata": metadata, **({"display_name": name} if name else {})}
        response = client.post("/contacts.create", json=fields)
        assert response.status_code == 201, response.get_data()
        ids.append(response.get_json()["id"])

    def expected() -> bytes:
        contacts = sorted((service.store.get(contact_id) for contact_id in ids), key=model.sort_key)
        return reads.contact_json({"data": contacts})

    for app in (client, create_app(config, service, fast_reads=False).test_client()):
        for _ in range(2):  # the second from the cache
            answer = app.post("/contacts.lookup", json={"via": {"phone": phone}})
            assert answer.status_code == 200 and answer.get_data() == expected()
    assert [c["id"] for c in json.loads(expected())["data"]][-1] == ids[2]  # the unnamed last
    assert client.post("/contacts.update", json={"id": ids[1], "display_name": "Ådam"}).status_code == 202
    answer = client.post("/contacts.lookup", json={"via": {"phone": phone}})
    assert answer.get_data() == expected() and b"\\u00c5dam" not in answer.get_data()
    assert "Ådam" in answer.get_data(as_text=True)


# --- the cache, pure logic ------------------------------------------------------------------


def test_the_contact_json_cache_stays_within_its_budget_and_answers_right():
    decoded = []

    def decode(raw: bytes) -> dict:
        decoded.append(raw)
        return {"id": raw.decode(), "display_name": raw.decode() * 3}

    cache = ContactJson(decode, max_bytes=4000)
    for i in range(200):
        raw = f"contact-{i:04d}".encode()
        assert json.loads(cache.json(raw)) == {"id": raw.decode(), "display_name": raw.decode() * 3, "merge_history": []}
        assert cache.size_bytes <= 4000
    assert 0 < len(cache) < 200
    hits_before = len(decoded)
    cache.json(b"contact-0199")  # the newest entry is still there
    assert len(decoded) == hits_before
    cache.json(b"contact-0000")  # the oldest was evicted
    assert len(decoded) == hits_before + 1


def test_a_huge_contact_is_not_cached():
    cache = ContactJson(lambda raw: {"id": "x", "notes": "n" * len(raw)})
    cache.json(b"x" * 100_000)
    assert len(cache) == 0 and cache.size_bytes == 0
