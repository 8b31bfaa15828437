"""The Kafka part of the configuration, without a broker: AUTH_JAAS parsing, KAFKA_CONFIG_<NAME>,
certificate auth from the platform's stores (made with keytool and cryptography) and its
precedence over AUTH_JAAS, and secrets kept out of every repr, str and error message."""

from __future__ import annotations

import logging
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contacts_dev.certificates import CertificateAuthority, jks_truststore, pkcs12_keystore, write
from contacts_streams import kafka_security
from contacts_streams.config import Config, ConfigError, describe
from contacts_streams.kafka_security import SecurityConfigError, parse_jaas, property_name, read_jks_trusted

PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
SECRET = "Store-pw-9b1f"


def java_quote(value: str) -> str:
    """A value as it is written in a JAAS line (Java's StreamTokenizer reads it back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- AUTH_JAAS -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, username, password",
    [
        (f'{PLAIN} required username="u" password="p";', "u", "p"),
        (f'  {PLAIN}   required\n\tusername = "u"   password="p"  ;  ', "u", "p"),  # white space anywhere
        (f'{PLAIN} required username="u" password="p"', "u", "p"),  # no final ;
        (f'{PLAIN} required username="u" password="p\\"q\\\\r";', "u", 'p"q\\r'),  # escaped quote and backslash
        (f'{PLAIN} REQUIRED username=alice password=s3cr3t-pw;', "alice", "s3cr3t-pw"),  # unquoted values, any case flag
        (f'{PLAIN} required username="u" password="p;=x y" serviceName="kafka";', "u", "p;=x y"),  # ; = and space in quotes
        ('org.apache.flink.kafka.shaded.org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p";', "u", "p"),
        ('org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="p";', "u", "p"),
        (f'{PLAIN} required username="ünïcødé" password="пароль";', "ünïcødé", "пароль"),
    ],
)
def test_auth_jaas_gives_username_and_password(line, username, password):
    credentials = parse_jaas(line)
    assert (credentials.username, credentials.password) == (username, password)
    assert "[redacted]" in repr(credentials) and f"{password!r}" not in repr(credentials)


@given(
    username=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
    password=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    gaps=st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \n "]), min_size=6, max_size=6),
    final=st.sampled_from(["", ";", " ;", ";  "]),
)
@settings(max_examples=300, deadline=None)
def test_any_quoted_username_and_password_come_back_as_written(username, password, gaps, final):
    line = f"{gaps[0]}{PLAIN}{gaps[1]}required{gaps[2]}username={java_quote(username)}{gaps[3]}password{gaps[4]}={gaps[5]}{java_quote(password)}{final}"
    credentials = parse_jaas(line)
    assert (credentials.username, credentials.password) == (username, password)


@pytest.mark.parametrize(
    "line",
    [
        "required",
        f"{PLAIN}",
        f'{PLAIN} required username="u";',  # no password
        f'{PLAIN} required password="Pw-bad-line-1";',  # no username
        f'{PLAIN} required username="u" password="Pw-bad-line-1;',  # unterminated quote
        f'{PLAIN} required username "u" password="Pw-bad-line-1";',  # no =
        f'{PLAIN} required username="u" password=;',  # no value
        f'{PLAIN} maybe username="u" password="Pw-bad-line-1";',  # not a flag
        f'com.example.KerberosModule required username="u" password="Pw-bad-line-1";',  # not PLAIN or SCRAM
        f'"{PLAIN}" required username="u" password="Pw-bad-line-1";',
    ],
)
def test_a_malformed_auth_jaas_is_a_config_error_naming_it_without_the_password(line):
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"AUTH_JAAS": line})
    assert "AUTH_JAAS" in str(raised.value)
    assert "Pw-bad-line-1" not in str(raised.value)


def test_an_empty_auth_jaas_is_no_sasl():
    assert dict(Config.from_env({"AUTH_JAAS": "  "}).extra_kafka) == {}


@given(password=st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=10, max_size=20), cut=st.integers(0, 200))
@settings(max_examples=300, deadline=None)
def test_a_cut_off_auth_jaas_never_shows_the_password(password, cut):
    line = f"{PLAIN} required username=\"u\" password={java_quote(password)};"
    try:
        parse_jaas(line[:cut])
    except SecurityConfigError as err:
        assert password not in str(err) and "AUTH_JAAS" in str(err)


# --- KAFKA_CONFIG_<NAME> ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable, name",
    [
        ("KAFKA_CONFIG_SASL_MECHANISM", "sasl.mechanism"),
        ("kafka_config_ssl_ca_location", "ssl.ca.location"),
        ("Kafka_Config_Socket_Keepalive_Enable", "socket.keepalive.enable"),
        ("KAFKA_CONFIG_LOG_LEVEL", "log_level"),
    ],
)
def test_kafka_config_variables_name_librdkafka_properties(variable, name):
    assert property_name(variable) == name


def test_kafka_config_variables_reach_every_client_and_their_own_settings_still_win():
    config = Config.from_env({"KAFKA_CONFIG_SOCKET_KEEPALIVE_ENABLE": "true", "kafka_config_client_id": "contacts-1", "KAFKA_CONFIG_ACKS": "1"})
    assert config.kafka()["socket.keepalive.enable"] == "true" and config.kafka()["client.id"] == "contacts-1"
    assert config.kafka(acks="all")["acks"] == "all"  # a client's own guarantees are not configurable away


def test_every_producer_gets_the_security_settings_and_the_guarantees_writes_rest_on():
    config = Config.from_env({"AUTH_JAAS": f'{PLAIN} required username="svc" password="{SECRET}";', "KAFKA_CONFIG_ACKS": "1"})
    settings = config.producer(**{"linger.ms": 0})
    assert settings["sasl.username"] == "svc" and settings["security.protocol"] == config.kafka()["security.protocol"]
    assert settings["acks"] == "all" and settings["enable.idempotence"] is True and settings["partitioner"] == "murmur2_random"
    assert settings["linger.ms"] == 0 and config.producer(**{"transactional.id": "t"})["transactional.id"] == "t"


@pytest.mark.parametrize(
    "env, named",
    [
        ({"KAFKA_CONFIG_NO_SUCH_THING": "1"}, "KAFKA_CONFIG_NO_SUCH_THING"),
        ({"KAFKA_CONFIG_SOCKET_TIMEOUT_MS": "soon"}, "KAFKA_CONFIG_SOCKET_TIMEOUT_MS"),
        ({"KAFKA_CONFIG_SASL_MECHANISM": "PLAIN", "kafka_config_sasl_mechanism": "SCRAM-SHA-256"}, "KAFKA_CONFIG_SASL_MECHANISM"),
        ({"KAFKA_CONFIG_SSL_CA_LOCATION": "/no/such/ca.pem", "KAFKA_CONFIG_SECURITY_PROTOCOL": "SSL"}, "KAFKA_CONFIG_SSL_CA_LOCATION"),
    ],
)
def test_a_kafka_config_variable_librdkafka_refuses_stops_the_start_naming_it(env, named):
    with pytest.raises(ConfigError, match=named):
        Config.from_env(env)


def test_sasl_settings_from_auth_jaas_can_be_overridden_per_property():
    line = f'{PLAIN} required username="svc" password="Pw-override-3";'
    config = Config.from_env({"AUTH_JAAS": line})
    assert {k: v for k, v in config.extra_kafka.items()} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "svc",
        "sasl.password": "Pw-override-3",
    }
    scram = Config.from_env({"AUTH_JAAS": line, "KAFKA_CONFIG_SASL_MECHANISMS": "SCRAM-SHA-512", "KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert scram.extra_kafka["sasl.mechanisms"] == "SCRAM-SHA-512" and "sasl.mechanism" not in scram.extra_kafka  # no alias left to fight it
    assert scram.extra_kafka["security.protocol"] == "SASL_PLAINTEXT"


# --- certificate auth --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The platform's mount (client.truststore.jks, client.keystore.p12) and the other forms accepted."""
    folder = tmp_path_factory.mktemp("certs")
    ca = CertificateAuthority()
    client = ca.issue("client", hosts=(), client=True)
    return {
        "ca": ca,
        "jks": jks_truststore(folder / "client.truststore.jks", [ca.cert_pem(), CertificateAuthority("second").cert_pem()], SECRET),
        "p12-truststore": jks_truststore(folder / "truststore.p12", [ca.cert_pem()], SECRET, storetype="PKCS12"),
        "pem-truststore": write(folder / "ca.pem", ca.cert_pem()),
        "p12": pkcs12_keystore(folder / "client.keystore.p12", client, SECRET),
        "pem-keystore": write(folder / "client.pem", client.key_pem(SECRET) + client.cert_pem()),
        "client": client,
    }


