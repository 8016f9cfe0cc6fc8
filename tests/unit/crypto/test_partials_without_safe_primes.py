"""A holder cheats with an element of small order, the deviation a partial-decryption proof cannot
see when the modulus has no safe primes (as a generated key's has not): the proof passes, and the
decrypted value is still never wrong (docs/cryptography.md, "Partial decryptions without safe
primes").

The key is built here the way the ceremony's is shaped — ``D = φ(N)`` shared by integer Shamir,
``θ = D mod N`` — but from primes chosen so that ``p − 1`` has the small factors 3 and 7: an
element of order 7 changes a combination (7 does not divide ``2λᵢ`` for ℓ = 3, Δ = 6), one of
order 3 is killed by it (3 divides Δ).
"""

from __future__ import annotations

import secrets

import gmpy2
import pytest

from fedlora.crypto import (
    KeyShare,
    PartialDecryption,
    ThresholdPublicKey,
    encrypt_batch,
    partial_decrypt,
    verify_partial_decryption,
)
from fedlora.crypto._threshold import _combine
from fedlora.errors import CryptoError, VerificationError

PARTIES = ("bank-a", "bank-b", "bank-c")
BITS = 256  # per prime


def _prime(multiple: int) -> int:
    """A prime p with ``multiple`` dividing p − 1 (not a safe prime)."""
    while True:
        k = secrets.randbits(BITS - multiple.bit_length()) | (
            1 << (BITS - multiple.bit_length() - 1)
        )
        p = multiple * k + 1
        if gmpy2.is_prime(p, 40):
            return p


def _key() -> tuple[ThresholdPublicKey, list[KeyShare], int]:
    """A 2-of-3 key over N = p·q with 42 | p − 1; returns the key, the shares and φ(N)."""
    while True:
        p, q = _prime(42), _prime(2)
        if gmpy2.gcd(q - 1, 42) != 2:  # keep 3 and 7 out of q − 1: the elements below live mod p
            continue
        n = p * q
        phi = (p - 1) * (q - 1)
        if gmpy2.gcd(n, phi) == 1:
            break
    n2, ell, t = n * n, len(PARTIES), 2
    delta = 6
    bound = 2 * n.bit_length() + 128
    coefficients = [phi] + [secrets.randbits(bound) for _ in range(t - 1)]
    secrets_ = [sum(c * x**k for k, c in enumerate(coefficients)) for x in range(1, ell + 1)]
    v = pow(secrets.randbelow(n2 - 2) + 2, 2, n2)
    key = ThresholdPublicKey(
        n=n,
        threshold=t,
        party_ids=PARTIES,
        v=v,
        verification_keys=tuple(pow(v, delta * s, n2) for s in secrets_),
        theta=phi % n,
        share_bits=bound + 8,
    )
    shares = [
        KeyShare(pid, i, s, key.fingerprint)
        for i, (pid, s) in enumerate(zip(PARTIES, secrets_), start=1)
    ]
    return key, shares, phi


