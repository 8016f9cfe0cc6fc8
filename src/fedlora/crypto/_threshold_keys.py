"""Threshold Paillier key material: the public key, key shares and their file formats.

The math is in :mod:`fedlora.crypto._threshold` (decryption and proofs) and
:mod:`fedlora.crypto._dealer` (dealing); this module holds the types that travel and rest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import gmpy2
from phe import PaillierPublicKey

from fedlora.crypto._util import byte_length, require_bytes, require_int, require_sequence
from fedlora.errors import CryptoError

__all__ = ["MAX_PARTIES", "DealtKey", "KeyShare", "ThresholdPublicKey", "check_party_ids"]

MAX_PARTIES = 128  # Δ = ℓ! grows fast; 128! has 716 bits, still cheap in the exponents
_PARTY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FORMAT = "fedlora-threshold-paillier/1"


def check_party_ids(party_ids: Sequence[str]) -> tuple[str, ...]:
    ids = tuple(require_sequence("party_ids", party_ids))
    if not 1 <= len(ids) <= MAX_PARTIES:
        raise CryptoError(f"parties must number 1..{MAX_PARTIES}, got {len(ids)}")
    for pid in ids:
        if not isinstance(pid, str) or not _PARTY_ID.match(pid):
            raise CryptoError(
                f"party id {pid!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )
    if len(set(ids)) != len(ids):
        raise CryptoError("party ids must be distinct")
    return ids


@dataclass(frozen=True)
class ThresholdPublicKey:
    """Everything public about a dealt threshold key.

    Attributes:
        n: the Paillier modulus (product of two safe primes).
        threshold: t, the number of partial decryptions needed; 1 ≤ t ≤ len(party_ids).
        party_ids: party ``party_ids[i-1]`` holds share index ``i``.
        v: a random square generating the squares of Z*_{n²} (with overwhelming probability).
        verification_keys: ``vᵢ = v^(Δ·sᵢ) mod n²`` in party order.
        theta: ``θ = D mod n`` for the shared exponent ``D`` (``D ≡ 0`` modulo the order of
            every ``rⁿ``): the combination divides by ``4Δ²θ``. A dealt key shares ``d ≡ 1
            (mod n)``, so ``θ = 1``; a generated key (:mod:`fedlora.crypto._keygen`) another.
        share_bits: a public bound on ``|sᵢ|`` in bits (0: ``2·|n|``, a dealt key's), which
            sizes the proofs' nonces so that a response does not reveal a share's size.
    """

    n: int
    threshold: int
    party_ids: tuple[str, ...]
    v: int
    verification_keys: tuple[int, ...]
    theta: int = 1
    share_bits: int = 0

    def __post_init__(self) -> None:
        n = require_int("n", self.n, low=3)
        if n.bit_length() < 64 or n % 2 == 0:
            raise CryptoError("n must be an odd modulus of at least 64 bits")
        ids = check_party_ids(self.party_ids)
        object.__setattr__(self, "party_ids", ids)
        require_int("threshold", self.threshold, low=1, high=len(ids))
        n2 = n * n
        require_sequence("verification_keys", self.verification_keys)
        for name, value in [
            ("v", self.v),
            *(("verification_keys", x) for x in self.verification_keys),
        ]:
            x = require_int(name, value)
            if not 0 < x < n2 or gmpy2.gcd(x, n) != 1:
                raise CryptoError(f"{name} is not in Z*_(n²)")
        if len(self.verification_keys) != len(ids):
            raise CryptoError(
                f"verification_keys must number {len(ids)} (one per party), got {len(self.verification_keys)}"
            )
        object.__setattr__(self, "verification_keys", tuple(int(x) for x in self.verification_keys))
        theta = require_int("theta", self.theta, low=1, high=n - 1)
        if gmpy2.gcd(theta, n) != 1:
            raise CryptoError("theta must be invertible modulo n")
        require_int("share_bits", self.share_bits, low=0, high=1 << 16)

    @property
    def share_bound_bits(self) -> int:
        """Bits that bound every share's absolute value (see ``share_bits``)."""
        return self.share_bits or 2 * self.n.bit_length()

    @property
    def parties(self) -> int:
        """ℓ, the number of shares dealt."""
        return len(self.party_ids)

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def delta(self) -> int:
        """Δ = ℓ!."""
        return math.factorial(self.parties)

    @cached_property
    def paillier(self) -> PaillierPublicKey:
        """The same key as a phe public key, for encryption."""
        return PaillierPublicKey(self.n)

    @cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical encoding: binds n, t, the parties, v and every vᵢ."""
        return hashlib.sha256(b"fedlora/threshold-key/v1\x00" + self._canonical()).digest()

    def _canonical(self) -> bytes:
        w = byte_length(self.nsquare)
        parts = [
            len(self.n.to_bytes(byte_length(self.n), "big")).to_bytes(4, "big"),
            self.n.to_bytes(byte_length(self.n), "big"),
            self.threshold.to_bytes(4, "big"),
            len(self.party_ids).to_bytes(4, "big"),
        ]
        for pid in self.party_ids:
            raw = pid.encode()
            parts += [len(raw).to_bytes(2, "big"), raw]
        parts.append(self.v.to_bytes(w, "big"))
        parts += [x.to_bytes(w, "big") for x in self.verification_keys]
        if self.theta != 1 or self.share_bits:  # a dealt key's encoding is unchanged
            parts += [b"theta", self.theta.to_bytes(w, "big"), self.share_bits.to_bytes(4, "big")]
        return b"".join(parts)

    def index_of(self, party_id: str) -> int:
        """Share index (1-based) of ``party_id``.

        Raises:
            CryptoError: the party is not part of this key.
        """
        try:
            return self.party_ids.index(party_id) + 1
        except ValueError:
            raise CryptoError(f"party {party_id!r} holds no share of this key") from None

    def to_json(self) -> bytes:
        """The public key file: JSON with big integers as hex strings."""
        doc = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint.hex(),
            "n": format(self.n, "x"),
            "threshold": self.threshold,
            "party_ids": list(self.party_ids),
            "v": format(self.v, "x"),
            "verification_keys": [format(x, "x") for x in self.verification_keys],
        }
        if self.theta != 1 or self.share_bits:
            doc["theta"], doc["share_bits"] = format(self.theta, "x"), self.share_bits
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ThresholdPublicKey:
        """Parse and fully validate a public key file.

        Raises:
            CryptoError: malformed JSON, a missing or mistyped field, or a fingerprint that does
                not match the contents (a tampered or corrupted file).
        """
        try:
            doc = json.loads(require_bytes("public key file", data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CryptoError(
                f"public key file is not valid JSON: {exc.msg if hasattr(exc, 'msg') else exc}"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise CryptoError(f"public key file must have format {_FORMAT!r}")
        try:
            key = cls(
                n=_hex_int(doc, "n"),
                threshold=doc["threshold"],
                party_ids=tuple(doc["party_ids"]),
                v=_hex_int(doc, "v"),
                verification_keys=tuple(
                    _hex(x, "verification_keys") for x in doc["verification_keys"]
                ),
                theta=_hex_int(doc, "theta") if "theta" in doc else 1,
                share_bits=doc.get("share_bits", 0),
            )
        except KeyError as exc:
            raise CryptoError(f"public key file lacks field {exc.args[0]!r}") from None
        except TypeError:
            raise CryptoError("public key file has a field of the wrong type") from None
        claimed = doc.get("fingerprint")
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed, key.fingerprint.hex()):
            raise CryptoError("public key file fingerprint does not match its contents")
        return key


def _hex(value: object, name: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]+", value):
        raise CryptoError(f"field {name!r} must be a lowercase hex string")
    return int(value, 16)


def _hex_int(doc: dict[str, object], name: str) -> int:
    return _hex(doc[name], name)


@dataclass(frozen=True, repr=False)
class KeyShare:
    """Party ``index``'s share ``sᵢ`` of the decryption exponent. Secret: never logged or sent."""

    party_id: str
    index: int
    secret: int = field(repr=False)
    key_fingerprint: bytes

    def __repr__(self) -> str:
        return f"KeyShare(party_id={self.party_id!r}, index={self.index}, secret=<hidden>)"

    def to_bytes(self) -> bytes:
        """Plaintext serialization, only ever stored encrypted (see :func:`seal_key_share`).
        A generated key's share may be negative (``FLKSN``: the magnitude follows)."""
        pid = self.party_id.encode()
        magnitude = abs(self.secret)
        secret = magnitude.to_bytes(byte_length(magnitude) or 1, "big")
        return b"".join(
            [
                b"FLKS1" if self.secret >= 0 else b"FLKSN",
                len(pid).to_bytes(2, "big"),
                pid,
                self.index.to_bytes(4, "big"),
                require_bytes("key_fingerprint", self.key_fingerprint, length=32),
                len(secret).to_bytes(4, "big"),
                secret,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CryptoError: truncated or malformed data.
        """
        data = require_bytes("key share", data)
        try:
            if data[:5] not in (b"FLKS1", b"FLKSN"):
                raise ValueError
            sign = -1 if data[:5] == b"FLKSN" else 1
            pos = 5
            plen = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            pid = data[pos : pos + plen].decode()
            pos += plen
            index = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
            fp = data[pos : pos + 32]
            pos += 32
            slen = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
            secret = data[pos : pos + slen]
            if len(fp) != 32 or len(secret) != slen or slen == 0 or pos + slen != len(data):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise CryptoError("key share bytes are truncated or malformed") from None
        return cls(pid, index, sign * int.from_bytes(secret, "big"), fp)


@dataclass(frozen=True)
class DealtKey:
    """The dealer's output: one public key and one share per party, in party order."""

    public_key: ThresholdPublicKey
    shares: tuple[KeyShare, ...]
