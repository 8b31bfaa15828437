"""Secured Kafka: the platform's `kafka-config` (AUTH_JAAS, KAFKA_KEY_TRUST_SECRET + the mounted
certificates) and `KAFKA_CONFIG_<NAME>` turned into librdkafka settings, and the one judgement of
which broker errors no retry fixes.

The platform's Java services (airy `lib/java/kafka`) read:
- `AUTH_JAAS`: `security.protocol=SASL_SSL`, `sasl.mechanism=PLAIN`, the line as `sasl.jaas.config`.
  librdkafka has no JAAS: the username and password are taken out of the line.
- `KAFKA_KEY_TRUST_SECRET`: `security.protocol=SSL`, the JKS truststore
  `/opt/kafka/certs/client.truststore.jks` and the PKCS12 keystore
  `/opt/kafka/certs/client.keystore.p12`, the secret as store and key password. Set after the JAAS
  settings, so certificate auth wins when both are given. librdkafka reads neither JKS nor Java's
  PKCS12 reliably (OpenSSL 3 refuses the legacy ciphers older keytools used): both are converted at
  start into PEM files in a private temporary folder (0700, files 0600, the key encrypted with the
  secret).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError

log = logging.getLogger(__name__)

PLATFORM_TRUSTSTORE = "/opt/kafka/certs/client.truststore.jks"
PLATFORM_KEYSTORE = "/opt/kafka/certs/client.keystore.p12"
PREFIX = "KAFKA_CONFIG_"
# librdkafka properties whose names hold an underscore (an env var cannot tell it from a dot).
UNDERSCORED = {"log.level": "log_level"}
ALIASES = {"sasl.mechanism": "sasl.mechanisms", "sasl.mechanisms": "sasl.mechanism"}
SENSITIVE = re.compile(r"password|secret|jaas|\.pem$|private", re.IGNORECASE)
REDACTED = "[redacted]"


class SecurityConfigError(ValueError):
    """Raised here; config.py turns it into a ConfigError (the message names the variable and
    never holds a secret)."""


class KafkaSettings(dict):
    """librdkafka settings whose repr and str never show a password, a key or a JAAS line."""

    def redacted(self) -> dict[str, str]:
        return {k: (REDACTED if SENSITIVE.search(k) else v) for k, v in self.items()}

    def __repr__(self) -> str:
        return repr(self.redacted())

    __str__ = __repr__


# --- AUTH_JAAS -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<quoted>"(?:[^"\\]|\\.)*")      # a quoted value, backslash escapes as Java's StreamTokenizer
      | (?P<word>[^\s"=;]+)                # a class name, a flag, a key or an unquoted value
      | (?P<sym>[=;])
      | (?P<bad>\S)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
FLAGS = ("required", "requisite", "sufficient", "optional")
MODULES = ("PlainLoginModule", "ScramLoginModule")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    module: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={REDACTED!r}, module={self.module!r})"


def _unquote(token: str) -> str:
    return re.sub(
        r"\\([0-7]{1,3}|.)",
        lambda m: chr(int(m[1], 8)) if m[1][0] in "01234567" else _ESCAPES.get(m[1], m[1]),
        token[1:-1],
        flags=re.DOTALL,
    )


def parse_jaas(line: str) -> Credentials:
    """Username and password of a JAAS line as the platform's Java services take it, e.g.
    `org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p";`
    Quoted values may hold escaped quotes and backslashes; extra white space and a missing final
    `;` are fine. Errors name AUTH_JAAS and a position, never the line (it holds the password)."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        if match is None or match.lastgroup is None:  # only white space is left
            break
        kind = match.lastgroup
        if kind == "bad":
            raise SecurityConfigError(
                f"AUTH_JAAS has an unterminated quote or a stray character at position {match.start(kind) + 1}"
            )
        tokens.append((kind, match[kind], match.start(kind) + 1))
        pos = match.end()
    if len(tokens) < 2 or tokens[0][0] != "word" or tokens[1][0] != "word":
        raise SecurityConfigError('AUTH_JAAS must be "<LoginModule class> required username=\\"...\\" password=\\"...\\";"')
    module, flag = tokens[0][1], tokens[1][1]
    short = module.rsplit(".", 1)[-1]
    if short not in MODULES:
        raise SecurityConfigError(f"AUTH_JAAS names the login module {short!r}; supported: {', '.join(MODULES)}")
    if flag.lower() not in FLAGS:
        raise SecurityConfigError(f"AUTH_JAAS: {flag!r} is not a control flag (one of {', '.join(FLAGS)})")
    options: dict[str, str] = {}
    rest = tokens[2:]
    if rest and rest[-1][0] == "sym" and rest[-1][1] == ";":
        rest = rest[:-1]
    if len(rest) % 3:
        raise SecurityConfigError(f"AUTH_JAAS: an option is not key=value at position {rest[-(len(rest) % 3)][2]}")
    for i in range(0, len(rest), 3):
        (kkind, key, kpos), (ekind, eq, _), (vkind, value, vpos) = rest[i : i + 3]
        if kkind != "word" or (ekind, eq) != ("sym", "="):
            raise SecurityConfigError(f"AUTH_JAAS: expected key=value at position {kpos}")
        if vkind == "sym":
            raise SecurityConfigError(f"AUTH_JAAS: no value for {key!r} at position {vpos}")
        options[key] = _unquote(value) if vkind == "quoted" else value
    missing = [k for k in ("username", "password") if not options.get(k)]
    if missing:
        raise SecurityConfigError(f"AUTH_JAAS has no {' and no '.join(missing)}")
    return Credentials(options["username"], options["password"], short)