def _element_of_order(order: int, key: ThresholdPublicKey, phi: int) -> int:
    """An element of prime ``order`` (which divides p − 1 and not q − 1): a random element raised to
    ``N·φ/order`` is 1 with probability 1/order, so a few tries find one."""
    n2 = key.nsquare
    for _ in range(64):
        u = pow(secrets.randbelow(n2 - 2) + 2, key.n * phi // order, n2)
        if u != 1:
            assert pow(u, order, n2) == 1
            return u
    raise AssertionError(f"no element of order {order}: does it divide p − 1?")


def _cheat(
    key: ThresholdPublicKey, share: KeyShare, cts: list[int], u: int, order: int
) -> PartialDecryption:
    """The cheater's partial: one value times a power of ``u``, with a proof made for the changed
    values. The proof passes when ``order`` divides ``w_j·e`` (the batch weight at the changed
    position times the challenge), both hash outputs: the cheater grinds positions and powers
    until it does (about two tries in ``order``), as it would grind a Fiat–Shamir challenge."""
    n2 = key.nsquare
    honest = partial_decrypt(key, share, cts)
    for j in range(len(cts)):
        for k in range(1, order):
            x = honest.values[j] * pow(u, k, n2) % n2
            values = list(honest.values)
            values[j] = min(x, n2 - x)
            forged = _reprove(key, share, cts, tuple(values))
            try:
                verify_partial_decryption(key, cts, forged)
            except VerificationError:
                continue
            return forged
    raise AssertionError("no passing proof: try more ciphertexts")


def _reprove(
    key: ThresholdPublicKey, share: KeyShare, cts: list[int], values: tuple[int, ...]
) -> PartialDecryption:
    """partial_decrypt's proof, over values the prover chose (the prover knows its share)."""
    from fedlora.crypto._threshold import (
        DecryptionProof,
        _batched_statement,
        _challenge,
        _nonce_bits,
        ciphertext_vector_digest,
    )

    n2 = key.nsquare
    secret = key.delta * share.secret
    digest = ciphertext_vector_digest(key.paillier, cts)
    c4, ci2 = _batched_statement(key, share.index, cts, digest, values, None)
    r = secrets.randbits(_nonce_bits(key))
    a, b = pow(c4, r, n2), pow(key.v, r, n2)
    vk = key.verification_keys[share.index - 1]
    e = _challenge(key, share.index, key.v, c4, vk, ci2, a, b)
    return PartialDecryption(
        share.party_id,
        share.index,
        key.fingerprint,
        digest,
        values,
        DecryptionProof(e, r + e * secret),
    )


@pytest.fixture(scope="module")
def setup() -> tuple[ThresholdPublicKey, list[KeyShare], int, list[int], list[int]]:
    key, shares, phi = _key()
    messages = [secrets.randbelow(1 << 64) for _ in range(16)]
    return key, shares, phi, messages, encrypt_batch(key.paillier, messages)


def test_a_key_without_safe_primes_decrypts(setup) -> None:  # type: ignore[no-untyped-def]
    key, shares, _, messages, cts = setup
    for pair in ((0, 1), (0, 2), (1, 2)):
        partials = [partial_decrypt(key, shares[i], cts) for i in pair]
        for partial in partials:
            verify_partial_decryption(key, cts, partial)
        assert _combine(key, partials, _backend()) == messages


def test_a_small_order_deviation_passes_the_proof_but_never_changes_a_value(setup) -> None:  # type: ignore[no-untyped-def]
    key, shares, phi, messages, cts = setup
    honest_a = partial_decrypt(key, shares[0], cts)
    # Attack: bank-b multiplies its answer for ciphertext 0 by an element of order 7, and finds a
    # proof that passes (the proof is sound only up to such elements).
    forged = _cheat(key, shares[1], cts, _element_of_order(7, key, phi), 7)
    verify_partial_decryption(key, cts, forged)  # the proof cannot see it
    assert forged.values != partial_decrypt(key, shares[1], cts).values
    # Combination refuses it: the product leaves the subgroup of order N; no wrong value comes out.
    with pytest.raises(CryptoError, match="not of the form 1 \\+ k·n"):
        _combine(key, [honest_a, forged], _backend())
    # The other holders' subset decrypts it right: the coordinator's route around the cheater.
    honest_c = partial_decrypt(key, shares[2], cts)
    assert _combine(key, [honest_a, honest_c], _backend()) == messages
    # An element whose order divides Δ (3 here) is killed by 2λᵢ: the value is the right one.
    harmless = _cheat(key, shares[1], cts, _element_of_order(3, key, phi), 3)
    assert _combine(key, [honest_a, harmless], _backend()) == messages


def _backend():  # type: ignore[no-untyped-def]
    from fedlora.crypto._factory import resolve_backend

    return resolve_backend(None)
