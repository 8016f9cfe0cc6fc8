"""Threshold Paillier key generation without a dealer: the parties' arithmetic (no I/O).

ℓ holders generate ``N = p·q`` and integer Shamir shares of a decryption exponent so that no
party — and no coalition of up to ``t − 1`` of them — ever holds ``p``, ``q`` or ``φ(N)``. The
construction follows Boneh and Franklin ("Efficient generation of shared RSA keys", CRYPTO 1997;
J. ACM 2001) with the BGW multiplication of Ben-Or, Goldwasser and Wigderson, the distributed
sieving idea of Malkin, Wu and Boneh (NDSS 1999), and the Paillier key shares of Veugen, Attema
and Spini (2019; the ``θ = D mod N`` device); it needs ``ℓ ≥ 2t − 1`` (a product of two
degree-(t−1) sharings is a degree-(2t−2) sharing that 2t − 1 parties open).

Steps, each a pure function of a party's state and the messages it received:

1. **Sieved candidates.** For every odd prime ``r ≤ B`` with ``r² > ℓ`` each party picks
   ``a_{i,r} ∈ F_r*`` and Shamir-shares it over ``GF(r²)`` (so that 3 and 5 have enough
   evaluation points for ℓ holders); the parties multiply the ℓ sharings (BGW, a tree of
   ⌈log₂ ℓ⌉ rounds) and turn the product into additive shares ``b_{i,r}`` (the ``F_r`` parts:
   the others cancel): ``Σᵢ b_{i,r} ≡ ∏ⱼ a_{j,r} ≢ 0 (mod r)``. By CRT each party builds
   ``pᵢ = bᵢ + M·ρᵢ`` (``M = 4·∏ r``; party 1 ≡ 3, the others ≡ 0 mod 4), so ``p = Σ pᵢ`` has no
   prime factor ≤ B and ``p ≡ 3 (mod 4)`` — without anyone learning ``p mod r``. Likewise ``q``.
2. **The modulus.** Each party Shamir-shares ``pᵢ``, ``qᵢ`` (degree t−1) and a zero (degree
   2t−2) over a prime field ``F_P`` with ``P > N``; each multiplies its shares of ``p`` and
   ``q``, adds its share of zero and publishes the result; ``N`` is interpolated (from every
   party: with ℓ > 2t − 1 the extra points check the others).
3. **Trial division** of ``N`` by the primes up to ``B₂`` (public).
4. **Biprimality** (Boneh–Franklin): for public ``g`` of Jacobi symbol 1 derived from ``N`` and
   the session, party 1 publishes ``g^((N+1−p₁−q₁)/4)``, party i > 1 ``g^(−(pᵢ+qᵢ)/4) mod N``;
   ``N`` passes a round when the product is ±1. For ``N = p·q`` with ``p ≡ q ≡ 3 (mod 4)``
   primes it always passes; otherwise each round fails with probability ≥ ½. Answers are
   committed before they are revealed; a batch that yields no key is opened (each party's
   ``pᵢ``, ``qᵢ``, committed with its field shares before any ``N`` was open) and every answer
   for a tested ``N`` that is a product of two primes is recomputed: a party whose answer threw
   a biprime away is named.
5. **The key.** With ``φ = N + 1 − p − q`` additively shared (``φ₁ = N + 1 − p₁ − q₁``,
   ``φᵢ = −pᵢ − qᵢ``) and a random ``β = Σ βᵢ``, the parties share ``φ`` and ``β`` with integer
   Shamir polynomials of degree t−1, multiply locally (degree 2t−2) and reshare each product
   with degree t−1; party m's key share is ``s_m = Σ_{j∈S} λ_j^Δ·K_j(m)`` (``S`` the first
   2t − 1 parties, ``λ^Δ`` Shoup's integer Lagrange coefficients), a degree-(t−1) integer
   sharing of ``D = Δ·β·φ``. Each party publishes ``s_m mod N``; ``θ = D mod N`` is
   interpolated from them and is public (``β`` uniform mod N makes it uniform: it reveals
   nothing of ``φ``). Decryption is Shoup's, with ``M = L(c^(4Δ²D))·(4Δ²θ)⁻¹ mod N``
   (:mod:`fedlora.crypto._threshold`; a dealt key has ``θ = 1``).

What each step reveals: the opened ``N`` of every candidate, its biprimality answers (a
rejected candidate's, harmless), the additive shares of a batch that yielded no key (all of it
discarded), and ``θ``; everything else travels as Shamir shares of degree
t − 1 or masked by a random sharing of zero. This module is the arithmetic only; the ceremony
(signed, end-to-end encrypted messages relayed by the coordinator, commitments before the
biprimality answers, blame) is built on it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np

from fedlora.crypto._shamir import integer_lagrange_at_zero
from fedlora.crypto._threshold import (
    DecryptionProof,
    PartialDecryption,
    combine_verified_partials,
    partial_decrypt,
    verify_partial_decryption,
)
from fedlora.crypto._threshold_keys import KeyShare, ThresholdPublicKey
from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "GeneratedKey",
    "KeygenParams",
    "KeygenParty",
    "PartyResult",
    "ThreadExchange",
    "biprimality_generators",
    "field_lagrange_at_zero",
    "generate_in_process",
    "run_party",
    "small_primes",
]

STATISTICAL_BITS = 128  # integer sharings hide a value of b bits with polynomials of b + 128 bits
_WIRE = np.uint16  # residues modulo a sieving prime (< 2^14) travel in two bytes


def small_primes(low: int, high: int) -> list[int]:
    """The primes ``low < r ≤ high``."""
    sieve = np.ones(high + 1, dtype=bool)
    sieve[:2] = False
    for k in range(2, math.isqrt(high) + 1):
        if sieve[k]:
            sieve[k * k :: k] = False
    return [int(r) for r in np.nonzero(sieve)[0] if r > low]


@dataclass(frozen=True)
class KeygenParams:
    """The public parameters of one key generation.

    Attributes:
        parties: the holders, in share order (party ``parties[i-1]`` has index ``i``).
        threshold: ``t``: any ``t`` shares decrypt, ``t − 1`` learn nothing.
        bits: the modulus size (``N`` has exactly this many bits).
        batch: candidate pairs ``(p, q)`` tried per pass.
        sieve_bound: ``B``: ``p`` and ``q`` have no odd prime factor ``r ≤ B`` with ``r² > ℓ``.
        trial_bound: ``B₂``: the primes up to it are divided out of ``N`` in public.
        biprimality_rounds: rounds of the Boneh–Franklin test (error ≤ 2^−rounds).
        session: binds every derived value to this generation.
    """

    parties: tuple[str, ...]
    threshold: int
    bits: int
    batch: int = 1024
    sieve_bound: int = 0  # 0: the largest that keeps M well below p
    trial_bound: int = 1 << 16
    biprimality_rounds: int = 64
    session: bytes = b""
    sieve_primes: tuple[int, ...] = field(init=False, repr=False)
    field_prime: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ell, t = len(self.parties), self.threshold
        if len(set(self.parties)) != ell or ell < 2:
            raise CryptoError("key generation needs at least two distinct parties")
        if not t >= 2 or 2 * t - 1 > ell:
            raise CryptoError(
                f"a {t}-of-{ell} key cannot be generated without a dealer: the construction "
                f"needs 2 ≤ t and ℓ ≥ 2t − 1 (here 2t − 1 = {2 * t - 1})"
            )
        if self.bits < 256 or self.bits % 2:
            raise CryptoError("the modulus must have an even number of bits, at least 256")
        half = self.bits // 2
        bound = self.sieve_bound
        primes: list[int] = []
        if bound == 0:  # M = 4·∏ r must leave p at least 64 + log₂ ℓ random bits above it
            budget = half - 70 - ell.bit_length()
            logm = 2.0
            for r in small_primes(2, (1 << 14) - 1):
                if r * r - 1 < ell:  # GF(r²) has too few points for ℓ holders
                    continue
                if logm + math.log2(r) > budget:
                    break
                primes.append(r)
                logm += math.log2(r)
        else:
            if bound >= 1 << 14:
                raise CryptoError(
                    "the sieve bound must stay below 2^14 (residues travel in 2 bytes)"
                )
            primes = [r for r in small_primes(2, bound) if r * r - 1 >= ell]
        object.__setattr__(self, "sieve_primes", tuple(primes))
        # F_P: N < 2^bits, so any prime above 2^(bits+1) holds the product exactly.
        object.__setattr__(self, "field_prime", int(gmpy2.next_prime(1 << (self.bits + 1))))

    @property
    def ell(self) -> int:
        return len(self.parties)

    @property
    def sieve_modulus(self) -> int:
        """``M = 4·∏ r`` over the sieving primes."""
        return 4 * math.prod(self.sieve_primes)

    @property
    def delta(self) -> int:
        return math.factorial(self.ell)


def field_lagrange_at_zero(xs: Sequence[int], modulus: int) -> list[int]:
    """Lagrange coefficients at 0 for the points ``xs`` over the prime field ``F_modulus``."""
    out = []
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num = num * j % modulus
                den = den * (j - i) % modulus
        out.append(num * pow(den, -1, modulus) % modulus)
    return out


class _Gf2:
    """``GF(r²) = F_r[α]/(α² − k)`` for each sieving prime ``r`` (``k`` a non-residue), vectorized:
    an element array has a last axis of 2 (``a + b·α``) and the axis before it runs over the
    primes. Small primes (3, 5, …) have fewer than ℓ nonzero points in ``F_r``; ``GF(r²)`` has
    ``r² − 1``, so every prime with ``r² > ℓ`` can be sieved. Party ``i``'s point is
    ``(i mod r) + (i div r)·α``."""

    def __init__(self, primes: Sequence[int], ell: int) -> None:
        self.r = np.array(primes, dtype=np.int64)
        self.k = np.array([_non_residue(r) for r in primes], dtype=np.int64)
        self.points = np.array(
            [[[i % r, i // r] for r in primes] for i in range(1, ell + 1)], dtype=np.int64
        )  # (ℓ, R, 2)
        # Primes above ℓ have every point in F_r: their sharings stay in F_r (α part 0), and
        # only the primes up to ℓ need (and send) the α part.
        self.extension = np.array([r <= ell for r in primes], dtype=bool)
        self._alpha_high = np.where(self.extension, self.r, 1)

    def pack(self, x: np.ndarray) -> np.ndarray:
        """(…, R, 2) → (…, R + S): the F_r parts, then the α parts of the S extension primes."""
        return np.concatenate([x[..., 0], x[..., self.extension, 1]], axis=-1).astype(_WIRE)

    def unpack(self, x: Any, shape: tuple[int, ...], sender: str) -> np.ndarray:
        """The inverse of :meth:`pack`, for what a holder received.

        Raises:
            CryptoError: not an array of ``shape`` (packed) of residues below each prime; the
                sender is named.
        """
        want = (*shape, len(self.r) + int(self.extension.sum()))
        if not isinstance(x, np.ndarray) or x.shape != want:
            raise CryptoError(f"holder {sender!r} sent sieve shares of another shape", party=sender)
        x = x.astype(np.int64)
        out = np.zeros((*shape, len(self.r), 2), dtype=np.int64)
        out[..., 0] = x[..., : len(self.r)]
        out[..., self.extension, 1] = x[..., len(self.r) :]
        if (out[..., 0] >= self.r).any() or (out[..., 1] >= self._alpha_high).any():
            raise CryptoError(f"holder {sender!r} sent sieve shares out of range", party=sender)
        return out

    def mul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r, k = self.r, self.k
        a, b, c, d = x[..., 0], x[..., 1], y[..., 0], y[..., 1]
        return np.stack([(a * c + k * (b * d % r)) % r, (a * d + b * c) % r], axis=-1)

    def share(self, values: np.ndarray, degree: int) -> np.ndarray:
        """Shamir shares of ``values`` (…, R, 2): (ℓ, …, R, 2)."""
        rng = np.random.default_rng(secrets.randbits(128))
        high = np.stack([self.r, self._alpha_high], axis=-1)
        coeffs = [values] + [
            rng.integers(0, high, size=values.shape, dtype=np.int64) for _ in range(degree)
        ]
        out = np.empty((len(self.points), *values.shape), dtype=np.int64)
        for i, point in enumerate(self.points):
            acc = np.zeros(values.shape, dtype=np.int64)
            for c in reversed(coeffs):
                acc = (self.mul(acc, np.broadcast_to(point, values.shape)) + c) % np.stack(
                    [self.r, self.r], axis=-1
                )
            out[i] = acc
        return out

    def lagrange_at_zero(self, indices: Sequence[int]) -> np.ndarray:
        """Lagrange coefficients at 0 for the holders ``indices`` (1-based): (len, R, 2)."""
        out = np.zeros((len(indices), len(self.r), 2), dtype=np.int64)
        for col, (r, k) in enumerate(zip(self.r.tolist(), self.k.tolist())):
            pts = [
                (int(self.points[i - 1, col, 0]), int(self.points[i - 1, col, 1])) for i in indices
            ]
            for row, xi in enumerate(pts):
                num, den = (1, 0), (1, 0)
                for xj in pts:
                    if xj != xi:
                        num = _gf_mul(num, xj, r, k)
                        den = _gf_mul(den, ((xj[0] - xi[0]) % r, (xj[1] - xi[1]) % r), r, k)
                out[row, col] = _gf_mul(num, _gf_inv(den, r, k), r, k)
        return out


def _non_residue(r: int) -> int:
    return next(k for k in range(2, r) if pow(k, (r - 1) // 2, r) == r - 1)


def _gf_mul(x: tuple[int, int], y: tuple[int, int], r: int, k: int) -> tuple[int, int]:
    return ((x[0] * y[0] + k * x[1] * y[1]) % r, (x[0] * y[1] + x[1] * y[0]) % r)


def _gf_inv(x: tuple[int, int], r: int, k: int) -> tuple[int, int]:
    norm = pow((x[0] * x[0] - k * x[1] * x[1]) % r, -1, r)
    return (x[0] * norm % r, -x[1] * norm % r)


def _share_field(value: int, degree: int, ell: int, modulus: int) -> list[int]:
    coeffs = [value % modulus] + [secrets.randbelow(modulus) for _ in range(degree)]
    out = []
    for x in range(1, ell + 1):
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % modulus
        out.append(acc)
    return out


def _share_integer(value: int, degree: int, ell: int, bits: int) -> list[int]:
    """Integer Shamir shares of ``value``: coefficients of ``bits + 128`` random bits."""
    coeffs = [value] + [secrets.randbits(bits + STATISTICAL_BITS) for _ in range(degree)]
    out = []
    for x in range(1, ell + 1):
        acc = 0
        for c in reversed(coeffs):
            acc = acc * x + c
        out.append(acc)
    return out


def biprimality_answers(
    params: KeygenParams, index: int, p: int, q: int, n: int, rounds: range
) -> list[int]:
    """Party ``index``'s answers for its shares ``p``, ``q`` of a candidate with modulus ``n``:
    party 1 ``g^((n+1−p−q)/4)``, the others ``g^(−(p+q)/4)``, for the ``g`` of each round.

    Raises:
        CryptoError: the shares lack the residues mod 4 the test needs.
    """
    exponent = (n + 1 - p - q) if index == 1 else -(p + q)
    if exponent % 4:
        raise CryptoError("the shares of p and q do not have the residues mod 4 the test needs")
    e = exponent // 4
    gs = biprimality_generators(n, params.session, rounds.stop)
    return [int(gmpy2.powmod(gs[r], e, n)) for r in rounds]


def biprimality_generators(n: int, session: bytes, rounds: int) -> list[int]:
    """Public ``g₁ … g_k`` of Jacobi symbol 1 modulo ``n``, derived from ``n`` and the session."""
    out: list[int] = []
    counter = 0
    width = (n.bit_length() + 7) // 8 + 16
    while len(out) < rounds:
        counter += 1
        seed = hashlib.sha256(b"fedlora/keygen/g\0" + session + n.to_bytes(width, "big"))
        seed.update(counter.to_bytes(8, "big"))
        stream = hashlib.shake_256(seed.digest()).digest(width)
        g = int.from_bytes(stream, "big") % n
        if g > 1 and gmpy2.jacobi(g, n) == 1:
            out.append(g)
    return out


@dataclass
class _Candidates:
    p: list[int]  # this party's additive shares of the batch's p's
    q: list[int]


class KeygenParty:
    """One holder's side of the arithmetic. Messages are ``{recipient index: payload}``;
    indices are 1-based share indices. Nothing here sends, signs or encrypts."""

    def __init__(self, params: KeygenParams, index: int) -> None:
        if not 1 <= index <= params.ell:
            raise CryptoError(f"party index {index} is outside 1..{params.ell}")
        self.params, self.index = params, index
        self._gf = _Gf2(params.sieve_primes, params.ell)
        self._shares: np.ndarray | None = None  # (parties, 2, batch, R, 2): shares of every a_{j,r}
        self._carry = np.zeros(0)  # a sharing that waits for the next level of the product tree
        self._pairs = 0  # products being reduced at this level
        self._candidates: _Candidates | None = None
        self._field_shares: tuple[list[int], list[int], list[int]] | None = None
        self.modulus = 0
        self._p = self._q = 0  # this party's additive shares of the chosen p and q
        self._beta = 0
        self._products: list[int] = []
        self.key_share = 0

    # -- 1. sieved candidates -----------------------------------------------------------------
    def sieve_start(self) -> dict[int, np.ndarray]:
        """Shamir shares over each ``GF(r²)`` of this party's ``a_{i,r} ∈ F_r*`` for p and q, per
        candidate."""
        prm = self.params
        rng = np.random.default_rng(secrets.randbits(128))
        shape = (2, prm.batch, len(self._gf.r))
        mine = rng.integers(1, self._gf.r, size=shape, dtype=np.int64)
        embedded = np.stack([mine, np.zeros_like(mine)], axis=-1)
        shares = self._gf.share(embedded, prm.threshold - 1)
        return {j: self._gf.pack(shares[j - 1]) for j in range(1, prm.ell + 1)}

    def sieve_received(self, received: Mapping[int, Any]) -> None:
        """Keep the shares of every party's ``a_{j,r}`` (indexed by sender).

        Raises:
            CryptoError: a holder's shares are malformed (``party``).
        """
        prm = self.params
        shape = (2, prm.batch)
        self._shares = np.stack(
            [
                self._gf.unpack(received.get(j), shape, prm.parties[j - 1])
                for j in range(1, prm.ell + 1)
            ]
        )

    def sieve_multiply(self) -> dict[int, np.ndarray] | None:
        """One level of the product tree: for each pair of sharings, this party's product share
        (degree 2t−2), reshared with degree t−1. None when one sharing is left."""
        assert self._shares is not None
        if len(self._shares) == 1:
            return None
        pairs = len(self._shares) // 2
        left, right = self._shares[0 : 2 * pairs : 2], self._shares[1 : 2 * pairs : 2]
        products = self._gf.mul(left, right)
        self._carry = self._shares[2 * pairs :]  # an odd one out waits for the next level
        self._pairs = pairs
        shares = self._gf.share(products, self.params.threshold - 1)
        return {j: self._gf.pack(shares[j - 1]) for j in range(1, self.params.ell + 1)}

    def sieve_reduced(self, received: Mapping[int, Any]) -> None:
        """Degree reduction: this party's share of each product is the Lagrange combination
        (over the first 2t − 1 parties) of the reshared product shares."""
        prm = self.params
        xs = list(range(1, 2 * prm.threshold))
        lam = self._gf.lagrange_at_zero(xs)
        shape = (self._pairs, 2, prm.batch)
        acc = np.zeros((*shape, len(self._gf.r), 2), dtype=np.int64)
        for k, j in enumerate(xs):
            share = self._gf.unpack(received.get(j), shape, prm.parties[j - 1])
            acc = acc + self._gf.mul(share, np.broadcast_to(lam[k], acc.shape))
        acc %= np.stack([self._gf.r, self._gf.r], axis=-1)
        self._shares = np.concatenate([acc, self._carry]) if len(self._carry) else acc

    def sieve_finish(self) -> None:
        """Additive shares of ``∏ⱼ a_{j,r}`` for every r, then ``pᵢ``, ``qᵢ`` by CRT."""
        assert self._shares is not None and len(self._shares) == 1
        prm = self.params
        lam = self._gf.lagrange_at_zero(list(range(1, prm.ell + 1)))[self.index - 1]
        # The product lies in F_r: the α parts of the additive shares cancel; keep the F_r part.
        additive = self._gf.mul(self._shares[0], np.broadcast_to(lam, self._shares[0].shape))[
            ..., 0
        ]
        m = prm.sieve_modulus
        crt = [m // 4 // r * pow(m // 4 // r, -1, r) for r in prm.sieve_primes]
        # p = Σ pᵢ: party 1 adds the first multiple of M above 3·2^(h−2) and is ≡ 3 mod 4, the
        # others ≡ 0 mod 4; every random part is below 2^(h−2)/ℓ, so p ∈ [3·2^(h−2), 2^h) and N
        # has exactly `bits` bits.
        half = prm.bits // 2
        spread = max(1, ((1 << (half - 2)) // prm.ell - m) // m)
        out: list[list[int]] = [[], []]
        for which in (0, 1):
            for k in range(prm.batch):
                residue = sum(int(a) * c for a, c in zip(additive[which, k], crt)) % (m // 4)
                # the residue mod 4: 3 for party 1, 0 for the others, by CRT with m // 4 (odd)
                want = 3 if self.index == 1 else 0
                fix = (want - residue) * pow(m // 4, -1, 4) % 4
                value = residue + fix * (m // 4) + m * secrets.randbelow(spread)
                if self.index == 1:  # a multiple of M: the residues stay as sieved
                    value += ((3 << (half - 2)) // m + 1) * m
                out[which].append(value)
        self._candidates = _Candidates(out[0], out[1])

    # -- 2. the modulus -------------------------------------------------------------------------
    def modulus_shares(self) -> dict[int, tuple[list[int], list[int], list[int]]]:
        """Field shares of this party's ``pᵢ``, ``qᵢ`` (degree t−1) and of zero (degree 2t−2)."""
        assert self._candidates is not None
        prm, big = self.params, self.params.field_prime
        t, ell = prm.threshold, prm.ell
        per: dict[int, tuple[list[int], list[int], list[int]]] = {
            j: ([], [], []) for j in range(1, ell + 1)
        }
        for k in range(prm.batch):
            for slot, value, degree in (
                (0, self._candidates.p[k], t - 1),
                (1, self._candidates.q[k], t - 1),
                (2, 0, 2 * t - 2),
            ):
                for j, share in enumerate(_share_field(value, degree, ell, big), start=1):
                    per[j][slot].append(share)
        return per

    def modulus_products(
        self, received: Mapping[int, tuple[list[int], list[int], list[int]]]
    ) -> list[int]:
        """This party's share of each ``N = p·q`` (masked by the zero sharing): to publish."""
        big = self.params.field_prime
        out = []
        for k in range(self.params.batch):
            p = sum(received[j][0][k] for j in received) % big
            q = sum(received[j][1][k] for j in received) % big
            z = sum(received[j][2][k] for j in received) % big
            out.append((p * q + z) % big)
        return out

    # -- 4. biprimality -------------------------------------------------------------------------
    def biprimality_answers(self, candidate: int, n: int, rounds: range) -> list[int]:
        """``g^(±…/4) mod n`` for the public ``g`` of each of ``rounds`` (see the module
        docstring, step 4). Most candidates fail the first round, so it is asked alone."""
        assert self._candidates is not None
        p, q = self._candidates.p[candidate], self._candidates.q[candidate]
        return biprimality_answers(self.params, self.index, p, q, n, rounds)

    def candidate_shares(self) -> tuple[list[int], list[int]]:
        """This party's additive shares of the batch's p's and q's (opened once the whole batch
        is discarded: :meth:`PartyRun._on_discarded`)."""
        assert self._candidates is not None
        return list(self._candidates.p), list(self._candidates.q)

    def choose(self, candidate: int, n: int) -> None:
        """Keep candidate ``candidate`` (its modulus ``n`` passed every test); forget the rest."""
        assert self._candidates is not None
        self._p, self._q = self._candidates.p[candidate], self._candidates.q[candidate]
        self._candidates, self._shares, self.modulus = None, None, n

    # -- 5. the key -----------------------------------------------------------------------------
    def key_shares(self) -> dict[int, tuple[int, int]]:
        """Integer shares (degree t−1) of this party's ``βᵢ`` and ``φᵢ``."""
        prm, n = self.params, self.modulus
        phi = (n + 1 - self._p - self._q) if self.index == 1 else -(self._p + self._q)
        self._beta = secrets.randbelow(n)
        bits = n.bit_length() + 2
        betas = _share_integer(self._beta, prm.threshold - 1, prm.ell, bits)
        phis = _share_integer(phi, prm.threshold - 1, prm.ell, bits)
        return {j: (betas[j - 1], phis[j - 1]) for j in range(1, prm.ell + 1)}

    def key_reshare(self, received: Mapping[int, tuple[int, int]]) -> dict[int, int] | None:
        """The product of this party's shares of β and φ, reshared with degree t−1 (only the
        first 2t − 1 parties reshare; None for the others)."""
        prm = self.params
        beta = sum(received[j][0] for j in received)
        phi = sum(received[j][1] for j in received)
        if self.index > 2 * prm.threshold - 1:
            return None
        product = beta * phi
        bits = max(1, abs(product).bit_length())
        shares = _share_integer(product, prm.threshold - 1, prm.ell, bits)
        return {j: shares[j - 1] for j in range(1, prm.ell + 1)}

    def key_finish(self, received: Mapping[int, int]) -> int:
        """This party's key share ``s_m`` (a share of ``D = Δ·β·φ``); returns ``s_m mod N``,
        which it publishes so that everyone computes ``θ``."""
        prm = self.params
        lam = integer_lagrange_at_zero(list(range(1, 2 * prm.threshold)), prm.ell)
        self.key_share = sum(lam[j] * received[j] for j in range(1, 2 * prm.threshold))
        return self.key_share % self.modulus