# --- KAFKA_CONFIG_<NAME> ---------------------------------------------------------------------


def property_name(variable: str) -> str:
    """`KAFKA_CONFIG_SASL_MECHANISM` -> `sasl.mechanism` (any case)."""
    name = variable[len(PREFIX) :].lower().replace("_", ".")
    return UNDERSCORED.get(name, name)


def passthrough(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Every `KAFKA_CONFIG_<NAME>` variable: property -> (variable, value)."""
    out: dict[str, tuple[str, str]] = {}
    for variable, value in sorted(environ.items()):
        if variable.upper().startswith(PREFIX) and len(variable) > len(PREFIX):
            name = property_name(variable)
            if name in out:
                raise SecurityConfigError(f"{out[name][0]} and {variable} both set {name}")
            out[name] = (variable, value.strip())
    return out


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFiles:
    """What librdkafka reads: PEM paths, the key encrypted with the secret."""

    ca_location: str
    certificate_location: str
    key_location: str


def _load_certificates_pem(data: bytes, variable: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SecurityConfigError(f"{variable}: the PEM file holds no readable certificate") from None


def read_jks_trusted(data: bytes, password: str) -> list[bytes]:
    """The DER certificates of a JKS keystore's trusted-certificate entries, after checking its
    integrity digest with the password, as keytool does (SHA-1 over the password as UTF-16BE,
    "Mighty Aphrodite" and the store). A small reader instead of pyjks: that one pulls in a C
    extension (twofish) without wheels, which the service's slim image cannot build."""
    if len(data) < 32 or data[:4] != b"\xfe\xed\xfe\xed":
        raise ValueError("not a JKS keystore")
    body, digest = data[:-20], data[-20:]
    if hashlib.sha1(password.encode("utf-16-be") + b"Mighty Aphrodite" + body).digest() != digest:
        raise PermissionError("wrong password or damaged keystore")
    version, count = struct.unpack_from(">II", body, 4)
    pos = 12

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(body):
            raise ValueError("truncated keystore")
        chunk = body[pos : pos + n]
        pos += n
        return chunk

    def utf() -> str:
        return take(struct.unpack(">H", take(2))[0]).decode("utf-8", "replace")

    def certificate() -> bytes:
        if version == 2:
            utf()  # the certificate type, "X.509"
        return take(struct.unpack(">I", take(4))[0])

    trusted = []
    for _ in range(count):
        tag = struct.unpack(">I", take(4))[0]
        utf()  # alias
        take(8)  # creation time
        if tag == 2:
            trusted.append(certificate())
        elif tag == 1:  # a private key entry: its chain is not a trust anchor
            take(struct.unpack(">I", take(4))[0])
            for _ in range(struct.unpack(">I", take(4))[0]):
                certificate()
        else:
            raise ValueError(f"unknown JKS entry type {tag}")
    return trusted


def _truststore_pem(path: Path, secret: str, variable: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    data = _read(path, variable)
    if data.lstrip().startswith(b"-----BEGIN"):
        certs = _load_certificates_pem(data, variable)
    elif data[:4] == b"\xfe\xed\xfe\xed":
        try:
            certs = [x509.load_der_x509_certificate(der) for der in read_jks_trusted(data, secret)]
        except PermissionError:
            raise SecurityConfigError(
                f"{variable} ({path}) cannot be opened with KAFKA_KEY_TRUST_SECRET: wrong secret or damaged file"
            ) from None
        except ValueError as err:
            raise SecurityConfigError(f"{variable} ({path}) is not a readable JKS truststore: {err}") from None
    elif data[:4] == b"\xce\xce\xce\xce":
        raise SecurityConfigError(f"{variable} ({path}) is a JCEKS keystore; give a JKS, PKCS12 or PEM truststore")
    else:
        try:
            store = pkcs12.load_pkcs12(data, secret.encode())
        except ValueError:
            raise SecurityConfigError(
                f"{variable} ({path}) is neither JKS, PEM nor a PKCS12 store KAFKA_KEY_TRUST_SECRET opens"
            ) from None
        certs = [c.certificate for c in store.additional_certs] + ([store.cert.certificate] if store.cert else [])
    if not certs:
        raise SecurityConfigError(f"{variable} ({path}) holds no trusted certificate")
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _keystore_pem(path: Path, secret: str, variable: str) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    data = _read(path, variable)
    if data.lstrip().startswith(b"-----BEGIN"):
        certs = _load_certificates_pem(data, variable)
        try:
            key = serialization.load_pem_private_key(data, password=secret.encode() if b"ENCRYPTED" in data else None)
        except (ValueError, TypeError):
            raise SecurityConfigError(f"{variable} ({path}) holds no private key KAFKA_KEY_TRUST_SECRET opens") from None
    else:
        try:
            stored_key, cert, extra = pkcs12.load_key_and_certificates(data, secret.encode())
        except ValueError:
            raise SecurityConfigError(
                f"{variable} ({path}) cannot be opened with KAFKA_KEY_TRUST_SECRET: wrong secret, or not PKCS12"
            ) from None
        if stored_key is None or cert is None:
            raise SecurityConfigError(f"{variable} ({path}) holds no private key with its certificate")
        key = stored_key
        certs = [cert, *extra]
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(secret.encode())
    )
    return chain, encrypted


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SecurityConfigError(f"{variable}: cannot read {path}: {err.strerror}") from None


_private_dir_lock = threading.Lock()
_private_dir: Path | None = None


def _private_folder() -> Path:
    """One 0700 folder per process for the converted files, removed when the process that made it
    exits (a forked worker, gunicorn's or granian's, reuses it and leaves it to its master)."""
    global _private_dir
    with _private_dir_lock:
        if _private_dir is None or not _private_dir.exists():
            _private_dir = Path(tempfile.mkdtemp(prefix="contacts-kafka-certs-"))
            atexit.register(_remove_private, _private_dir, os.getpid())
        return _private_dir


def _remove_private(folder: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(name: str, data: bytes) -> str:
    path = _private_folder() / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return str(path)


def convert_certificates(truststore: Path, keystore: Path, secret: str) -> CertificateFiles:
    """The platform's truststore (JKS, PKCS12 or PEM) and keystore (PKCS12 or PEM) as PEM files."""
    ca = _truststore_pem(truststore, secret, "KAFKA_TRUSTSTORE_LOCATION")
    chain, key = _keystore_pem(keystore, secret, "KAFKA_KEYSTORE_LOCATION")
    return CertificateFiles(_write_private("ca.pem", ca), _write_private("client.pem", chain), _write_private("client.key", key))


# --- from the environment --------------------------------------------------------------------


def settings_from_env(environ: Mapping[str, str]) -> KafkaSettings:
    """librdkafka settings for every client of the service, from AUTH_JAAS, KAFKA_KEY_TRUST_SECRET
    (+ KAFKA_TRUSTSTORE_LOCATION / KAFKA_KEYSTORE_LOCATION) and KAFKA_CONFIG_<NAME>, applied in that
    order: certificate auth replaces SASL, and a KAFKA_CONFIG_ variable overrides either."""
    settings = KafkaSettings()
    jaas = environ.get("AUTH_JAAS", "").strip()
    secret = environ.get("KAFKA_KEY_TRUST_SECRET", "")
    if jaas:
        credentials = parse_jaas(jaas)
        settings.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "PLAIN",
                "sasl.username": credentials.username,
                "sasl.password": credentials.password,
            }
        )
    if secret:
        truststore = Path(environ.get("KAFKA_TRUSTSTORE_LOCATION", "").strip() or PLATFORM_TRUSTSTORE)
        keystore = Path(environ.get("KAFKA_KEYSTORE_LOCATION", "").strip() or PLATFORM_KEYSTORE)
        files = convert_certificates(truststore, keystore, secret)
        for key in ("sasl.mechanism", "sasl.username", "sasl.password"):
            settings.pop(key, None)
        settings.update(
            {
                "security.protocol": "SSL",
                "ssl.ca.location": files.ca_location,
                "ssl.certificate.location": files.certificate_location,
                "ssl.key.location": files.key_location,
                "ssl.key.password": secret,
            }
        )
    sources = passthrough(environ)
    for name, (_variable, value) in sources.items():
        if name in ALIASES:
            settings.pop(ALIASES[name], None)
        settings[name] = value
    if settings:
        _validate(settings, {name: variable for name, (variable, _) in sources.items()})
    return settings


