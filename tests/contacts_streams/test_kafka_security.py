"""Secured Kafka, end to end: `python -m api` against one broker of this module's own that serves
SASL_SSL (PLAIN) and mTLS listeners with a throwaway CA (contacts_dev.certificates), configured
the way the platform's `kafka-config` does (AUTH_JAAS; KAFKA_KEY_TRUST_SECRET with a keytool-made
JKS truststore and a PKCS12 keystore). Bad credentials or certificates stop the process at start,
naming the cause and never a secret; an unreachable broker is waited for.

Also here: the error classification (which librdkafka errors are fatal at start), on the texts
librdkafka gives for each case.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from confluent_kafka import KafkaError

from contacts_dev.certificates import CertificateAuthority, jks_truststore, pkcs12_keystore, write
from contacts_dev.embedded_kafka import KraftBroker, Listener
from contacts_streams.kafka_security import fatal_cause
from faults.faultkit import Names, ServiceProcess, free_port, new_service, wait_for

USER, PASSWORD = "contacts", "Sasl-pw-7f3c2a91"
TRUST_SECRET = "Store-pw-51d0e6b8"
EXIT_WITHIN_S = 60.0
SECRETS = (PASSWORD, TRUST_SECRET)


def jaas(user: str, password: str) -> str:
    return f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{user}" password="{password}";'


@dataclass
class SecuredBroker:
    broker: KraftBroker
    folder: Path
    ca_pem: Path
    other_ca_pem: Path

    @property
    def sasl(self) -> str:
        return self.broker.bootstrap("SASL")

    @property
    def mtls(self) -> str:
        return self.broker.bootstrap("MTLS")


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> SecuredBroker:
    folder = tmp_path_factory.mktemp("secured-kafka")
    ca, other = CertificateAuthority("contacts-test-ca"), CertificateAuthority("some-other-ca")
    server = ca.issue("broker", hosts=("localhost", "127.0.0.1"))
    ca_pem = write(folder / "ca.pem", ca.cert_pem())
    tls = {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(write(folder / "broker.pem", server.key_pem() + server.cert_pem())),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_pem),
    }
    broker = KraftBroker(
        log_dir=folder,
        listeners=[
            Listener(
                "SASL",
                "SASL_SSL",
                {**tls, "sasl.enabled.mechanisms": "PLAIN", "plain.sasl.jaas.config": f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'},
            ),
            Listener("MTLS", "SSL", {**tls, "ssl.client.auth": "required"}),
        ],
    )
    try:
        broker.start()
        # What the platform mounts for certificate auth: client.truststore.jks and client.keystore.p12.
        client = ca.issue("contacts-client", hosts=(), client=True)
        certs = folder / "certs"
        jks_truststore(certs / "client.truststore.jks", [ca.cert_pem()], TRUST_SECRET)
        pkcs12_keystore(certs / "client.keystore.p12", client, TRUST_SECRET)
        jks_truststore(certs / "other.truststore.jks", [other.cert_pem()], TRUST_SECRET)
        pkcs12_keystore(certs / "stranger.keystore.p12", other.issue("stranger", hosts=(), client=True), TRUST_SECRET)
        yield SecuredBroker(broker, folder, ca_pem, write(folder / "other-ca.pem", other.cert_pem()))
    finally:
        broker.close()


@pytest.fixture
def spawn(tmp_path, request):
    """spawn(kafka, **env) -> a started `python -m api` (faultkit's ServiceProcess), killed at the end."""
    started: list[ServiceProcess] = []

    def make(kafka: str, **env) -> ServiceProcess:
        names = Names(kafka, f"t{uuid.uuid4().hex[:12]}")
        process = new_service(names, tmp_path / f"state-{len(started)}", tmp_path, instance_id=f"secure{len(started)}", **env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.running():
            process.kill()


def wait_exit(process: ServiceProcess, timeout: float = EXIT_WITHIN_S) -> tuple[int, float]:
    began = time.monotonic()
    try:
        code = process.proc.wait(timeout=timeout)
    except Exception:
        raise AssertionError(f"the service still runs after {timeout:.0f}s; log:\n{process.tail()}") from None
    return code, time.monotonic() - began


def output(process: ServiceProcess) -> str:
    return process.log_file.read_text(errors="replace")


def assert_no_secret(process: ServiceProcess) -> None:
    text = output(process)
    for secret in SECRETS:
        assert secret not in text, f"a secret reached the log {process.log_file}"
    metrics = requests.get(process.base + "/metrics", timeout=10).text if process.running() else ""
    for secret in SECRETS:
        assert secret not in metrics


def serves_writes(process: ServiceProcess) -> None:
    process.wait_ready()
    created = process.post("/contacts.create", {"display_name": "Ada Lovelace", "via": {"email": "ada@example.org"}})
    assert created.status_code == 201, created.text
    contact = created.json()
    info = process.info(contact["id"])
    assert info.status_code == 200 and info.json()["display_name"] == "Ada Lovelace"
    assert process.post("/contacts.update", {"id": contact["id"], "title": "Countess"}).status_code == 202
    assert process.info(contact["id"]).json()["title"] == "Countess"


# --- the service on a secured broker -------------------------------------------------------------


def test_sasl_ssl_with_auth_jaas_serves_and_keeps_the_password_out_of_every_log(secured, spawn):
    # librdkafka's debug lines too: its configuration dump and the SASL handshake are logged.
    service = spawn(
        secured.sasl,
        AUTH_JAAS=jaas(USER, PASSWORD),
        KAFKA_CONFIG_SSL_CA_LOCATION=str(secured.ca_pem),
        KAFKA_CONFIG_DEBUG="conf,security",
        kafka_config_log_level="7",
        LOG_LEVEL="DEBUG",
    )
    serves_writes(service)
    text = output(service)
    assert "SASL_SSL, SASL PLAIN as 'contacts'" in text  # the start-up line says how it connects
    assert "sasl.password = [redacted]" in text  # the debug dump ran and hid it
    assert_no_secret(service)
    assert service.stop() == 0


def test_certificate_auth_with_the_platforms_jks_and_pkcs12_wins_over_auth_jaas(secured, spawn):
    certs = secured.folder / "certs"
    service = spawn(
        secured.mtls,
        KAFKA_KEY_TRUST_SECRET=TRUST_SECRET,
        KAFKA_TRUSTSTORE_LOCATION=str(certs / "client.truststore.jks"),
        KAFKA_KEYSTORE_LOCATION=str(certs / "client.keystore.p12"),
        # Also set, as a platform may: certificate auth wins (SASL on this listener would fail).
        AUTH_JAAS=jaas(USER, "not-this-one"),
    )
    serves_writes(service)
    assert "Kafka at " in output(service) and "SSL with a client certificate" in output(service)
    assert_no_secret(service)
    assert service.stop() == 0


# --- refused at start: the process ends, naming the cause ---------------------------------------


def test_a_wrong_password_stops_the_service_naming_authentication(secured, spawn):
    wrong = "Wrong-pw-0c9e44d2"
    service = spawn(secured.sasl, AUTH_JAAS=jaas(USER, wrong), KAFKA_CONFIG_SSL_CA_LOCATION=str(secured.ca_pem))
    code, took = wait_exit(service)
    text = output(service)
    assert code != 0, text
    assert "cannot start" in text and "authentication failed" in text.lower(), text[-3000:]
    assert wrong not in text and PASSWORD not in text
    print(f"\n[security] wrong password: exit {code} after {took:.1f}s")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("sasl", id="sasl-ssl-trusting-another-ca"),
        pytest.param("mtls", id="certificate-auth-trusting-another-ca"),
    ],
)
def test_an_unknown_ca_stops_the_service_naming_certificate_verification(secured, spawn, case):
    certs = secured.folder / "certs"
    if case == "sasl":
        service = spawn(secured.sasl, AUTH_JAAS=jaas(USER, PASSWORD), KAFKA_CONFIG_SSL_CA_LOCATION=str(secured.other_ca_pem))
    else:
        service = spawn(
            secured.mtls,
            KAFKA_KEY_TRUST_SECRET=TRUST_SECRET,
            KAFKA_TRUSTSTORE_LOCATION=str(certs / "other.truststore.jks"),
            KAFKA_KEYSTORE_LOCATION=str(certs / "client.keystore.p12"),
        )
    code, took = wait_exit(service)
    text = output(service)
    assert code != 0, text
    assert "cannot start" in text and "certificate verify failed" in text, text[-3000:]
    for secret in SECRETS:
        assert secret not in text
    print(f"\n[security] unknown CA ({case}): exit {code} after {took:.1f}s")


