"""Throwaway certificate authorities and certificates for tests of secured Kafka (test support: the
service never imports this).

Everything is made with ``cryptography``; the Java keystores the platform mounts are made the way
the platform's operators make them: the JKS truststore with the JDK's ``keytool``, the PKCS12
keystore as ``openssl pkcs12 -export`` / Aiven's download would (here with ``cryptography``).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, with the chain up to (not including) the root."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))

    def key_pem(self, password: str | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))


class CertificateAuthority:
    """A self-signed root CA that issues server and client certificates."""

    def __init__(self, common_name: str = "contacts-test-ca"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        self.cert = builder.sign(self.key, hashes.SHA256())

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), client: bool = False) -> Issued:
        """A leaf certificate for a server (the hosts as subject alternative names) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(key, builder.sign(self.key, hashes.SHA256()))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pkcs12_keystore(path: Path, issued: Issued, password: str, alias: str = "client") -> Path:
    """A PKCS12 keystore holding the key and its chain, as the platform's client.keystore.p12."""
    data = pkcs12.serialize_key_and_certificates(
        alias.encode(), issued.key, issued.cert, list(issued.chain) or None, serialization.BestAvailableEncryption(password.encode())
    )
    return write(path, data)


def jks_truststore(path: Path, ca_pems: list[bytes], password: str, storetype: str = "JKS") -> Path:
    """A truststore made with the JDK's keytool (JKS by default, as the platform's
    client.truststore.jks; storetype="PKCS12" is what keytool makes by default since Java 9)."""
    keytool = shutil.which("keytool")
    if keytool is None:
        raise RuntimeError("no `keytool` on PATH (it comes with the JDK the embedded broker needs)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    for number, pem in enumerate(ca_pems):
        ca_file = write(path.with_name(f"{path.name}.ca{number}.pem"), pem)
        subprocess.run(
            [keytool, "-importcert", "-noprompt", "-alias", f"ca{number}", "-file", str(ca_file), "-keystore", str(path),
             "-storetype", storetype, "-storepass", password],
            check=True, capture_output=True, text=True,
        )
        ca_file.unlink()
    return path