_DISCARD = logging.getLogger("contacts_streams.kafka_security.validation")
_DISCARD.addHandler(logging.NullHandler())
_DISCARD.propagate = False


def _validate(settings: KafkaSettings, sources: Mapping[str, str]) -> None:
    """librdkafka's own check of the settings (names, values, readable certificate files), run
    once at start with no broker to contact, so a typo stops the service naming its variable."""
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**settings, "log_level": 0, "logger": _DISCARD})
    except (KafkaException, ValueError, TypeError) as err:
        reason = err.args[0].str() if isinstance(err, KafkaException) and err.args else str(err)
        reason = scrub(reason, settings)
        named = [variable for name, variable in sources.items() if name in reason]
        where = ", ".join(named) or "the Kafka settings (AUTH_JAAS, KAFKA_KEY_TRUST_SECRET, KAFKA_CONFIG_*)"
        raise SecurityConfigError(f"{where}: librdkafka refuses them: {reason}") from None


def describe(settings: Mapping[str, str]) -> str:
    """One line for the start-up log: how the service talks to Kafka, without secrets."""
    protocol = str(settings.get("security.protocol", "plaintext")).upper()
    if "SASL" in protocol:
        mechanism = settings.get("sasl.mechanism") or settings.get("sasl.mechanisms") or "GSSAPI"
        return f"{protocol}, SASL {mechanism} as {settings.get('sasl.username', '?')!r}"
    if protocol == "SSL":
        client = (
            "with a client certificate"
            if settings.get("ssl.certificate.location") or settings.get("ssl.keystore.location")
            else "without a client certificate"
        )
        return f"SSL {client}, CA {settings.get('ssl.ca.location', 'of the system')}"
    return protocol