def certificate_env(stores, truststore="jks", keystore="p12", **extra):
    return {"KAFKA_KEY_TRUST_SECRET": SECRET, "KAFKA_TRUSTSTORE_LOCATION": str(stores[truststore]), "KAFKA_KEYSTORE_LOCATION": str(stores[keystore]), **extra}


@pytest.mark.parametrize("truststore", ["jks", "p12-truststore", "pem-truststore"])
@pytest.mark.parametrize("keystore", ["p12", "pem-keystore"])
def test_certificate_auth_converts_the_stores_to_private_pem_files(stores, truststore, keystore):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    settings_ = Config.from_env(certificate_env(stores, truststore, keystore)).extra_kafka
    assert settings_["security.protocol"] == "SSL" and settings_["ssl.key.password"] == SECRET
    cas = x509.load_pem_x509_certificates(open(settings_["ssl.ca.location"], "rb").read())
    assert stores["ca"].cert in cas
    chain = x509.load_pem_x509_certificates(open(settings_["ssl.certificate.location"], "rb").read())
    assert chain[0] == stores["client"].cert
    key_pem = open(settings_["ssl.key.location"], "rb").read()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem  # at rest only with the secret
    key = serialization.load_pem_private_key(key_pem, SECRET.encode())
    assert key.public_key() == stores["client"].cert.public_key()
    for location in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        assert stat.S_IMODE(os.stat(settings_[location]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(settings_["ssl.key.location"])).st_mode) == 0o700