def interpolate_field(points: Mapping[int, int], modulus: int) -> int:
    """The value at 0 of the polynomial through ``points`` over ``F_modulus``."""
    xs = sorted(points)
    lam = field_lagrange_at_zero(xs, modulus)
    return sum(c * points[x] for c, x in zip(lam, xs)) % modulus


def theta_from_residues(
    residues: Mapping[int, int], n: int, threshold: int, parties: Sequence[str]
) -> int:
    """``θ = D mod N`` from every holder's published ``s_m mod N``: they must lie on one
    polynomial of degree t − 1 (any t of them determine ``θ``).

    Raises:
        CryptoError: they do not; when leaving out one holder makes the others agree (ℓ ≥ t + 2
            holders), the message says where the fault shows — but names nobody (``party`` is
            None): that holder's share is wrong because it computed it wrongly *or* because
            another holder sent it a wrong reshare, which the published values cannot tell apart.
    """
    ell = len(parties)
    delta = math.factorial(ell)
    inv = pow(delta, -1, n)

    def thetas(points: Sequence[int]) -> set[int]:
        out = set()
        for start in range(len(points) - threshold + 1):
            subset = points[start : start + threshold]
            lam = integer_lagrange_at_zero(subset, ell)
            out.add(sum(lam[x] * residues[x] for x in subset) * inv % n)
        return out

    xs = sorted(residues)
    found = thetas(xs)
    if len(found) == 1:
        return found.pop()
    if len(xs) >= threshold + 2:
        for x in xs:
            if len(thetas([y for y in xs if y != x])) == 1:
                raise CryptoError(
                    f"holder {parties[x - 1]!r} published a key residue off the others' "
                    "polynomial: its share is wrong (it computed it wrongly, or a holder sent "
                    "it a wrong reshare); no key"
                )
    raise CryptoError("the published key residues do not agree: a holder's share is wrong")


