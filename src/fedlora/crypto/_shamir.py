"""Shamir secret sharing (Shamir, "How to share a secret", CACM 1979).

Two forms live here:

* over a prime field ``GF(p)``: :func:`split_secret` / :func:`recover_secret`, the textbook scheme;
* over the ring ``Z_(n·m)`` of threshold Paillier, whose modulus is *not* prime, so Lagrange
  interpolation cannot divide. Shoup's trick (Shoup 2000, §3) multiplies every coefficient by
  ``Δ = ℓ!``, which makes them integers: :func:`integer_lagrange_at_zero`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import gmpy2

from fedlora.crypto._util import Rng, require_int, require_sequence, system_rng
from fedlora.errors import CryptoError

__all__ = [
    "ShamirShare",
    "evaluate_polynomial",
    "integer_lagrange_at_zero",
    "recover_secret",
    "split_secret",
]


@dataclass(frozen=True, repr=False)
class ShamirShare:
    """One share ``(x, f(x))``; ``x ≥ 1``. The value is kept out of ``repr``."""

    x: int
    value: int

    def __repr__(self) -> str:
        return f"ShamirShare(x={self.x}, value=<hidden>)"


def evaluate_polynomial(coefficients: Sequence[int], x: int, modulus: int) -> int:
    """``Σ coefficients[i]·xⁱ mod modulus`` by Horner's rule."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % modulus
    return acc


def split_secret(
    secret: int, threshold: int, parties: int, prime: int, *, rng: Rng | None = None
) -> tuple[ShamirShare, ...]:
    """Split ``0 ≤ secret < prime`` into ``parties`` shares, any ``threshold`` of which recover it.

    Raises:
        CryptoError: ``prime`` is not prime, ``secret`` out of range, or not
            ``1 ≤ threshold ≤ parties < prime``.
    """
    prime = require_int("prime", prime, low=3)
    if not gmpy2.is_prime(prime):
        raise CryptoError("prime must be prime")
    secret = require_int("secret", secret, low=0, high=prime - 1)
    parties = require_int("parties", parties, low=1, high=prime - 1)
    threshold = require_int("threshold", threshold, low=1, high=parties)
    source = system_rng(rng)
    coefficients = [secret] + [source.randrange(prime) for _ in range(threshold - 1)]
    return tuple(
        ShamirShare(x, evaluate_polynomial(coefficients, x, prime)) for x in range(1, parties + 1)
    )


def _distinct_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        dup = sorted(x for x in set(xs) if xs.count(x) > 1)
        raise CryptoError(f"duplicate share index {dup[0]}")


def recover_secret(shares: Sequence[ShamirShare], prime: int) -> int:
    """Lagrange interpolation at 0 over ``GF(prime)``.

    With fewer shares than the threshold the result is a uniformly random-looking field element,
    not an error: Shamir shares carry no threshold. Callers that know it must check the count.

    Raises:
        CryptoError: no shares, duplicate or out-of-range indices.
    """
    prime = require_int("prime", prime, low=3)
    if not shares:
        raise CryptoError("at least one share is needed")
    for s in require_sequence("shares", shares):
        if not isinstance(s, ShamirShare):
            raise CryptoError(f"shares must be ShamirShare objects, got {type(s).__name__}")
        require_int("share.value", s.value, low=0, high=prime - 1)
    xs = [require_int("share.x", s.x, low=1, high=prime - 1) for s in shares]
    _distinct_xs(xs)
    secret = 0
    for i, share in zip(xs, shares):
        num, den = 1, 1
        for j in xs:
            if j != i:
                num = num * j % prime
                den = den * (j - i) % prime
        secret = (secret + share.value * num * pow(den, -1, prime)) % prime
    return secret


def integer_lagrange_at_zero(xs: Sequence[int], parties: int) -> dict[int, int]:
    """Shoup's integer Lagrange coefficients ``λᵢ = Δ·∏_{j≠i} j/(j−i)`` with ``Δ = parties!``.

    ``Σ λᵢ·f(i) = Δ·f(0)`` for any polynomial of degree < ``len(xs)``; every ``λᵢ`` is an integer
    because ``Δ`` is divisible by every product of differences of indices in ``1..parties``.

    Raises:
        CryptoError: duplicate indices or an index outside ``1..parties``.
    """
    parties = require_int("parties", parties, low=1)
    for x in require_sequence("share indices", xs):
        require_int("share index", x, low=1, high=parties)
    _distinct_xs(list(xs))
    delta = math.factorial(parties)
    out = {}
    for i in xs:
        coefficient = Fraction(delta)
        for j in xs:
            if j != i:
                coefficient *= Fraction(j, j - i)
        if coefficient.denominator != 1:  # pragma: no cover - impossible by the argument above
            raise CryptoError("Lagrange coefficient is not an integer")
        out[i] = int(coefficient)
    return out