def scrub(text: str, settings: Mapping[str, str]) -> str:
    """text with every secret value of settings replaced (for messages built from librdkafka's)."""
    for key, value in settings.items():
        if SENSITIVE.search(key) and isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, REDACTED)
    return text


# --- which broker errors no retry fixes ------------------------------------------------------

# librdkafka reports these through error_cb (admin and metadata calls just time out with
# _TRANSPORT): SASL failures as _AUTHENTICATION, a broker certificate that does not verify as _SSL
# ("certificate verify failed"), and a client certificate the broker refuses as a TLS alert,
# which arrives after the handshake and so as _TRANSPORT.
_TRANSIENT = re.compile(
    r"broker handle destroyed|timed out|disconnected|connection (refused|reset|closed)|reset by peer|broken pipe|unexpected eof",
    re.IGNORECASE,
)
_CLIENT_CERT_REFUSED = re.compile(
    r"alert (bad certificate|unknown ca|certificate (unknown|expired|revoked|unsupported)|access denied)", re.IGNORECASE
)


def fatal_cause(error: KafkaError) -> str | None:
    """Why no retry will ever connect, or None when waiting may help (a broker that is down, a
    network that drops, timeouts). Callers judge only errors seen while a start-up call failed."""
    code, text = error.code(), error.str()
    if code == KafkaError._AUTHENTICATION:
        if _TRANSIENT.search(text) and "authentication failed" not in text.lower():
            return None
        return f"Kafka refused the credentials (SASL authentication failed; check AUTH_JAAS): {text}"
    if code == KafkaError._SSL:
        if "certificate verify failed" in text.lower():
            return f"the broker's certificate could not be verified (certificate verify failed; check the CA: KAFKA_TRUSTSTORE_LOCATION or KAFKA_CONFIG_SSL_CA_LOCATION): {text}"
        if _TRANSIENT.search(text):
            return None
        return f"the TLS handshake with Kafka failed (check the certificates and KAFKA_CONFIG_SSL_* settings): {text}"
    if code == KafkaError._TRANSPORT and _CLIENT_CERT_REFUSED.search(text):
        return f"Kafka refused the client certificate (check KAFKA_KEYSTORE_LOCATION and the broker's CA): {text}"
    return None


class StartupErrors:
    """An error_cb that keeps what librdkafka reported during a start-up call."""

    def __init__(self):
        self._lock = threading.Lock()
        self.fatal: str | None = None

    def __call__(self, error: KafkaError) -> None:
        cause = fatal_cause(error)
        with self._lock:
            if cause is not None and self.fatal is None:
                self.fatal = cause


class BrokerRefused(RuntimeError):
    """The broker refuses this service's credentials or certificates: retrying will not help."""