def square_from_transcript(n: int, session: bytes) -> int:
    """The verification base ``v``: a square of ``Z*_{n²}`` derived from ``n`` and the session
    (a public coin nobody chooses)."""
    n2 = n * n
    width = (n2.bit_length() + 7) // 8 + 16
    counter = 0
    while True:
        counter += 1
        seed = (
            b"fedlora/keygen/v\0" + session + n.to_bytes(width, "big") + counter.to_bytes(8, "big")
        )
        r = int.from_bytes(hashlib.shake_256(seed).digest(width), "big") % n2
        if r > 1 and gmpy2.gcd(r, n) == 1:
            return int(gmpy2.powmod(r, 2, n2))


def verification_key(n: int, v: int, delta: int, share: int) -> int:
    """``v^(Δ·s) mod n²`` for a share that may be negative."""
    return int(gmpy2.powmod(v, delta * share, n * n))


def share_bound_bits(params: KeygenParams) -> int:
    """A public bound on ``|s_m|`` in bits for a generated key: a share is
    ``Σ_{j∈S} λ_j^Δ·K_j(m)`` with ``K_j`` of degree t − 1 whose coefficients (and constant, a
    product of two shares of ``bits + 2``-bit values) fit in ``2·(bits + 2 + 128 + t·log₂ ℓ)
    + 128`` bits; ``|λ_j^Δ| ≤ Δ²`` and ``m^k ≤ ℓ^(t−1)``."""
    t, ell = params.threshold, params.ell
    one = params.bits + 2 + STATISTICAL_BITS + t * ell.bit_length() + ell.bit_length()
    product = 2 * one + STATISTICAL_BITS
    return product + 2 * params.delta.bit_length() + t * ell.bit_length() + 2 * ell.bit_length()


