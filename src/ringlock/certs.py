"""A private CA, node and client certificates, and a cluster secret, for `ringlock certs`.

For tests, development and small private clusters: one CA whose key stays in the
directory, a certificate per node usable as server and as client (peers verify each
other with it: mutual TLS), a client certificate, and a random secret. Made with the
`cryptography` package: the standard `ssl` module can use certificates but not make
them, and an `openssl` binary is not everywhere nor the same everywhere.

Keys are ECDSA P-256 (small, fast, accepted by every TLS stack); key files and the
secret are written with mode 0600, before any byte of them is written.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringlock.errors import ConfigError
from ringlock.files import write_atomically

CA_VALID_DAYS = 3650
"""Ten years: a private test CA should not expire under a long-lived dev setup."""
CERT_VALID_DAYS = 365
MAX_NODES = 64
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
SECRET_BYTES = 32
"""256 random bits, written as 64 hex characters."""


@dataclass(frozen=True, slots=True)
class CertFiles:
    """What `make_certs` wrote, by role."""

    ca: Path
    ca_key: Path
    nodes: dict[int, tuple[Path, Path]]
    """node id -> (certificate, key)."""
    client: tuple[Path, Path]
    secret: Path


def make_certs(directory: str | Path, *, nodes: int = 3,
               hosts: tuple[str, ...] = DEFAULT_HOSTS, overwrite: bool = False) -> CertFiles:
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"nodes must be in 1..{MAX_NODES}, got {nodes}")
    if not hosts:
        raise ConfigError("at least one host name or IP address is needed")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.pem").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a CA (ca.pem): not overwritten")
    stems = ["ca", *(f"node-{node}" for node in range(1, nodes + 1)), "client"]
    targets = [f"{stem}{suffix}" for stem in stems for suffix in (".pem", "-key.pem")]
    present = [name for name in [*targets, "secret"] if (out / name).exists()]
    if present and not overwrite:  # a cluster's secret or keys without its ca.pem
        raise ConfigError(f"{out} already holds {', '.join(present[:4])}: not overwritten")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ringlock private CA")])
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), now, CA_VALID_DAYS)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=False, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    write_atomically(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomically(out / "ca-key.pem", _key_bytes(ca_key), private=True)
    node_files = {}
    for node in range(1, nodes + 1):
        node_files[node] = _leaf(out, f"node-{node}", f"ringlock node {node}", hosts,
                                 ca_cert, ca_key, now)
    client = _leaf(out, "client", "ringlock client", (), ca_cert, ca_key, now)
    secret = out / "secret"
    write_atomically(secret, (secrets.token_hex(SECRET_BYTES) + "\n").encode(), private=True)
    return CertFiles(out / "ca.pem", out / "ca-key.pem", node_files, client, secret)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks differ a little
            .not_valid_after(now + datetime.timedelta(days=days)))


def _leaf(out: Path, stem: str, common_name: str, hosts: tuple[str, ...],
          ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          now: datetime.datetime) -> tuple[Path, Path]:
    """A certificate for both ends of a connection (server and client auth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (_builder(name, ca_cert.subject, key.public_key(), now, CERT_VALID_DAYS)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    write_atomically(key_path, _key_bytes(key), private=True)
    return cert_path, key_path


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
