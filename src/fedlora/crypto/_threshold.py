"""Threshold Paillier with a trusted dealer, after Damgård and Jurik (PKC 2001, §4) with s = 1,
which is Shoup's threshold RSA technique (EUROCRYPT 2000) carried over to Paillier.

Key generation (dealer). ``n = p·q`` with safe primes ``p = 2p'+1``, ``q = 2q'+1``; ``m = p'q'``.
The decryption exponent ``d`` satisfies ``d ≡ 0 (mod m)`` and ``d ≡ 1 (mod n)``. It is shared with
a random polynomial ``f`` of degree ``t−1`` over ``Z_(n·m)`` with ``f(0) = d``: party ``i`` holds
``sᵢ = f(i)``. A random square ``v`` of ``Z*_(n²)`` and the verification keys ``vᵢ = v^(Δ·sᵢ)``
are public, ``Δ = ℓ!`` for ``ℓ`` parties.

Partial decryption. ``cᵢ = c^(2Δ·sᵢ) mod n²``.

Combination. For any set ``S`` of ``t`` parties, with Shoup's integer Lagrange coefficients
``λᵢ = Δ·∏_{j∈S∖i} j/(j−i)``:  ``∏ cᵢ^(2λᵢ) = c^(4Δ²·d) = (1+n)^(4Δ²·M)``, so
``M = L(∏ cᵢ^(2λᵢ)) · (4Δ²)⁻¹ mod n`` with ``L(u) = (u−1)/n``.

Proof of correct partial decryption. Party ``i`` proves ``log_{c⁴}(cᵢ²) = log_v(vᵢ)`` (= Δ·sᵢ)
with the Chaum–Pedersen-style protocol of Shoup §2.3, made non-interactive with Fiat–Shamir over
SHA-256. A vector of N ciphertexts gets *one* proof: the Fiat–Shamir hash of the whole vector and
all N answers seeds 128-bit weights ρⱼ, and the party proves the statement for
``C = ∏ cⱼ^ρⱼ`` and ``Cᵢ = ∏ cᵢⱼ^ρⱼ`` (the small-exponent batch test of Bellare, Garay and Rabin,
EUROCRYPT 1998). A wrong answer in any slot makes ``Cᵢ`` wrong except with probability ~2⁻¹²⁸,
so the proof costs two exponentiations instead of 2N, and checking it one multi-exponentiation.
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

from fedlora.crypto._paillier import ciphertext_vector_digest, validate_ciphertexts
from fedlora.crypto._parallel import multi_powmod, powmod_bases
from fedlora.crypto._primes import generate_safe_prime, generate_safe_prime_pair, require_safe_prime
from fedlora.crypto._shamir import evaluate_polynomial, integer_lagrange_at_zero
from fedlora.crypto._util import (
    Rng,
    byte_length,
    require_bytes,
    require_int,
    require_sequence,
    system_rng,
)
from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "MAX_PARTIES",
    "DealtKey",
    "DecryptionProof",
    "KeyShare",
    "PartialDecryption",
    "ThresholdPublicKey",
    "combine_partial_decryptions",
    "deal_threshold_key",
    "generate_threshold_key",
    "partial_decrypt",
    "proof_response_bound",
    "ticket_quorum",
    "verify_partial_decryption",
]

MAX_PARTIES = 128  # Δ = ℓ! grows fast; 128! has 716 bits, still cheap in the exponents
_PARTY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHALLENGE_BITS = 256
_BATCH_WEIGHT_BYTES = 16  # ρⱼ of 128 bits: soundness error 2⁻¹²⁸ for the batch
_STATISTICAL_BITS = 128
_FORMAT = "fedlora-threshold-paillier/1"


def _check_party_ids(party_ids: Sequence[str]) -> tuple[str, ...]:
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
    """

    n: int
    threshold: int
    party_ids: tuple[str, ...]
    v: int
    verification_keys: tuple[int, ...]

    def __post_init__(self) -> None:
        n = require_int("n", self.n, low=3)
        if n.bit_length() < 64 or n % 2 == 0:
            raise CryptoError("n must be an odd modulus of at least 64 bits")
        ids = _check_party_ids(self.party_ids)
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
        """Plaintext serialization, only ever stored encrypted (see :func:`seal_key_share`)."""
        pid = self.party_id.encode()
        secret = self.secret.to_bytes(byte_length(self.secret) or 1, "big")
        return b"".join(
            [
                b"FLKS1",
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
            if data[:5] != b"FLKS1":
                raise ValueError
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
        return cls(pid, index, int.from_bytes(secret, "big"), fp)


@dataclass(frozen=True)
class DealtKey:
    """The dealer's output: one public key and one share per party, in party order."""

    public_key: ThresholdPublicKey
    shares: tuple[KeyShare, ...]


def deal_threshold_key(
    p: int, q: int, threshold: int, party_ids: Sequence[str], *, rng: Rng | None = None
) -> DealtKey:
    """Deal a ``threshold``-of-``len(party_ids)`` key from two safe primes (DJ 2001 §4.1).

    The caller (the ceremony) must erase ``p``, ``q`` and every share it does not hand out.

    Raises:
        CryptoError: ``p`` or ``q`` not a safe prime, ``p == q``, bad threshold or party ids.
    """
    p = require_safe_prime("p", p)
    q = require_safe_prime("q", q)
    if p == q:
        raise CryptoError("p and q must be distinct")
    ids = _check_party_ids(party_ids)
    threshold = require_int("threshold", threshold, low=1, high=len(ids))
    pp, qq = (p - 1) // 2, (q - 1) // 2
    if len(ids) >= min(pp, qq):
        raise CryptoError("more parties than the key's primes allow")
    source = system_rng(rng)
    n, m = p * q, pp * qq
    nm, n2 = n * m, n * n
    d = m * int(gmpy2.invert(m, n)) % nm  # d ≡ 0 (mod m), d ≡ 1 (mod n)
    coefficients = [d] + [source.randrange(nm) for _ in range(threshold - 1)]
    secrets_ = [evaluate_polynomial(coefficients, i, nm) for i in range(1, len(ids) + 1)]
    while True:
        r = source.randrange(2, n2)
        if gmpy2.gcd(r, n) == 1:
            break
    v = int(gmpy2.powmod(r, 2, n2))
    delta = math.factorial(len(ids))
    vks = tuple(int(gmpy2.powmod(v, delta * s, n2)) for s in secrets_)
    public = ThresholdPublicKey(n=n, threshold=threshold, party_ids=ids, v=v, verification_keys=vks)
    shares = tuple(
        KeyShare(pid, i + 1, s, public.fingerprint) for i, (pid, s) in enumerate(zip(ids, secrets_))
    )
    del coefficients, d, secrets_
    return DealtKey(public, shares)


def generate_threshold_key(
    bits: int,
    threshold: int,
    party_ids: Sequence[str],
    *,
    workers: int | None = None,
    rng: Rng | None = None,
) -> DealtKey:
    """Generate safe primes for a ``bits``-bit modulus and deal a threshold key.

    Args:
        bits: modulus size; 2048 is the production default, 3072 for long-lived keys; tests use
            512. Must be even, ≥ 128.
        workers: processes for the prime search (default: every core). Ignored when ``rng`` is
            given: a seeded search runs in-process so it is reproducible.

    Raises:
        CryptoError: invalid sizes, threshold or party ids.
    """
    bits = require_int("bits", bits, low=128, high=16384)
    if bits % 2:
        raise CryptoError("bits must be even")
    _check_party_ids(party_ids)
    if rng is None:
        p, q = generate_safe_prime_pair(bits // 2, workers=workers)
    else:
        p = generate_safe_prime(bits // 2, rng=rng)
        q = generate_safe_prime(bits // 2, rng=rng)
        while q == p:
            q = generate_safe_prime(bits // 2, rng=rng)
    return deal_threshold_key(p, q, threshold, party_ids, rng=rng)


@dataclass(frozen=True)
class DecryptionProof:
    """Fiat–Shamir proof ``(e, z)`` that a batch of partial decryptions used the party's share."""

    challenge: int
    response: int


@dataclass(frozen=True, repr=False)
class PartialDecryption:
    """Party ``index``'s answers ``cⱼ^(2Δsᵢ)`` for one ciphertext vector, with one batch proof."""

    party_id: str
    index: int
    key_fingerprint: bytes
    ciphertexts_digest: bytes
    values: tuple[int, ...]
    proof: DecryptionProof

    def __repr__(self) -> str:
        return f"PartialDecryption(party_id={self.party_id!r}, index={self.index}, slots={len(self.values)})"


def _values_digest(n2: int, values: Sequence[int]) -> bytes:
    w = byte_length(n2)
    h = hashlib.sha256(b"fedlora/partial-values/v1\x00")
    h.update(len(values).to_bytes(8, "big"))
    for x in values:
        h.update(int(x).to_bytes(w, "big"))
    return h.digest()


def _batch_weights(
    key: ThresholdPublicKey, index: int, cts_digest: bytes, values_digest: bytes, count: int
) -> list[bytes]:
    seed = hashlib.sha256(
        b"fedlora/batch-weights/v1\x00"
        + key.fingerprint
        + index.to_bytes(4, "big")
        + cts_digest
        + values_digest
    ).digest()
    stream = hashlib.shake_256(seed).digest(_BATCH_WEIGHT_BYTES * count)
    return [stream[j : j + _BATCH_WEIGHT_BYTES] for j in range(0, len(stream), _BATCH_WEIGHT_BYTES)]


def _challenge(key: ThresholdPublicKey, index: int, *elements: int) -> int:
    w = byte_length(key.nsquare)
    h = hashlib.sha256(
        b"fedlora/decryption-proof/v1\x00" + key.fingerprint + index.to_bytes(4, "big")
    )
    for x in elements:
        h.update(int(x).to_bytes(w, "big"))
    return int.from_bytes(h.digest(), "big") >> (256 - _CHALLENGE_BITS)


def _batched_statement(
    key: ThresholdPublicKey,
    index: int,
    cts: Sequence[int],
    cts_digest: bytes,
    values: Sequence[int],
) -> tuple[int, int]:
    """``(C⁴, Cᵢ²)`` for the random linear combination of the whole vector."""
    n2 = key.nsquare
    weights = _batch_weights(key, index, cts_digest, _values_digest(n2, values), len(cts))
    big_c = multi_powmod(cts, weights, n2)
    big_ci = multi_powmod(values, weights, n2)
    return int(gmpy2.powmod(big_c, 4, n2)), int(gmpy2.powmod(big_ci, 2, n2))


def _nonce_bits(key: ThresholdPublicKey) -> int:
    """Bits of the proof nonce, from the *public* bound on the secret exponent.

    The exponent is ``Δ·sᵢ`` with ``sᵢ < n·m < n²``, so ``Δ·n²`` bounds it for every party. Sizing
    the nonce from the party's own ``sᵢ`` would make ``|z|`` reveal ``|sᵢ|``; with the public bound
    every party's ``z`` has the same distribution up to a statistical distance of 2⁻¹²⁸.
    """
    return key.delta.bit_length() + 2 * key.n.bit_length() + _CHALLENGE_BITS + _STATISTICAL_BITS


def proof_response_bound(key: ThresholdPublicKey) -> int:
    """Exclusive upper bound on an honest proof response ``z = r + e·Δ·sᵢ``: ``2^(nonce bits + 1)``.

    Anything at or above it is rejected before any exponentiation, so a hostile ``z`` of a
    million bits costs nothing to refuse.
    """
    return 1 << (_nonce_bits(key) + 1)


def ticket_quorum(parties: int, threshold: int) -> int:
    """Smallest safe quorum of ticket signatures: ``⌈(ℓ + t)/2⌉`` for ``ℓ`` share holders.

    Two quorums of this size share at least ``2q − ℓ ≥ t`` holders, so with at most ``t − 1``
    holders colluding with the coordinator they share an honest one, who signs one ticket per
    round: two different aggregates of one round can never both be released.

    Raises:
        CryptoError: ``threshold`` outside ``1..parties``.
    """
    parties = require_int("parties", parties, low=1, high=MAX_PARTIES)
    threshold = require_int("threshold", threshold, low=1, high=parties)
    return (parties + threshold + 1) // 2


def _check_share(key: ThresholdPublicKey, share: KeyShare) -> int:
    if not isinstance(share, KeyShare):
        raise CryptoError(f"share must be a KeyShare, got {type(share).__name__}")
    if not hmac.compare_digest(share.key_fingerprint, key.fingerprint):
        raise CryptoError(
            f"share of party {share.party_id!r} belongs to another key "
            f"(fingerprint {share.key_fingerprint.hex()[:16]}…, expected {key.fingerprint.hex()[:16]}…)"
        )
    index = key.index_of(share.party_id)
    if index != share.index:
        raise CryptoError(
            f"share of party {share.party_id!r} has index {share.index}, the key says {index}"
        )
    return index


def partial_decrypt(
    key: ThresholdPublicKey,
    share: KeyShare,
    ciphertexts: Sequence[int],
    *,
    rng: Rng | None = None,
    workers: int | None = None,
) -> PartialDecryption:
    """Partially decrypt a ciphertext vector with one share, and prove it (see module docstring).

    Cost: one ``(|n²| + |Δ|)``-bit exponentiation per ciphertext on all cores, plus one
    multi-exponentiation and two exponentiations for the batch proof.

    Raises:
        CryptoError: the share is for another key or party; a ciphertext is not in Z*_{n²}.
    """
    index = _check_share(key, share)
    cts = validate_ciphertexts(key.paillier, ciphertexts)
    if not cts:
        raise CryptoError("nothing to decrypt: the ciphertext vector is empty")
    n2 = key.nsquare
    secret = key.delta * share.secret
    values = powmod_bases(cts, 2 * secret, n2, workers)
    cts_digest = ciphertext_vector_digest(key.paillier, cts)
    c4, ci2 = _batched_statement(key, index, cts, cts_digest, values)
    r = system_rng(rng).getrandbits(_nonce_bits(key))
    a = gmpy2.powmod(c4, r, n2)
    b = gmpy2.powmod(key.v, r, n2)
    vk = key.verification_keys[index - 1]
    e = _challenge(key, index, key.v, c4, vk, ci2, a, b)
    z = r + e * secret
    return PartialDecryption(
        party_id=share.party_id,
        index=index,
        key_fingerprint=key.fingerprint,
        ciphertexts_digest=cts_digest,
        values=tuple(values),
        proof=DecryptionProof(e, z),
    )


def verify_partial_decryption(
    key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partial: PartialDecryption,
    *,
    ciphertexts_digest: bytes | None = None,
) -> None:
    """Check a party's partial decryption of ``ciphertexts``; return ``None`` or raise.

    Args:
        ciphertexts_digest: the vector's digest if already computed (saves a pass).

    Raises:
        VerificationError: wrong key, wrong vector, a value outside Z*_{n²} or a failing proof;
            the message names the party.
    """
    who = f"partial decryption from party {getattr(partial, 'party_id', '?')!r}"
    if not isinstance(partial, PartialDecryption):
        raise VerificationError(f"expected a PartialDecryption, got {type(partial).__name__}")
    if not hmac.compare_digest(partial.key_fingerprint, key.fingerprint):
        raise VerificationError(f"{who} was made for another key")
    try:
        index = key.index_of(partial.party_id)
    except CryptoError as exc:
        raise VerificationError(f"{who}: {exc}") from None
    if index != partial.index:
        raise VerificationError(f"{who} claims index {partial.index}, the key says {index}")
    digest = (
        ciphertext_vector_digest(key.paillier, ciphertexts)
        if ciphertexts_digest is None
        else ciphertexts_digest
    )
    if not hmac.compare_digest(partial.ciphertexts_digest, digest):
        raise VerificationError(f"{who} answers a different ciphertext vector")
    if len(partial.values) != len(ciphertexts):
        raise VerificationError(
            f"{who} has {len(partial.values)} values for {len(ciphertexts)} ciphertexts"
        )
    try:
        values = validate_ciphertexts(key.paillier, partial.values)
    except CryptoError as exc:
        raise VerificationError(f"{who}: {exc}".replace("ciphertext[", "value[")) from None
    e = require_int(
        "proof.challenge", partial.proof.challenge, low=0, high=(1 << _CHALLENGE_BITS) - 1
    )
    z = require_int("proof.response", partial.proof.response, low=0)
    if z >= proof_response_bound(key):
        raise VerificationError(
            f"{who}: proof response has {z.bit_length()} bits, above the bound of {_nonce_bits(key) + 1}"
        )
    n2 = key.nsquare
    c4, ci2 = _batched_statement(key, index, list(ciphertexts), digest, values)
    vk = key.verification_keys[index - 1]
    a = gmpy2.powmod(c4, z, n2) * gmpy2.powmod(ci2, -e, n2) % n2
    b = gmpy2.powmod(key.v, z, n2) * gmpy2.powmod(vk, -e, n2) % n2
    if _challenge(key, index, key.v, c4, vk, ci2, a, b) != e:
        raise VerificationError(f"{who} failed its proof of correct decryption")


def combine_partial_decryptions(
    key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partials: Sequence[PartialDecryption],
    *,
    workers: int | None = None,
) -> list[int]:
    """Verify partial decryptions and combine ``t`` of them into the plaintexts.

    Every partial given is verified (so a cheating party is named even if enough honest ones
    are present); the ``t`` lowest-indexed are combined.

    Raises:
        CryptoError: fewer than ``t`` partials, the same party twice, or an empty vector.
        VerificationError: a partial fails verification; the message names its party.
    """
    cts = validate_ciphertexts(key.paillier, ciphertexts)
    if not cts:
        raise CryptoError("nothing to combine: the ciphertext vector is empty")
    seen: set[str] = set()
    for partial in require_sequence("partials", partials):
        pid = getattr(partial, "party_id", None)
        if pid in seen:
            raise CryptoError(f"duplicate partial decryption from party {pid!r}")
        seen.add(pid)  # type: ignore[arg-type]
    if len(partials) < key.threshold:
        raise CryptoError(
            f"need partial decryptions from {key.threshold} parties, got {len(partials)}"
        )
    digest = ciphertext_vector_digest(key.paillier, cts)
    for partial in partials:
        verify_partial_decryption(key, cts, partial, ciphertexts_digest=digest)
    chosen = sorted(partials, key=lambda p: p.index)[: key.threshold]
    return _combine(key, chosen, workers)


def _combine(
    key: ThresholdPublicKey, chosen: Sequence[PartialDecryption], workers: int | None
) -> list[int]:
    """Lagrange combination in the exponent, without checks (tests use it to show t−1 fail)."""
    n, n2 = key.n, key.nsquare
    lambdas = integer_lagrange_at_zero([p.index for p in chosen], key.parties)
    acc: list[gmpy2.mpz] | None = None
    for partial in chosen:
        powered = powmod_bases(partial.values, 2 * lambdas[partial.index], n2, workers)
        if acc is None:
            acc = [gmpy2.mpz(x) for x in powered]
        else:
            acc = [a * x % n2 for a, x in zip(acc, powered)]
    assert acc is not None
    inv = gmpy2.invert(4 * key.delta * key.delta, n)
    out = []
    for j, u in enumerate(acc):
        quotient, remainder = gmpy2.f_divmod(u - 1, n)
        if remainder:
            raise CryptoError(f"combined value {j} is not of the form 1 + k·n: the shares disagree")
        out.append(int(quotient * inv % n))
    return out