def test_a_client_certificate_the_broker_does_not_trust_stops_the_service(secured, spawn):
    certs = secured.folder / "certs"
    service = spawn(
        secured.mtls,
        KAFKA_KEY_TRUST_SECRET=TRUST_SECRET,
        KAFKA_TRUSTSTORE_LOCATION=str(certs / "client.truststore.jks"),
        KAFKA_KEYSTORE_LOCATION=str(certs / "stranger.keystore.p12"),
    )
    code, _ = wait_exit(service)
    text = output(service)
    assert code != 0 and "refused the client certificate" in text, text[-3000:]
    assert TRUST_SECRET not in text


def test_a_wrong_trust_secret_is_a_configuration_error_naming_the_variable(secured, spawn):
    certs = secured.folder / "certs"
    wrong = "Wrong-store-pw-77aa"
    service = spawn(
        secured.mtls,
        KAFKA_KEY_TRUST_SECRET=wrong,
        KAFKA_TRUSTSTORE_LOCATION=str(certs / "client.truststore.jks"),
        KAFKA_KEYSTORE_LOCATION=str(certs / "client.keystore.p12"),
    )
    code, _ = wait_exit(service)
    text = output(service)
    assert code == 2 and "KAFKA_KEY_TRUST_SECRET" in text and "KAFKA_TRUSTSTORE_LOCATION" in text, text[-2000:]
    assert wrong not in text


