"""Revocation: a list of party ids the federation's CA signed, which the coordinator reloads.

The CA that issued the parties' certificates signs the list (ECDSA P-256 over its canonical
JSON), so only whoever holds the CA key can revoke, and nobody can un-revoke a party by editing
the file: the coordinator keeps its last valid list when a new one does not verify. Each list
carries a serial number that must not go back (an old list cannot be replayed to reinstate a
party). The coordinator reads the (small) file on every authentication and reloads it when its
contents changed; a revoked party's calls are refused from then on and the revocation is
audited. The audit log records every list accepted (``revocations_loaded``), and a restart starts
from it: the coordinator refuses to start with an older list, or with none.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlora._files import read_file
from fedlora.config import check_id
from fedlora.errors import ConfigError, FedLoraError, VerificationError

FORMAT = "fedlora-revocations-1"


@dataclass(frozen=True)
class RevocationList:
    federation_id: str
    serial: int
    revoked: frozenset[str]
    issued_at: str


def _body(federation_id: str, serial: int, revoked: list[str], issued_at: str) -> bytes:
    doc = {
        "format": FORMAT,
        "federation_id": federation_id,
        "serial": serial,
        "revoked": sorted(revoked),
        "issued_at": issued_at,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign_revocations(ca_dir: Path, federation_id: str, revoked: list[str], serial: int) -> bytes:
    """The file contents of a revocation list signed by the CA key in ``ca_dir``."""
    for pid in revoked:
        check_id(pid, "--party")
    try:
        key = serialization.load_pem_private_key(read_file(ca_dir / "ca.key", "CA key"), None)
    except ValueError:
        raise FedLoraError(f"{ca_dir / 'ca.key'} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedLoraError(f"{ca_dir / 'ca.key'} is not an EC private key")
    issued = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    body = _body(federation_id, serial, revoked, issued)
    signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    doc = {**json.loads(body), "signature": signature.hex()}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def read_revocations(
    path: Path, ca_cert: Path, federation_id: str, data: bytes | None = None
) -> RevocationList:
    """Parse and verify a revocation list against the CA certificate.

    Raises:
        VerificationError: malformed, for another federation, or not signed by the CA.
        ConfigError: the CA certificate cannot be read.
    """
    try:
        ca = x509.load_pem_x509_certificate(read_file(ca_cert, "the CA certificate"))
    except (FedLoraError, ValueError) as exc:
        raise ConfigError(f"server.tls.ca: {exc}") from None
    try:
        doc: Any = json.loads(data if data is not None else path.read_bytes())
        serial, revoked, issued = doc["serial"], doc["revoked"], doc["issued_at"]
        signature = bytes.fromhex(doc["signature"])
        if (
            doc.get("format") != FORMAT
            or not isinstance(serial, int)
            or not isinstance(revoked, list)
            or not all(isinstance(r, str) for r in revoked)
            or not isinstance(issued, str)
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise VerificationError(f"revocation list {path} is malformed") from None
    if doc.get("federation_id") != federation_id:
        raise VerificationError(
            f"revocation list {path} is for federation {doc.get('federation_id')!r}"
        )
    public = ca.public_key()
    try:
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        public.verify(
            signature, _body(federation_id, serial, revoked, issued), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise VerificationError(
            f"revocation list {path} is not signed by the federation's CA"
        ) from None
    return RevocationList(federation_id, serial, frozenset(revoked), issued)


class RevocationWatcher:
    """The coordinator's view of the revocation list file, reloaded when it changes.

    What the audit log recorded (the highest serial and every party revoked) is the floor: a
    list older than it, one that reinstates a party, or none at all is refused at start-up
    (:meth:`start`), so a restart cannot undo a revocation; while running, a bad new file is
    reported and the previous list kept.
    """

    def __init__(self, path: Path | None, ca_cert: Path | None, federation_id: str) -> None:
        self.path, self.ca_cert, self.federation_id = path, ca_cert, federation_id
        self.current: RevocationList | None = None
        self._seen: bytes | None = None

    @property
    def revoked(self) -> frozenset[str]:
        return self.current.revoked if self.current else frozenset()

    def start(self, recorded: RevocationList | None) -> frozenset[str]:
        """Load the configured list at start-up, no older than ``recorded`` (from the log).

        Raises:
            ConfigError: the log recorded a list and none is configured or the file is missing,
                or the file is malformed, foreign, not the CA's, older than the recorded serial
                or reinstates a recorded party.
        """
        self.current = recorded
        if recorded is not None and (self.path is None or self.ca_cert is None):
            raise ConfigError(
                f"server.revocations is not set, but the audit log records revocation list "
                f"serial {recorded.serial} (revoking {', '.join(sorted(recorded.revoked))}); "
                "set it to that list or a newer one: a restart cannot undo a revocation"
            )
        if self.path is None or self.ca_cert is None:
            return frozenset()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if recorded is None:
                return frozenset()
            raise ConfigError(
                f"server.revocations: {self.path} is missing, but the audit log records "
                f"revocation list serial {recorded.serial} (revoking "
                f"{', '.join(sorted(recorded.revoked))}); restore the file, or sign a newer list "
                "with fedlora provision revoke: a restart cannot undo a revocation"
            ) from None
        except OSError as exc:
            raise ConfigError(f"server.revocations: {self.path}: {exc.strerror}") from None
        try:
            self._accept(data)
        except VerificationError as exc:
            raise ConfigError(f"server.revocations: {exc}") from None
        return self.revoked

    def poll(self) -> tuple[frozenset[str], str | None]:
        """The revoked ids now, and an error text when a changed file was refused (once)."""
        if self.path is None or self.ca_cert is None:
            return self.revoked, None
        try:
            data = self.path.read_bytes()  # small: read on every call, compared by content
        except FileNotFoundError:
            return self.revoked, None
        except OSError as exc:
            return self.revoked, (
                f"revocation list {self.path}: {exc.strerror}; keeping the previous list"
            )
        if data == self._seen:
            return self.revoked, None
        try:
            self._accept(data)
        except (VerificationError, ConfigError) as exc:
            return self.revoked, f"{exc}; keeping the previous list"
        return self.revoked, None

    def _accept(self, data: bytes) -> None:
        assert self.path is not None and self.ca_cert is not None
        self._seen = data
        fresh = read_revocations(self.path, self.ca_cert, self.federation_id, data)
        if self.current is not None and fresh.serial < self.current.serial:
            raise VerificationError(
                f"revocation list {self.path} has serial {fresh.serial}, older than serial "
                f"{self.current.serial} already in force"
            )
        if self.current is not None and not self.current.revoked <= fresh.revoked:
            raise VerificationError(
                f"revocation list {self.path} reinstates "
                f"{sorted(self.current.revoked - fresh.revoked)}; revocation is final"
            )
        self.current = fresh
