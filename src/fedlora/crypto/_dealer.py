"""The trusted dealer (DJ 2001 §4.1): safe primes in, a threshold public key and shares out.

The ceremony that calls it (``fedlora keys deal``) seals each share to its party and erases the
rest; distributed key generation without a dealer would live beside this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gmpy2

from fedlora.crypto._primes import generate_safe_prime, generate_safe_prime_pair, require_safe_prime
from fedlora.crypto._shamir import evaluate_polynomial
from fedlora.crypto._threshold_keys import (
    DealtKey,
    KeyShare,
    ThresholdPublicKey,
    check_party_ids,
)
from fedlora.crypto._util import Rng, require_int, system_rng
from fedlora.errors import CryptoError

__all__ = ["deal_threshold_key", "generate_threshold_key"]


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
    ids = check_party_ids(party_ids)
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
        workers: threads for the prime search (default: every core). Ignored when ``rng`` is
            given: a seeded search runs on the calling thread so it is reproducible.

    Raises:
        CryptoError: invalid sizes, threshold or party ids.
    """
    bits = require_int("bits", bits, low=128, high=16384)
    if bits % 2:
        raise CryptoError("bits must be even")
    check_party_ids(party_ids)
    if rng is None:
        p, q = generate_safe_prime_pair(bits // 2, workers=workers)
    else:
        p = generate_safe_prime(bits // 2, rng=rng)
        q = generate_safe_prime(bits // 2, rng=rng)
        while q == p:
            q = generate_safe_prime(bits // 2, rng=rng)
    return deal_threshold_key(p, q, threshold, party_ids, rng=rng)