def test_in_process_a_refused_start_is_kept_and_liveness_reports_it(secured, tmp_path):
    from support import test_config

    from contacts_streams.kafka_security import settings_from_env
    from contacts_streams.service import Service

    wrong = "Wrong-pw-in-process-31"
    extra = settings_from_env({"AUTH_JAAS": jaas(USER, wrong), "KAFKA_CONFIG_SSL_CA_LOCATION": str(secured.ca_pem)})
    service = Service(test_config(secured.sasl, f"t{uuid.uuid4().hex[:12]}", str(tmp_path / "state"), extra_kafka=extra)).start()
    try:
        wait_for(lambda: service.fatal is not None, EXIT_WITHIN_S, "the start to be refused")
        alive, reason = service.alive()
        assert not alive and reason.startswith("cannot start: Kafka refused the credentials") and wrong not in reason
        assert not service.ready()[0]
    finally:
        service.close()


# --- an unreachable broker is waited for -----------------------------------------------------------


def test_an_unreachable_broker_is_waited_for_with_readiness_saying_why(spawn):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    service = spawn(closed, AUTH_JAAS=jaas(USER, PASSWORD))
    reasons: list[str] = []

    def not_ready_with_reason() -> bool:
        assert service.running(), f"the service exited ({service.proc.returncode}) instead of waiting:\n{service.tail()}"
        try:
            answer = requests.get(service.base + "/actuator/health/readiness", timeout=5)
        except requests.RequestException:
            return False
        assert answer.status_code == 503, answer.text
        reason = answer.json().get("reason", "")
        if "broker unreachable" in reason:
            reasons.append(reason)
        return len(reasons) >= 2 and time.monotonic() - started > 12  # past one whole start attempt

    started = time.monotonic()
    wait_for(not_ready_with_reason, 60, "readiness to say the broker is unreachable, twice", interval=0.5)
    liveness = requests.get(service.base + "/actuator/health/liveness", timeout=5)
    assert liveness.status_code == 200  # an absent broker is readiness' business, not liveness'
    assert service.running()
    assert PASSWORD not in output(service) and all(PASSWORD not in r for r in reasons)
    service.stop()


# --- which errors are fatal at start ----------------------------------------------------------------

# Texts as librdkafka 2.x reports them (seen against the broker above).
AUTH = "sasl_ssl://127.0.0.1:42843/bootstrap: SASL authentication error: Authentication failed: Invalid username or password (after 303ms in state AUTH_REQ)"
VERIFY = (
    "sasl_ssl://127.0.0.1:42843/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate "
    "could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (after 7ms in state SSL_HANDSHAKE)"
)
CLIENT_CERT = "ssl://127.0.0.1:45237/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad certificate: SSL alert number 42 (after 3ms in state APIVERSION_QUERY)"
REFUSED = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
PLAINTEXT_PORT = "ssl://127.0.0.1:47571/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker listener? (after 1ms in state SSL_HANDSHAKE)"


@pytest.mark.parametrize(
    "code, text, fatal",
    [
        (KafkaError._AUTHENTICATION, AUTH, "SASL authentication failed"),
        (KafkaError._SSL, VERIFY, "certificate verify failed"),
        (KafkaError._TRANSPORT, CLIENT_CERT, "refused the client certificate"),
        (KafkaError._SSL, "ssl://h:9093/bootstrap: SSL handshake failed: error:0A000410:SSL routines::sslv3 alert handshake failure", "TLS handshake"),
        (KafkaError._TRANSPORT, REFUSED, None),
        (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
        (KafkaError._TIMED_OUT, "Failed to get metadata: Local: Timed out", None),
        (KafkaError._TRANSPORT, PLAINTEXT_PORT, None),
        (KafkaError._AUTHENTICATION, "sasl_ssl://h:9093/1: SASL authentication error: SaslAuthenticateRequest failed: Local: Broker handle destroyed", None),
        (KafkaError._SSL, "ssl://h:9093/1: SSL transport error: Disconnected", None),
        (KafkaError._SSL, "ssl://h:9093/bootstrap: SSL handshake failed: error:0A000126:SSL routines::unexpected eof while reading", None),
        (KafkaError._RESOLVE, "h:9093/bootstrap: Failed to resolve 'h:9093': Name or service not known", None),
    ],
)
def test_only_refused_credentials_and_certificates_are_fatal(code, text, fatal):
    cause = fatal_cause(KafkaError(code, text))
    if fatal is None:
        assert cause is None
    else:
        assert cause is not None and fatal in cause and text in cause