Exchange = Callable[[Mapping[int, Any]], dict[int, Any]]
"""One round of messages: this party's ``{recipient index: payload}`` in (every party sends in
every round, possibly to itself), ``{sender index: payload}`` out. The ceremony's relay, a
process pool's pipes or threads in one process implement it; the protocol is only here."""


@dataclass(frozen=True)
class PartyResult:
    """One holder's outcome: the public key (the same for every holder) and its own share."""

    public_key: ThresholdPublicKey
    share: KeyShare
    candidates: int  # candidate pairs whose N was opened
    biprimality_tests: int  # candidates that reached the biprimality test
    passes: int  # batches of candidates
    transcript: bytes  # SHA-256 of the public values every holder saw (equal for all)


def _passes(n: int, answers: Sequence[Sequence[int]]) -> bool:
    """Every round's product of the holders' answers is ±1 modulo ``n``."""
    return all(math.prod(column) % n in (1, n - 1) for column in zip(*answers, strict=True))


def _broadcast(params: KeygenParams, payload: Any) -> dict[int, Any]:
    return {j: payload for j in range(1, params.ell + 1)}


def _is_bytes(x: Any) -> bool:
    return isinstance(x, bytes) and len(x) <= 256


def _is_digest(x: Any) -> bool:
    """32 bytes: a commitment, a nonce, a view digest (anything else is refused unread)."""
    return isinstance(x, bytes) and len(x) == 32


