"""``fedlora certs``: a federation CA and the certificates for mTLS (pyca/cryptography x509).

The identity of a party is its certificate's common name; the coordinator accepts a call only
when that name is an enrolled, non-revoked party.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlora._files import read_file, write_new_file
from fedlora.config import check_id
from fedlora.errors import FedLoraError

__all__ = ["CertPaths", "create_ca", "issue_certificate"]

_VALID_DAYS_CA = 3650
_VALID_DAYS_LEAF = 825


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(out: Path, name: str = "fedlora federation CA") -> CertPaths:
    """Create ``ca.pem`` and ``ca.key`` (0600) in ``out``; refuses to overwrite."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS_CA))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    paths = CertPaths(out / "ca.pem", out / "ca.key")
    write_new_file(paths.key, _pem_key(key), mode=0o600)
    write_new_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        cert = x509.load_pem_x509_certificate(read_file(ca_dir / "ca.pem", "CA certificate"))
        key = serialization.load_pem_private_key(
            read_file(ca_dir / "ca.key", "CA key"), password=None
        )
    except ValueError as exc:
        raise FedLoraError(f"the CA in {ca_dir} is not valid PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedLoraError(f"{ca_dir / 'ca.key'} is not an EC private key")
    return key, cert


def issue_certificate(
    ca_dir: Path, name: str, out: Path, *, server_hosts: Sequence[str] = (), client: bool = True
) -> CertPaths:
    """Issue ``NAME.pem`` / ``NAME.key`` signed by the CA in ``ca_dir``.

    Args:
        name: the identity (common name): a party id, or e.g. ``coordinator``.
        server_hosts: DNS names and IP addresses the certificate serves (a coordinator).
        client: include client authentication in the extended key usage.
    """
    check_id(name, "--name")
    ca_key, ca_cert = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    if not usages:
        raise FedLoraError("a certificate needs --server-host or client use")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS_LEAF))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server_hosts:
        sans: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = CertPaths(out / f"{name}.pem", out / f"{name}.key")
    write_new_file(paths.key, _pem_key(key), mode=0o600)
    write_new_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths
