"""Threshold Paillier with a trusted dealer, after Damgård and Jurik (PKC 2001, §4) with s = 1,
which is Shoup's threshold RSA technique (EUROCRYPT 2000) carried over to Paillier.

Key generation (dealer). ``n = p·q`` with safe primes ``p = 2p'+1``, ``q = 2q'+1``; ``m = p'q'``.
The decryption exponent ``d`` satisfies ``d ≡ 0 (mod m)`` and ``d ≡ 1 (mod n)``. It is shared with
a random polynomial ``f`` of degree ``t−1`` over ``Z_(n·m)`` with ``f(0) = d``: party ``i`` holds
``sᵢ = f(i)``. A random square ``v`` of ``Z*_(n²)`` and the verification keys ``vᵢ = v^(Δ·sᵢ)``
are public, ``Δ = ℓ!`` for ``ℓ`` parties.

Partial decryption. ``cᵢ = c^(2Δ·sᵢ) mod n²``.

Combination. For any set ``S`` of ``t`` parties, with Shoup's integer Lagrange coefficients
``λᵢ = Δ·∏_{j∈S∖i} j/(j−i)``:  ``∏ cᵢ^(2λᵢ) = c^(4Δ²·d) = (1+n)^(4Δ²·θ·M)`` with ``θ = d mod n``
(1 here), so ``M = L(∏ cᵢ^(2λᵢ)) · (4Δ²θ)⁻¹ mod n`` with ``L(u) = (u−1)/n``. A key generated
without a dealer (:mod:`fedlora.crypto._keygen`) shares another multiple of the group order,
with a public ``θ ≠ 1`` and integer shares that may be negative.

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
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2

from fedlora.crypto._backend import ModexpBackend
from fedlora.crypto._factory import multi_powmods, resolve_backend
from fedlora.crypto._paillier import ciphertext_vector_digest, validate_ciphertexts
from fedlora.crypto._shamir import integer_lagrange_at_zero
from fedlora.crypto._threshold_keys import MAX_PARTIES, KeyShare, ThresholdPublicKey
from fedlora.crypto._util import Rng, byte_length, require_int, require_sequence, system_rng
from fedlora.crypto._vector import CiphertextVector, pack_records
from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "DecryptionProof",
    "PartialDecryption",
    "combine_partial_decryptions",
    "combine_verified_partials",
    "partial_decrypt",
    "proof_response_bound",
    "ticket_quorum",
    "verify_partial_decryption",
]

_CHALLENGE_BITS = 256
_BATCH_WEIGHT_BYTES = 16  # ρⱼ of 128 bits: soundness error 2⁻¹²⁸ for the batch
_STATISTICAL_BITS = 128


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
    h.update(pack_records(values, w))
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
    h.update(pack_records(elements, w))
    return int.from_bytes(h.digest(), "big") >> (256 - _CHALLENGE_BITS)


def _batched_statement(
    key: ThresholdPublicKey,
    index: int,
    cts: Sequence[int],
    cts_digest: bytes,
    values: Sequence[int],
    backend: ModexpBackend | None,
) -> tuple[int, int]:
    """``(C⁴, Cᵢ²)`` for the random linear combination of the whole vector."""
    n2 = key.nsquare
    weights = _batch_weights(key, index, cts_digest, _values_digest(n2, values), len(cts))
    big_c, big_ci = multi_powmods([(cts, weights), (values, weights)], n2, backend)
    return int(gmpy2.powmod(big_c, 4, n2)), int(gmpy2.powmod(big_ci, 2, n2))


def _nonce_bits(key: ThresholdPublicKey) -> int:
    """Bits of the proof nonce, from the *public* bound on the secret exponent.

    The exponent is ``Δ·sᵢ`` with ``|sᵢ|`` below the key's public bound (``n·m < n²`` for a dealt
    key), so ``Δ·2^share_bits`` bounds it for every party. Sizing the nonce from the party's own
    ``sᵢ`` would make ``|z|`` reveal ``|sᵢ|``; with the public bound every party's ``z`` has the
    same distribution up to a statistical distance of 2⁻¹²⁸ (and is positive but with that
    probability, also for a negative share).
    """
    return key.delta.bit_length() + key.share_bound_bits + _CHALLENGE_BITS + _STATISTICAL_BITS


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
    ciphertexts: Sequence[int] | CiphertextVector,
    *,
    rng: Rng | None = None,
    backend: ModexpBackend | None = None,
) -> PartialDecryption:
    """Partially decrypt a ciphertext vector with one share, and prove it (see module docstring).

    Cost: one ``(|n²| + |Δ|)``-bit exponentiation per ciphertext on ``backend`` (``None``: the
    default, every core), plus one multi-exponentiation and two exponentiations for the batch
    proof. The exponentiations by the share and by the proof's nonce go to
    :meth:`~fedlora.crypto.ModexpBackend.powmod_bases_secret`.

    Raises:
        CryptoError: the share is for another key or party; a ciphertext is not in Z*_{n²}.
    """
    index = _check_share(key, share)
    cts = validate_ciphertexts(key.paillier, ciphertexts)
    if not cts:
        raise CryptoError("nothing to decrypt: the ciphertext vector is empty")
    n2 = key.nsquare
    secret = key.delta * share.secret
    engine = resolve_backend(backend)
    # Canonical: of x and −x (x·(n² − 1), both pass the proof, which checks squares) the smaller;
    # so one chunk has one valid answer, and a holder cannot sign two different ones.
    # A generated key's share may be negative: raise the inverses to its magnitude.
    bases = cts if secret >= 0 else [int(gmpy2.invert(c, n2)) for c in cts]
    values = [min(x, n2 - x) for x in engine.powmod_bases_secret(bases, 2 * abs(secret), n2)]
    cts_digest = ciphertext_vector_digest(key.paillier, cts)
    c4, ci2 = _batched_statement(key, index, cts, cts_digest, values, engine)
    r = system_rng(rng).getrandbits(_nonce_bits(key))
    a, b = engine.powmod_bases_secret([c4, key.v], r, n2)
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
    ciphertexts: Sequence[int] | CiphertextVector,
    partial: PartialDecryption,
    *,
    ciphertexts_digest: bytes | None = None,
    backend: ModexpBackend | None = None,
) -> None:
    """Check a party's partial decryption of ``ciphertexts``; return ``None`` or raise.

    Args:
        ciphertexts_digest: the vector's digest if already computed (saves a pass).
        backend: runs the proof's multi-exponentiations (``None``: the default backend).

    Raises:
        VerificationError: wrong key, wrong vector, a value outside Z*_{n²} or a failing proof;
            the message names the party.
    """
    pid = getattr(partial, "party_id", None)
    who = f"partial decryption from party {pid if pid is not None else '?'!r}"

    def blamed(message: str) -> VerificationError:
        return VerificationError(message, party=pid if isinstance(pid, str) else None)

    if not isinstance(partial, PartialDecryption):
        raise VerificationError(f"expected a PartialDecryption, got {type(partial).__name__}")
    if not hmac.compare_digest(partial.key_fingerprint, key.fingerprint):
        raise blamed(f"{who} was made for another key")
    try:
        index = key.index_of(partial.party_id)
    except CryptoError as exc:
        raise blamed(f"{who}: {exc}") from None
    if index != partial.index:
        raise blamed(f"{who} claims index {partial.index}, the key says {index}")
    digest = (
        ciphertext_vector_digest(key.paillier, ciphertexts)
        if ciphertexts_digest is None
        else ciphertexts_digest
    )
    if not hmac.compare_digest(partial.ciphertexts_digest, digest):
        raise blamed(f"{who} answers a different ciphertext vector")
    if len(partial.values) != len(ciphertexts):
        raise blamed(f"{who} has {len(partial.values)} values for {len(ciphertexts)} ciphertexts")
    try:
        values = validate_ciphertexts(key.paillier, partial.values)
    except CryptoError as exc:
        raise blamed(f"{who}: {exc}".replace("ciphertext[", "value[")) from None
    n2 = key.nsquare
    high = next((i for i, x in enumerate(values) if x > n2 // 2), None)
    if high is not None:
        raise blamed(
            f"{who}: value[{high}] is not canonical (above n²/2; the answer is its negation)"
        )
    e = require_int(
        "proof.challenge", partial.proof.challenge, low=0, high=(1 << _CHALLENGE_BITS) - 1
    )
    z = require_int("proof.response", partial.proof.response, low=0)
    if z >= proof_response_bound(key):
        raise blamed(
            f"{who}: proof response has {z.bit_length()} bits, above the bound of {_nonce_bits(key) + 1}"
        )
    c4, ci2 = _batched_statement(key, index, list(ciphertexts), digest, values, backend)
    vk = key.verification_keys[index - 1]
    a = gmpy2.powmod(c4, z, n2) * gmpy2.powmod(ci2, -e, n2) % n2
    b = gmpy2.powmod(key.v, z, n2) * gmpy2.powmod(vk, -e, n2) % n2
    if _challenge(key, index, key.v, c4, vk, ci2, a, b) != e:
        raise blamed(f"{who} failed its proof of correct decryption")


def combine_partial_decryptions(
    key: ThresholdPublicKey,
    ciphertexts: Sequence[int] | CiphertextVector,
    partials: Sequence[PartialDecryption],
    *,
    backend: ModexpBackend | None = None,
) -> list[int]:
    """Verify partial decryptions and combine ``t`` of them into the plaintexts.

    Every partial given is verified (so a cheating party is named even if enough honest ones
    are present); the ``t`` lowest-indexed are combined, with the exponentiations by the public
    Lagrange coefficients on ``backend`` (``None``: the default, every core).

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
            raise CryptoError(f"duplicate partial decryption from party {pid!r}", party=pid)
        seen.add(pid)  # type: ignore[arg-type]
    if len(partials) < key.threshold:
        raise CryptoError(
            f"need partial decryptions from {key.threshold} parties, got {len(partials)}"
        )
    digest = ciphertext_vector_digest(key.paillier, cts)
    engine = resolve_backend(backend)
    for partial in partials:
        verify_partial_decryption(key, cts, partial, ciphertexts_digest=digest, backend=engine)
    chosen = sorted(partials, key=lambda p: p.index)[: key.threshold]
    return _combine(key, chosen, engine)


def combine_verified_partials(
    key: ThresholdPublicKey,
    count: int,
    partials: Sequence[PartialDecryption],
    *,
    backend: ModexpBackend | None = None,
) -> list[int]:
    """Combine ``t`` partial decryptions of one vector of ``count`` ciphertexts that the caller
    has each checked with :func:`verify_partial_decryption` already (a coordinator verifies each
    chunk as it arrives and combines it later). Nothing here re-checks a proof: the guarantee
    that the plaintexts are right is the caller's verification.

    Raises:
        CryptoError: not exactly ``t`` distinct parties, values of the wrong count, or values
            that do not combine (the shares disagree).
    """
    if len({p.party_id for p in partials}) != len(partials) or len(partials) != key.threshold:
        raise CryptoError(f"need partial decryptions from exactly {key.threshold} distinct parties")
    if count < 1 or any(len(p.values) != count for p in partials):
        raise CryptoError(f"every partial decryption must have {count} values")
    return _combine(key, sorted(partials, key=lambda p: p.index), resolve_backend(backend))


def _combine(
    key: ThresholdPublicKey, chosen: Sequence[PartialDecryption], backend: ModexpBackend
) -> list[int]:
    """Lagrange combination in the exponent, without checks (tests use it to show t−1 fail)."""
    n, n2 = key.n, key.nsquare
    lambdas = integer_lagrange_at_zero([p.index for p in chosen], key.parties)
    acc: list[gmpy2.mpz] | None = None
    for partial in chosen:
        powered = backend.powmod_bases(partial.values, 2 * lambdas[partial.index], n2)
        if acc is None:
            acc = [gmpy2.mpz(x) for x in powered]
        else:
            acc = [a * x % n2 for a, x in zip(acc, powered)]
    assert acc is not None
    inv = gmpy2.invert(4 * key.delta * key.delta * key.theta, n)
    out = []
    for j, u in enumerate(acc):
        quotient, remainder = gmpy2.f_divmod(u - 1, n)
        if remainder:
            raise CryptoError(f"combined value {j} is not of the form 1 + k·n: the shares disagree")
        out.append(int(quotient * inv % n))
    return out