def _int_list(x: Any, count: int) -> bool:
    return isinstance(x, list) and len(x) == count and all(type(v) is int for v in x)


def _commitment(nonce: bytes, value: Any) -> bytes:
    # repr of ints, lists and int-keyed dicts (sorted) is canonical
    body = repr(sorted(value.items()) if isinstance(value, dict) else value).encode()
    return hashlib.sha256(b"fedlora/keygen/commit\0" + nonce + body).digest()


Outgoing = dict[int, Any]


class PartyRun:
    """Holder ``index``'s whole key generation as a resumable machine: :meth:`start` gives the
    first round's messages, :meth:`step` takes a round's incoming messages and gives the next
    round's, until it gives None and :attr:`result` is set. Every holder takes the same
    branches: each decision is on values all of them received. Its state is plain data
    (picklable: arrays, integers, lists), so a holder whose transport lasts one message (a
    Flower ClientApp) can keep it on the node between messages; :func:`run_party` drives it
    over an :data:`Exchange`.

    Raises (``step``):
        CryptoError, VerificationError: no modulus within ``max_passes`` batches, or a holder's
            fault (``party`` names it where one can be named).
    """

    def __init__(self, params: KeygenParams, index: int, *, max_passes: int = 64) -> None:
        self.params, self.index, self.max_passes = params, index, max_passes
        self.party = KeygenParty(params, index)
        self.state = "start"
        self.result: PartyResult | None = None
        self.opened = self.tested = self.passes = 0
        self.moduli: dict[int, int] = {}
        self.first: dict[int, Any] = {}
        self.waiting: list[int] = []  # candidates whose first biprimality round is yet to check
        self.rest: dict[int, dict[int, Any]] = {}  # candidate -> the holders' other answers
        self.batch_moduli: list[int] = []  # every candidate's opened N, in batch order
        self.shares_commit: tuple[tuple[list[int], list[int]], bytes] | None = None
        self.shares_commitments: dict[int, bytes] = {}  # the holders' commitments to their shares
        self.candidate = 0
        self.commit: tuple[Any, bytes, str] | None = None  # value, nonce, what it answers
        self.commitments: dict[int, Any] = {}
        self.answers: list[list[Any]] = []
        self.residues: dict[int, Any] = {}
        self.theta = 0
        self.public: ThresholdPublicKey | None = None
        self.share: KeyShare | None = None
        self.probe: tuple[int, int, bytes] = (0, 0, b"")  # ciphertext, plaintext, its digest
        self.transcript = b""

    # -- driving -----------------------------------------------------------------------------
    def start(self) -> Outgoing:
        out = self._tagged(self._next_pass())
        assert out is not None
        return out

    def step(self, incoming: Mapping[int, Any]) -> Outgoing | None:
        """The next round's messages (see the class docstring).

        Raises:
            CryptoError: a holder's fault (``party`` where it can be named); a message of a
                shape no step expects, which the step did not pin on its sender, stops the
                attempt unattributed (never a traceback, never a key).
        """
        state, tag = self.state, self._tag()
        handler: Callable[[Mapping[int, Any]], Outgoing | None] = getattr(
            self, "_on_" + state.replace("-", "_")
        )
        payloads = {}
        for j, message in incoming.items():
            if not (isinstance(message, tuple) and len(message) == 2 and _is_bytes(message[0])):
                pid = self.params.parties[j - 1]
                raise CryptoError(f"holder {pid!r} sent a message without its step", party=pid)
            if message[0] != tag:
                raise CryptoError(
                    f"the holders are at different steps ({message[0]!r} from holder "
                    f"{self.params.parties[j - 1]!r}, {tag!r} here): a holder sent different "
                    "values to different holders; no key"
                )
            payloads[j] = message[1]
        try:
            return self._tagged(handler(payloads))
        except (
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
        ) as exc:
            raise CryptoError(
                f"a holder sent a malformed message in the {state!r} step "
                f"({type(exc).__name__}): no key"
            ) from None

    def _tag(self) -> bytes:
        """The step a message belongs to: every holder takes the same branches on the same
        views, so a message from another step means the views differ (a holder equivocated) —
        the attempt stops before any value of it is read, and before anyone is named."""
        purpose = self.commit[2] if self.commit else ""
        return f"{self.state}/{self.passes}/{self.candidate}/{purpose}".encode()

    def _tagged(self, outgoing: Outgoing | None) -> Outgoing | None:
        if outgoing is None:
            return None
        tag = self._tag()
        return {j: (tag, m) for j, m in outgoing.items()}

    # -- 1. sieved candidates ------------------------------------------------------------------
    def _next_pass(self) -> Outgoing:
        if self.passes == self.max_passes:
            prm = self.params
            raise CryptoError(
                f"no biprime modulus in {self.max_passes} batches of {prm.batch} candidates"
            )
        self.passes += 1
        self.state = "sieve"
        self.moduli, self.first, self.rest, self.batch_moduli = {}, {}, {}, []
        return self.party.sieve_start()

    def _on_sieve(self, incoming: Mapping[int, Any]) -> Outgoing:
        self.party.sieve_received(incoming)
        return self._multiply()

    def _on_reduce(self, incoming: Mapping[int, Any]) -> Outgoing:
        self.party.sieve_reduced(incoming)
        return self._multiply()

    def _multiply(self) -> Outgoing:
        sent = self.party.sieve_multiply()
        if sent is not None:
            self.state = "reduce"
            return sent
        self.party.sieve_finish()
        self.state = "modulus-shares"  # 2. the moduli
        # With the field shares goes a commitment to this party's additive shares of the whole
        # batch, made before any modulus is open: if the batch yields no key, they are opened
        # and checked against the biprimality answers (:meth:`_on_discarded`).
        nonce = secrets.token_bytes(32)
        mine = self.party.candidate_shares()
        self.shares_commit = (mine, nonce)
        commitment = _commitment(nonce, ("candidate-shares", *mine))
        return {j: (*m, commitment) for j, m in self.party.modulus_shares().items()}

    def _on_modulus_shares(self, incoming: Mapping[int, Any]) -> Outgoing:
        prm = self.params
        self.shares_commitments = {}
        shares: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for j in sorted(incoming):
            message = incoming[j]
            if not isinstance(message, (tuple, list)) or len(message) != 4:
                pid = prm.parties[j - 1]
                raise CryptoError(f"holder {pid!r} sent malformed modulus shares", party=pid)
            p, q, z, commitment = message
            if not _is_digest(commitment):
                pid = prm.parties[j - 1]
                raise CryptoError(f"holder {pid!r} sent a malformed commitment", party=pid)
            shares[j] = (p, q, z)
            self.shares_commitments[j] = commitment
        self.state = "modulus-products"
        return _broadcast(prm, self.party.modulus_products(shares))

    def _on_modulus_products(self, products: Mapping[int, Any]) -> Outgoing:
        prm = self.params
        trial = math.prod(small_primes(1, prm.trial_bound))  # 3. trial division
        self.opened += prm.batch
        self.moduli = {}
        self.batch_moduli = []
        for k in range(prm.batch):
            n = interpolate_field({j: products[j][k] for j in products}, prm.field_prime)
            self.batch_moduli.append(n)
            if n.bit_length() == prm.bits and gmpy2.gcd(n, trial) == 1:
                self.moduli[k] = n
        self.tested += len(self.moduli)
        # 4. biprimality, committed before revealed: the first round for every survivor at
        # once, the rest for each that passes it
        first = {k: self.party.biprimality_answers(k, n, range(1)) for k, n in self.moduli.items()}
        return self._commit(first, "first")

    # -- 4. biprimality, each answer committed before any is revealed -------------------------
    def _commit(self, value: Any, purpose: str) -> Outgoing:
        """Broadcast a commitment to ``value``; it is revealed once every holder committed, so
        no answer can be chosen after seeing the others' (a holder answering last could
        otherwise force the product)."""
        nonce = secrets.token_bytes(32)
        self.commit = (value, nonce, purpose)
        self.state = "committed"
        return _broadcast(self.params, _commitment(nonce, value))

    def _opening(self) -> tuple[Any, bytes]:
        """What this holder reveals: the value it committed to, and the nonce."""
        assert self.commit is not None
        return self.commit[0], self.commit[1]

    def _on_committed(self, commitments: Mapping[int, Any]) -> Outgoing:
        for j, commitment in commitments.items():
            if not _is_digest(commitment):
                pid = self.params.parties[j - 1]
                raise CryptoError(f"holder {pid!r} sent a malformed commitment", party=pid)
        self.commitments = dict(commitments)
        self.state = "revealed"
        return _broadcast(self.params, self._opening())

    def _on_revealed(self, opened: Mapping[int, Any]) -> Outgoing | None:
        assert self.commit is not None
        first = self.commit[2] == "first"
        answers = {}
        for j in sorted(opened):
            pid = self.params.parties[j - 1]
            try:
                answer, their_nonce = opened[j]
                ok = _is_digest(their_nonce) and hmac.compare_digest(
                    _commitment(their_nonce, answer), self.commitments[j]
                )
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                raise CryptoError(
                    f"holder {pid!r} revealed biprimality answers other than it committed to",
                    party=pid,
                )
            if not self._well_formed(answer, first):
                # not pinned on the sender: its N may differ here (another holder equivocated)
                raise CryptoError(
                    f"the biprimality answers from holder {pid!r} do not fit the moduli seen "
                    "here (malformed, or a holder sent different values to different holders): "
                    "no key"
                )
            answers[j] = answer
        if first:
            self.first = answers
            self.waiting = list(self.moduli)
            return self._next_candidate()
        k = self.candidate
        n = self.moduli[k]
        self.rest[k] = answers
        if _passes(n, [answers[j] for j in sorted(answers)]):
            self.party.choose(k, n)
            self.answers = [[self.first[j][k], answers[j]] for j in sorted(answers)]
            return self._key_shares()
        return self._next_candidate()

    def _well_formed(self, answer: Any, first: bool) -> bool:
        """An answer of the shape asked: the first round for every tested modulus, or the
        other rounds for the candidate at hand; residues modulo its ``N``."""

        def residues(values: Any, count: int, n: int) -> bool:
            return (
                isinstance(values, list)
                and len(values) == count
                and all(isinstance(a, int) and 0 <= a < n for a in values)
            )

        if first:
            return (
                isinstance(answer, dict)
                and set(answer) == set(self.moduli)
                and all(residues(answer[k], 1, n) for k, n in self.moduli.items())
            )
        rounds = self.params.biprimality_rounds - 1
        return residues(answer, rounds, self.moduli[self.candidate])

    def _next_candidate(self) -> Outgoing:
        while self.waiting:
            k = self.waiting.pop(0)
            n = self.moduli[k]
            if _passes(n, [self.first[j][k] for j in sorted(self.first)]):
                self.candidate = k
                prm = self.params
                rest = self.party.biprimality_answers(k, n, range(1, prm.biprimality_rounds))
                return self._commit(rest, "rest")
        # The whole batch is discarded: open it, so that a holder that made it fail is named
        # or the attempt stops — a batch is never thrown away unseen, pass after pass.
        assert self.shares_commit is not None
        (p, q), nonce = self.shares_commit
        self.state = "discarded"
        return _broadcast(self.params, (p, q, nonce, self._view()))

    def _view(self) -> bytes:
        """A digest of the batch's public values as this holder saw them: every modulus, the
        commitments to the shares, every biprimality answer. Equal for every honest holder
        unless a holder sent different values to different holders."""
        rest = sorted((k, sorted(a.items())) for k, a in self.rest.items())
        first = sorted((j, sorted(a.items())) for j, a in self.first.items())
        body = (self.batch_moduli, sorted(self.shares_commitments.items()), first, rest)
        return hashlib.sha256(b"fedlora/keygen/batch-view\0" + repr(body).encode()).digest()

    def _on_discarded(self, opened: Mapping[int, Any]) -> Outgoing:
        """Every holder's opened shares of the discarded batch, checked in this order (each
        check names only a holder that certainly deviated; what might be another's doing
        stops the attempt unattributed):

        1. the shape of each opening (the batch size is public): else its holder is named;
        2. each opening opens its commitment, made before any modulus was open, and each share
           has its residue mod 4 and its range (party 1 ≡ 3, the others ≡ 0; below the bound
           the construction gives): else its holder is named (these involve nothing but the
           holder's own signed values, so they come before the views);
        3. every holder saw the same batch (the view digests agree): else stop — nothing below
           could tell an equivocating holder from the one it lied to;
        4. each candidate's ``p·q`` is its opened modulus, and ``p``, ``q`` have no factor the
           sieve excludes: else stop (a holder committed to other shares than it shared, or
           fed the sieve a zero);
        5. for each tested modulus that is a product of two primes — one the test must pass —
           every holder's answers are recomputed from its opened shares: a holder whose
           answer differs is named.

        Raises:
            CryptoError: the fault, with ``party`` where one holder can be named.
        """
        prm = self.params
        shares: dict[int, tuple[list[int], list[int]]] = {}
        nonces: dict[int, bytes] = {}
        views: dict[int, bytes] = {}
        for j in sorted(opened):
            pid = prm.parties[j - 1]
            try:
                p, q, nonce, view = opened[j]
                ok = (
                    _is_digest(nonce)
                    and _is_digest(view)
                    and _int_list(p, prm.batch)
                    and _int_list(q, prm.batch)
                )
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise CryptoError(f"holder {pid!r} sent a malformed opening", party=pid)
            shares[j], nonces[j], views[j] = (list(p), list(q)), nonce, view
        for j, (ps, qs) in shares.items():
            committed = _commitment(nonces[j], ("candidate-shares", ps, qs))
            if not hmac.compare_digest(committed, self.shares_commitments[j]):
                pid = prm.parties[j - 1]
                raise CryptoError(
                    f"holder {pid!r} opened shares of the discarded candidates other than it "
                    "committed to",
                    party=pid,
                )
        m = prm.sieve_modulus
        spread = max(1, ((1 << (prm.bits // 2 - 2)) // prm.ell - m) // m)
        for j, (ps, qs) in shares.items():
            low = ((3 << (prm.bits // 2 - 2)) // m + 1) * m if j == 1 else 0
            residue = 3 if j == 1 else 0
            if not all(low <= x < low + m * (spread + 1) and x % 4 == residue for x in ps + qs):
                pid = prm.parties[j - 1]
                raise CryptoError(
                    f"holder {pid!r}'s shares of the discarded candidates are outside the "
                    "range or residue mod 4 the construction gives",
                    party=pid,
                )
        mine = self._view()
        for j, view in views.items():
            if not hmac.compare_digest(view, mine):
                raise CryptoError(
                    f"holder {prm.parties[j - 1]!r} saw other values in this batch than this "
                    "holder: a holder sent different values to different holders; no key"
                )
        sieved = m // 4
        for k, n in enumerate(self.batch_moduli):
            p = sum(shares[j][0][k] for j in shares)
            q = sum(shares[j][1][k] for j in shares)
            if p * q != n:
                raise CryptoError(
                    f"candidate {k}'s modulus is not the product of the holders' committed "
                    "shares (a holder committed to other shares than it shared): no key"
                )
            if gmpy2.gcd(p, sieved) != 1 or gmpy2.gcd(q, sieved) != 1:
                raise CryptoError(
                    f"candidate {k} has a factor the sieve excludes (a holder fed the sieve a "
                    "zero): no key"
                )
            if k not in self.moduli:
                continue  # N of the wrong size or with a small factor: p·q is no biprime
            if not (gmpy2.is_prime(p, 8) and gmpy2.is_prime(q, 8)):
                continue  # discarded rightly
            asked = [(self.first, range(1))] + (
                [(self.rest[k], range(1, prm.biprimality_rounds))] if k in self.rest else []
            )
            for j in sorted(shares):
                pid = prm.parties[j - 1]
                for given, rounds in asked:
                    answer = [int(a) for a in (given[j][k] if given is self.first else given[j])]
                    right = biprimality_answers(prm, j, shares[j][0][k], shares[j][1][k], n, rounds)
                    if answer != right:
                        raise CryptoError(
                            f"holder {pid!r} gave a wrong biprimality answer for candidate {k}, "
                            "whose modulus is a product of two primes (its shares, opened, "
                            "give another answer)",
                            party=pid,
                        )
        return self._next_pass()

    # -- 5. the key ----------------------------------------------------------------------------
    def _key_shares(self) -> Outgoing:
        self.state = "key-shares"
        return self.party.key_shares()

    def _on_key_shares(self, incoming: Mapping[int, Any]) -> Outgoing:
        # Every holder sends to every holder in every round (the others' reshare is empty), so
        # a missing message is always a fault the exchange can name.
        self.state = "key-reshared"
        return self.party.key_reshare(incoming) or _broadcast(self.params, None)

    def _on_key_reshared(self, reshared: Mapping[int, Any]) -> Outgoing:
        residue = self.party.key_finish(reshared)
        self.state = "residues"
        return _broadcast(self.params, residue)

    def _on_residues(self, residues: Mapping[int, Any]) -> Outgoing:
        prm, n = self.params, self.party.modulus
        self.residues = dict(residues)
        self.theta = theta_from_residues(residues, n, prm.threshold, prm.parties)
        if abs(self.party.key_share).bit_length() > share_bound_bits(prm):
            # an honest computation stays below the bound: a reshare sent here was wrong
            raise CryptoError(
                "this holder's key share is above the bound the construction gives (a holder "
                "sent it a wrong reshare): no key"
            )
        v = square_from_transcript(n, prm.session)
        self.state = "verification-keys"
        return _broadcast(prm, verification_key(n, v, prm.delta, self.party.key_share))

    def _on_verification_keys(self, vks: Mapping[int, Any]) -> Outgoing:
        prm, n = self.params, self.party.modulus
        public = ThresholdPublicKey(
            n=n,
            threshold=prm.threshold,
            party_ids=prm.parties,
            v=square_from_transcript(n, prm.session),
            verification_keys=tuple(vks[j] for j in sorted(vks)),
            theta=self.theta,
            share_bits=share_bound_bits(prm),
        )
        self.public = public
        self.share = KeyShare(
            prm.parties[self.index - 1], self.index, self.party.key_share, public.fingerprint
        )
        # Before the key is accepted, every holder decrypts a ciphertext derived from the
        # session (a plaintext nobody chose) with a proof, and every t-subset of the answers
        # must combine to it: a wrong share or verification key is found (where it shows; not
        # blamed — a holder sent a wrong reshare looks the same). Each answer names the key it
        # was made for: holders that hold different keys stop before any proof is read.
        n2 = public.nsquare
        seed = hashlib.shake_256(b"fedlora/keygen/probe\0" + prm.session + public.fingerprint)
        stream = seed.digest(2 * ((n2.bit_length() + 7) // 8) + 32)
        half = len(stream) // 2
        m0 = int.from_bytes(stream[:half], "big") % n
        r0 = int.from_bytes(stream[half:], "big") % n or 1
        c = (1 + m0 * n) * int(gmpy2.powmod(r0, n, n2)) % n2
        mine = partial_decrypt(public, self.share, [c], backend=None)
        self.probe = (c, m0, mine.ciphertexts_digest)
        self.state = "probe"
        proof = (list(mine.values), mine.proof.challenge, mine.proof.response)
        return _broadcast(prm, (public.fingerprint, *proof))

    def _on_probe(self, answers: Mapping[int, Any]) -> Outgoing:
        prm, public = self.params, self.public
        assert public is not None
        c, m0, digest = self.probe
        for j in sorted(answers):
            if not hmac.compare_digest(answers[j][0], public.fingerprint):
                raise CryptoError(
                    f"holder {prm.parties[j - 1]!r} holds another key than this holder (a holder "
                    "sent different verification keys to different holders): no key"
                )
        partials = []
        for j in sorted(answers):
            _, values, challenge, response = answers[j]
            partial = PartialDecryption(
                party_id=prm.parties[j - 1],
                index=j,
                key_fingerprint=public.fingerprint,
                ciphertexts_digest=digest,
                values=tuple(values),
                proof=DecryptionProof(challenge, response),
            )
            try:
                verify_partial_decryption(public, [c], partial, ciphertexts_digest=digest)
            except VerificationError as exc:
                # not pinned on the holder: a wrong reshare sent to it gives the same failure
                raise CryptoError(
                    f"{exc} (its share is wrong: it computed it wrongly, or a holder sent it a "
                    "wrong reshare); no key"
                ) from None
            partials.append(partial)
        failing = []
        for subset in itertools.combinations(partials, prm.threshold):
            try:
                ok = combine_verified_partials(public, 1, list(subset)) == [m0]
            except CryptoError:
                ok = False
            if not ok:
                failing.append({p.party_id for p in subset})
        if failing:
            common = set.intersection(*failing)
            who = sorted(common)[0] if len(common) == 1 else None
            raise CryptoError(
                "the generated key does not decrypt with every set of holders"
                + (
                    f": holder {who!r}'s share or verification key is wrong (it computed it "
                    "wrongly, or a holder sent it a wrong reshare)"
                    if who
                    else ""
                ),
            )
        self.transcript = hashlib.sha256(
            b"fedlora/keygen/transcript\0"
            + repr(
                (
                    prm.session.hex(),
                    public.n,
                    self.answers,
                    sorted(self.residues.items()),
                    self.theta,
                    public.fingerprint.hex(),
                )
            ).encode()
        ).digest()
        self.state = "transcript"
        return _broadcast(prm, self.transcript)

    def _on_transcript(self, seen: Mapping[int, Any]) -> None:
        if any(not hmac.compare_digest(bytes(d), self.transcript) for d in seen.values()):
            raise CryptoError(
                "the holders saw different public values (a holder sent different values to "
                "different holders): no key"
            )
        assert self.public is not None and self.share is not None
        self.result = PartyResult(
            self.public, self.share, self.opened, self.tested, self.passes, self.transcript
        )
        self.state = "done"
        return None


def run_party(
    params: KeygenParams, index: int, exchange: Exchange, *, max_passes: int = 64
) -> PartyResult:
    """Holder ``index``'s whole key generation (:class:`PartyRun`), every message through
    ``exchange``.

    Raises:
        CryptoError: no modulus within ``max_passes`` batches, or a holder's fault.
    """
    run = PartyRun(params, index, max_passes=max_passes)
    outgoing: Outgoing | None = run.start()
    while outgoing is not None:
        outgoing = run.step(exchange(outgoing))
    assert run.result is not None
    return run.result


@dataclass(frozen=True)
class GeneratedKey:
    """The outcome of :func:`generate_in_process`: the public key and every party's share."""

    public_key: ThresholdPublicKey
    shares: tuple[KeyShare, ...]
    candidates: int
    biprimality_tests: int
    passes: int


class ThreadExchange:
    """:data:`Exchange` for ℓ threads in one process: a barrier per round."""

    def __init__(self, ell: int) -> None:
        self.ell = ell
        self._outboxes: dict[int, Mapping[int, Any]] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(ell)

    def for_party(self, index: int) -> Exchange:
        def exchange(outgoing: Mapping[int, Any]) -> dict[int, Any]:
            with self._lock:
                self._outboxes[index] = outgoing
            self._barrier.wait()
            incoming = {j: box[index] for j, box in sorted(self._outboxes.items()) if index in box}
            self._barrier.wait()  # everyone has read this round before the next one is written
            return incoming

        return exchange

    def abort(self) -> None:
        self._barrier.abort()


def generate_in_process(
    params: KeygenParams,
    *,
    max_passes: int = 64,
    exchange_for: Callable[[int], Exchange] | None = None,
    abort: Callable[[], None] | None = None,
) -> GeneratedKey:
    """Run every holder in a thread of this process (tests and measurements; the ceremony runs
    each holder on its own machine). The messages pass in memory, or through
    ``exchange_for(index)`` (the ceremony's secure exchange over a test relay, say), with
    ``abort`` releasing every waiting holder when one fails.

    Raises:
        CryptoError: no modulus within ``max_passes`` batches (or the first holder's failure).
    """
    hub = ThreadExchange(params.ell)
    exchange_for = exchange_for or hub.for_party
    stop = abort or hub.abort
    results: dict[int, PartyResult] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = run_party(params, index, exchange_for(index), max_passes=max_passes)
        except BaseException as exc:  # the first failure ends every holder's wait
            errors.append(exc)
            stop()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, params.ell + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:  # the cause first: the others only saw their wait end
        causes = [e for e in errors if getattr(e, "party", None) != "relay"] or errors
        real = [e for e in causes if not isinstance(e, threading.BrokenBarrierError)] or causes
        raise real[0]
    keys = {r.public_key for r in results.values()}
    if len(keys) != 1:
        raise CryptoError("the holders computed different public keys")
    first = results[1]
    return GeneratedKey(
        first.public_key,
        tuple(results[i].share for i in sorted(results)),
        first.candidates,
        first.biprimality_tests,
        first.passes,
    )
