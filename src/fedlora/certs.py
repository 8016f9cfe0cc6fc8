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
from fedlora.errors import ConfigError, FedLoraError

__all__ = ["CertPaths", "check_certificate", "create_ca", "issue_certificate", "sign_request"]

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
    ca_dir: Path,
    name: str,
    out: Path,
    *,
    server_hosts: Sequence[str] = (),
    client: bool = True,
    valid_days: float = _VALID_DAYS_LEAF,
    valid_from: dt.datetime | None = None,
) -> CertPaths:
    """Issue ``NAME.pem`` / ``NAME.key`` signed by the CA in ``ca_dir``.

    Args:
        name: the identity (common name): a party id, or e.g. ``coordinator``.
        server_hosts: DNS names and IP addresses the certificate serves (a coordinator).
        client: include client authentication in the extended key usage.
        valid_days: how long the certificate is valid (default 825 days).
        valid_from: the start of its validity (default: five minutes ago).
    """
    check_id(name, "--name")
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    if not usages:
        raise FedLoraError("a certificate needs --server-host or client use")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_dir, name, key.public_key(), usages, server_hosts, valid_days, valid_from)
    paths = CertPaths(out / f"{name}.pem", out / f"{name}.key")
    write_new_file(paths.key, _pem_key(key), mode=0o600)
    write_new_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def sign_request(
    ca_dir: Path,
    csr: x509.CertificateSigningRequest,
    name: str,
    *,
    server_hosts: Sequence[str] = (),
    valid_days: float = _VALID_DAYS_LEAF,
) -> bytes:
    """Sign a site's certificate request (its key never left the site); return the PEM.

    The certificate is issued to ``name`` whatever the request asks for; ``server_hosts`` makes
    it a server certificate for those names (the coordinator), otherwise a client certificate.

    Raises:
        FedLoraError: the request's signature does not verify, or the CA cannot be read.
    """
    check_id(name, "name")
    if not csr.is_signature_valid:
        raise FedLoraError(f"the certificate request for {name!r} is not signed by its own key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise FedLoraError(f"the certificate request for {name!r} is not for an EC key")
    usages = (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    cert = _leaf(ca_dir, name, public, usages, server_hosts, valid_days, None)
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf(
    ca_dir: Path,
    name: str,
    public: ec.EllipticCurvePublicKey,
    usages: list[x509.ObjectIdentifier],
    server_hosts: Sequence[str],
    valid_days: float,
    valid_from: dt.datetime | None,
) -> x509.Certificate:
    """A leaf certificate for ``name``'s key, signed by the CA in ``ca_dir``."""
    ca_key, ca_cert = _load_ca(ca_dir)
    start = valid_from or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
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
    return builder.sign(ca_key, hashes.SHA256())


def check_certificate(
    cert_path: Path,
    ca_path: Path,
    where: str,
    *,
    name: str | None = None,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Check a TLS certificate the way its peer will: CA signature, validity dates, identity.

    ``where`` is the dotted YAML key that named the certificate (``coordinator.tls.cert``);
    ``name``, when given, must be its common name (a client's id).

    Raises:
        ConfigError: unreadable or not PEM, not signed by the CA, expired or not valid yet, or
            issued to another name (each message names the file and the fix).
    """
    from cryptography.exceptions import InvalidSignature

    try:
        cert = x509.load_pem_x509_certificate(read_file(cert_path, where))
        ca = x509.load_pem_x509_certificate(read_file(ca_path, "the CA certificate"))
    except FedLoraError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError:
        raise ConfigError(f"{where}: {cert_path} or {ca_path} is not a PEM certificate") from None
    try:
        public = ca.public_key()
        if (
            not isinstance(public, ec.EllipticCurvePublicKey)
            or cert.signature_hash_algorithm is None
        ):
            raise InvalidSignature
        public.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    except InvalidSignature:
        raise ConfigError(
            f"{where}: {cert_path} is not signed by the CA in {ca_path}; use a certificate the "
            "federation's CA issued"
        ) from None
    now = now or dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"{where}: {cert_path} expired on {cert.not_valid_after_utc.date()}; ask the CA for a "
            "new one"
        )
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"{where}: {cert_path} is valid only from {cert.not_valid_before_utc.isoformat()}"
        )
    if name is not None:
        held = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if held != [name]:
            raise ConfigError(
                f"{where}: {cert_path} is issued to {', '.join(map(str, held)) or 'no name'}, but "
                f"this party's id is {name!r}; the coordinator would refuse it"
            )
    return cert