def test_the_jks_reader_checks_the_password_and_reads_every_trusted_certificate(stores):
    data = stores["jks"].read_bytes()
    assert len(read_jks_trusted(data, SECRET)) == 2
    with pytest.raises(PermissionError):
        read_jks_trusted(data, SECRET + "x")
    with pytest.raises(PermissionError):  # as keytool: "tampered with, or password was incorrect"
        read_jks_trusted(data[:40] + bytes([data[40] ^ 1]) + data[41:], SECRET)
    with pytest.raises(ValueError):
        read_jks_trusted(b"\x30\x82" + data[2:], SECRET)  # not JKS at all


def test_certificate_auth_wins_over_auth_jaas(stores):
    env = certificate_env(stores, AUTH_JAAS=f'{PLAIN} required username="svc" password="Pw-loses-4";')
    settings_ = Config.from_env(env).extra_kafka
    assert settings_["security.protocol"] == "SSL"
    assert not any(key.startswith("sasl.") for key in settings_)
    assert "Pw-loses-4" not in settings_.values()


@pytest.mark.parametrize(
    "change, named",
    [
        ({"KAFKA_KEY_TRUST_SECRET": "Not-the-secret-5"}, "KAFKA_KEY_TRUST_SECRET"),
        ({"KAFKA_TRUSTSTORE_LOCATION": "/no/such/truststore.jks"}, "KAFKA_TRUSTSTORE_LOCATION"),
        ({"KAFKA_KEYSTORE_LOCATION": "/no/such/keystore.p12"}, "KAFKA_KEYSTORE_LOCATION"),
    ],
)
def test_unusable_certificates_are_config_errors_naming_the_variable_not_the_secret(stores, change, named):
    with pytest.raises(ConfigError, match=named) as raised:
        Config.from_env({**certificate_env(stores), **change})
    assert SECRET not in str(raised.value) and "Not-the-secret-5" not in str(raised.value)


def test_the_platforms_paths_are_the_defaults():
    assert kafka_security.PLATFORM_TRUSTSTORE == "/opt/kafka/certs/client.truststore.jks"
    assert kafka_security.PLATFORM_KEYSTORE == "/opt/kafka/certs/client.keystore.p12"
    with pytest.raises(ConfigError, match="/opt/kafka/certs/client.truststore.jks"):
        Config.from_env({"KAFKA_KEY_TRUST_SECRET": SECRET})
    for name in ("AUTH_JAAS", "KAFKA_KEY_TRUST_SECRET", "KAFKA_TRUSTSTORE_LOCATION", "KAFKA_KEYSTORE_LOCATION", "KAFKA_CONFIG_<NAME>"):
        assert name in describe()


# --- secrets stay out of reprs and start-up lines -----------------------------------------------------


def test_no_repr_str_or_start_up_line_shows_a_secret(stores, caplog):
    env = {
        **certificate_env(stores),
        "AUTH_JAAS": f'{PLAIN} required username="svc" password="Pw-repr-6";',
        "KAFKA_CONFIG_SASL_OAUTHBEARER_CLIENT_SECRET": "Oauth-secret-7",
        "systemToken": "System-token-8",
        "jwtSecret": "Jwt-secret-9",
    }
    config = Config.from_env(env)
    shown = [repr(config), str(config), repr(config.extra_kafka), str(config.extra_kafka), f"{config.extra_kafka}", kafka_security.describe(config.extra_kafka)]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("contacts_streams").info("config %s / %r", config, config.extra_kafka)
    shown.append(caplog.text)
    for secret in (SECRET, "Pw-repr-6", "Oauth-secret-7", "System-token-8", "Jwt-secret-9"):
        assert not any(secret in text for text in shown), secret
    assert "ssl.key.password" in repr(config.extra_kafka)  # named, value hidden
