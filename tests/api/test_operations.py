"""What operators rely on: probes, metrics, auth, CORS and configuration."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from confluent_kafka import Producer

from api.app import create_app
from contacts_streams import model
from contacts_streams.config import Config, ConfigError
from contacts_streams.logs import JsonFormatter
from contacts_streams.serialization import ContactCodec


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


# --- probes ------------------------------------------------------------------------------------


def test_readiness_waits_for_catch_up_while_liveness_stays_up(make_config, start_service, kafka):
    config = make_config()
    from contacts_streams.topics import ensure_topics

    ensure_topics(config)
    codec, producer = ContactCodec(), Producer({"bootstrap.servers": kafka, "linger.ms": 50})
    for i in range(30_000):
        contact = model.new_contact({"display_name": f"Preloaded {i}"}, model.contact_id_for_conversation(str(i)), 1_700_000_000_000)
        producer.produce(config.contacts_topic, key=contact["id"].encode(), value=codec.encode_contact(contact), headers=[("operation", b"imported")])
        if i % 5000 == 0:
            producer.poll(0)
    producer.flush(30)

    service = start_service(config, wait=False)
    client = create_app(config, service).test_client()
    early = client.get("/actuator/health")
    assert early.status_code == 503
    assert early.get_json()["status"] == "DOWN" and early.get_json()["reason"]
    assert client.get("/actuator/health/readiness").status_code == 503
    assert client.get("/actuator/health/liveness").status_code == 200

    deadline = time.monotonic() + 60
    while client.get("/actuator/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/actuator/health").get_json()
        time.sleep(0.05)
    assert client.get("/actuator/health").get_json()["status"] == "UP"
    assert client.post("/contacts.list", json={}).get_json()["pagination_data"]["total"] == 30_000


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_are_served_and_move_with_requests(client):
    before_requests = metric(client, "contacts_http_requests_total", endpoint="/contacts.create", status="201")
    before_applied = metric(client, "contacts_materializer_records_applied_total")
    client.post("/contacts.create", json={"display_name": "Counted"})
    client.post("/contacts.import", json=[{"display_name": "a"}, {"display_name": "b"}])
    client.post("/contacts.create", json={})
    assert metric(client, "contacts_http_requests_total", endpoint="/contacts.create", status="201") == before_requests + 1
    assert metric(client, "contacts_http_requests_total", endpoint="/contacts.create", status="400") >= 1
    assert metric(client, "contacts_materializer_records_applied_total") == before_applied + 3
    assert metric(client, "contacts_store_contacts") == 3
    assert metric(client, "contacts_import_size_contacts_count") == 1
    assert metric(client, "contacts_http_request_duration_seconds_count", endpoint="/contacts.create") >= 2
    assert client.get("/actuator/prometheus").get_data() .startswith(b"# HELP")
    for name in ("contacts_consumer_lag_records", "contacts_auto_created_total", "contacts_produce_errors_total", "contacts_poison_records_total"):
        assert f"# HELP {name.removesuffix('_total')}" in client.get("/metrics").get_data(as_text=True)


# --- auth and CORS -----------------------------------------------------------------------------


JWT_SECRET = "a-jwt-secret-long-enough-for-hs256-keys"


@pytest.fixture
def guarded(service):
    config = Config(**{**service.config.__dict__, "system_token": "system-token", "jwt_secret": JWT_SECRET, "allowed_origins": ("https://inbox.example.org",)})
    return create_app(config, service).test_client()


def test_api_calls_need_a_system_token_or_a_valid_jwt(guarded):
    def call(headers):
        return guarded.post("/contacts.list", json={}, headers=headers)

    now = int(time.time())
    valid = jwt.encode({"sub": "user", "exp": now + 60}, JWT_SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": "user", "exp": now - 60}, JWT_SECRET, algorithm="HS256")
    forged = jwt.encode({"sub": "user", "exp": now + 60}, "another-secret-that-is-long-enough-too", algorithm="HS256")
    assert call({}).status_code == 403 and call({}).get_json()["message"]
    assert call({"Authorization": "Bearer wrong"}).status_code == 403
    assert call({"Authorization": "Basic system-token"}).status_code == 403
    assert call({"Authorization": f"Bearer {expired}"}).status_code == 403
    assert "expired" in call({"Authorization": f"Bearer {expired}"}).get_json()["message"]
    assert call({"Authorization": f"Bearer {forged}"}).status_code == 403
    assert call({"Authorization": "Bearer system-token"}).status_code == 200
    assert call({"Authorization": f"Bearer {valid}"}).status_code == 200
    # Health and metrics stay open for probes and scrapers.
    assert guarded.get("/actuator/health").status_code == 200
    assert guarded.get("/metrics").status_code == 200


def with_origins(service, *origins: str):
    config = Config(**{**service.config.__dict__, "allowed_origins": tuple(origins)})
    return create_app(config, service).test_client()


def listed_headers(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def test_cors_with_any_origin_answers_star_and_never_credentials(service):
    client = with_origins(service, "*")
    origin = {"Origin": "https://anywhere.example.org"}
    answer = client.post("/contacts.list", json={}, headers=origin)
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers
    preflight = client.options("/contacts.update", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in preflight.headers


def test_cors_with_a_list_reflects_a_listed_origin_with_credentials(service):
    client = with_origins(service, "https://inbox.example.org", "https://admin.example.org")
    for origin in ("https://inbox.example.org", "https://admin.example.org"):
        answer = client.post("/contacts.list", json={}, headers={"Origin": origin})
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert "origin" in listed_headers(answer.headers.get("Vary", ""))
    stranger = client.post("/contacts.list", json={}, headers={"Origin": "https://evil.example.org"})
    assert "Access-Control-Allow-Origin" not in stranger.headers
    assert "Access-Control-Allow-Credentials" not in stranger.headers
    # A listed origin next to "*" keeps its credentials; others get the anonymous "*".
    mixed = with_origins(service, "https://inbox.example.org", "*")
    assert mixed.post("/contacts.list", json={}, headers={"Origin": "https://inbox.example.org"}).headers["Access-Control-Allow-Credentials"] == "true"
    other = mixed.post("/contacts.list", json={}, headers={"Origin": "https://other.example.org"})
    assert other.headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in other.headers


def test_cors_exposes_the_api_headers_and_allows_what_the_inbox_sends(service):
    client = with_origins(service, "https://inbox.example.org")
    origin = {"Origin": "https://inbox.example.org"}
    # The platform inbox's client (lib/typescript/httpclient/src/client.ts) sends Content-Type and
    # X-Requested-With; the API's own request headers are Idempotency-Key, X-Contacts-Min-Position
    # and Prefer (an import's return=minimal).
    # A preflight is answered with the headers it asks for that the API takes (flask-cors).
    sent = "authorization,content-type,idempotency-key,prefer,x-contacts-min-position,x-requested-with"
    preflight = client.options(
        "/contacts.update",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": f"{sent},x-other"},
    )
    assert preflight.status_code == 204
    assert listed_headers(preflight.headers["Access-Control-Allow-Headers"]) == set(sent.split(","))
    assert preflight.headers["Access-Control-Max-Age"] == "3600"
    answer = client.post("/contacts.create", json={"display_name": "Ada", "displayName": "Ada"}, headers=origin)
    assert answer.headers["X-Contacts-Ignored-Fields"] == "displayName"
    exposed = listed_headers(answer.headers["Access-Control-Expose-Headers"])
    assert {"x-contacts-ignored-fields", "x-contacts-position", "preference-applied"} <= exposed


def test_without_allowed_origins_no_cors_headers(service):
    answer = with_origins(service).post("/contacts.list", json={}, headers={"Origin": "https://inbox.example.org"})
    assert not [h for h in answer.headers.keys() if h.lower().startswith("access-control-")]


def test_cors_matches_a_listed_origin_whole_and_varies_every_answer(service):
    # flask-cors would read "https://*.example.org" as a regex matched at the start, letting
    # "https://aexample.org" in; an entry here is one origin, compared whole.
    client = with_origins(service, "https://*.example.org", "https://inbox.example.org")
    for stranger in ("https://aexample.org", "https://*.example.org.evil.net", "https://inbox.example.org.evil.net"):
        answer = client.post("/contacts.list", json={}, headers={"Origin": stranger})
        assert "Access-Control-Allow-Origin" not in answer.headers, stranger
        # A stranger's answer differs from a listed origin's: caches must keep one per origin.
        assert "origin" in listed_headers(answer.headers.get("Vary", ""))
    assert not [h for h in client.post("/contacts.list", json={}).headers.keys() if h.lower().startswith("access-control-")]
    # Error answers carry the CORS headers too, so a browser script can read the message.
    refused = client.post("/contacts.info", json={"id": 7}, headers={"Origin": "https://inbox.example.org"})
    assert refused.status_code == 400
    assert refused.headers["Access-Control-Allow-Origin"] == "https://inbox.example.org"
    assert "x-contacts-position" in listed_headers(refused.headers["Access-Control-Expose-Headers"])


def test_cors_answers_preflights_for_allowed_origins_only(guarded):
    preflight = guarded.options(
        "/contacts.create",
        headers={"Origin": "https://inbox.example.org", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://inbox.example.org"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    answer = guarded.post("/contacts.list", json={}, headers={"Origin": "https://inbox.example.org", "Authorization": "Bearer system-token"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://inbox.example.org"
    stranger = guarded.options("/contacts.create", headers={"Origin": "https://evil.example.org", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


# --- configuration and logs --------------------------------------------------------------------


def test_the_commit_interval_help_says_what_the_code_does():
    # exactly_once.py: consumer.poll(interval) waits for the first record, the rest of the batch is
    # taken without waiting, and each batch is committed in its own transaction right away. The
    # interval is a poll wait, not a time a transaction stays open or a batch is gathered.
    from contacts_streams.config import SETTINGS

    text = SETTINGS["KAFKA_COMMIT_INTERVAL_MS"].help
    assert "poll" in text and "transaction open" not in text and "gather" not in text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"| `KAFKA_COMMIT_INTERVAL_MS` | 100 | {text} |" in readme


def test_configuration_errors_name_the_variable():
    assert Config.from_env({}).port == 8080
    assert Config.from_env({}).http_server == "granian" and Config.from_env({"HTTP_SERVER": "Gunicorn"}).http_server == "gunicorn"
    for env, name in [({"HTTP_SERVER": "uwsgi"}, "HTTP_SERVER"), ({"PORT": "eighty"}, "PORT"), ({"AUTO_CREATE_ENABLED": "maybe"}, "AUTO_CREATE_ENABLED"), ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"), ({"KAFKA_SCHEMA_REGISTRY_URL": "registry:8081"}, "KAFKA_SCHEMA_REGISTRY_URL"), ({"SCHEMA_REGISTRY_CHECK_MS": "soon"}, "SCHEMA_REGISTRY_CHECK_MS"), ({"CONTACTS_TOPIC": " "}, "CONTACTS_TOPIC")]:
        with pytest.raises(ConfigError, match=name):
            Config.from_env(env)
    config = Config.from_env({"systemToken": "t", "allowedOrigins": "https://a.org, https://b.org", "AUTO_CREATE_ENABLED": "false"})
    assert config.system_token == "t" and config.allowed_origins == ("https://a.org", "https://b.org") and not config.auto_create_enabled


def test_the_entry_point_lists_its_settings_and_refuses_bad_ones():
    helped = subprocess.run([sys.executable, "-m", "api", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for name in ("KAFKA_BROKERS", "systemToken", "jwtSecret", "allowedOrigins", "STATE_DIR", "AUTO_CREATE_ENABLED", "PORT"):
        assert name in helped.stdout
    refused = subprocess.run([sys.executable, "-m", "api"], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PORT": "x", "PYTHONPATH": ":".join(sys.path)})
    assert refused.returncode == 2 and "PORT" in refused.stderr


def test_json_logs_are_one_object_a_line():
    record = logging.LogRecord("contacts_streams", logging.WARNING, __file__, 1, "rebuilding %s", ("store",), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["message"] == "rebuilding store" and re.match(r"\d{4}-\d\d-\d\dT.*Z$", entry["time"])


def test_consumer_lag_is_reported_per_partition(client, service):
    client.post("/contacts.create", json={"display_name": "Lagless"})

    def lag_lines():
        return [l for l in client.get("/metrics").get_data(as_text=True).splitlines() if l.startswith("contacts_consumer_lag_records{")]

    # The gauges are sampled once a second; the writer's consumer of the commands topic reports too.
    deadline = time.monotonic() + 10
    while len(lag_lines()) < service.config.contacts_partitions or not all(l.endswith(" 0.0") for l in lag_lines()):
        assert time.monotonic() < deadline, lag_lines()
        time.sleep(0.1)
