"""Safe-prime generation with a combined sieve.

A safe prime is ``p = 2p' + 1`` with ``p'`` prime. Threshold Paillier (Shoup 2000; Damgård and
Jurik 2001, §4) needs ``n = pq`` with both factors safe so that the group of squares mod ``n`` is
cyclic of order ``p'q'``. Safe primes are rare (density ~ 1/ln(x)² for both conditions), so a
naive search is slow. We sieve ``p'`` and ``2p'+1`` together against the odd primes below
:data:`SIEVE_BOUND` (Wiener, "Safe prime generation with a combined sieve", 2003): a candidate
``p'`` survives only if neither it nor ``2p'+1`` has a small factor. Survivors get a cheap base-2
Fermat test on ``p`` first (it rejects most), then Miller–Rabin on both.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import gmpy2
import numpy as np

from fedlora.crypto._backend import default_workers
from fedlora.crypto._util import Rng, require_int, system_rng
from fedlora.errors import CryptoError

SIEVE_BOUND = 1 << 17
_WINDOW = 1 << 15  # candidates p' = start + 2i, i < _WINDOW, sieved in one numpy pass
_MR_ROUNDS = 40  # Miller–Rabin rounds: error < 4^-40 per prime, on top of the sieve and Fermat


@lru_cache(maxsize=1)
def _small_primes() -> np.ndarray:
    flags = np.ones(SIEVE_BOUND, dtype=bool)
    flags[:2] = False
    for i in range(2, int(SIEVE_BOUND**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = False
    primes = np.nonzero(flags)[0]
    return primes[primes > 2].astype(np.int64)


def _sieve_window(start: int) -> np.ndarray:
    """Offsets ``i`` for which neither ``start + 2i`` nor ``2(start + 2i) + 1`` has a small factor."""
    primes = _small_primes()
    ok = np.ones(_WINDOW, dtype=bool)
    # Residues of the big start value modulo every small prime, computed once per window.
    residues = np.array(
        [int(gmpy2.f_mod(gmpy2.mpz(start), int(p))) for p in primes], dtype=np.int64
    )
    inv2 = (primes + 1) // 2  # 2⁻¹ mod l
    # start + 2i ≡ 0 (mod l)      ⟺ i ≡ -start · 2⁻¹
    # 2(start + 2i) + 1 ≡ 0       ⟺ start + 2i ≡ (l-1)/2 ⟺ i ≡ ((l-1)/2 - start) · 2⁻¹
    first = (-residues % primes) * inv2 % primes
    second = (((primes - 1) // 2 - residues) % primes) * inv2 % primes
    for p, a, b in zip(primes.tolist(), first.tolist(), second.tolist()):
        ok[a::p] = False
        ok[b::p] = False
    return np.nonzero(ok)[0]


def _search(bits: int, windows: int, rng: Rng) -> int | None:
    """Search ``windows`` sieve windows from a random start; return a safe prime or ``None``."""
    two = gmpy2.mpz(2)
    for _ in range(windows):
        # p' has bits-1 bits with its top two bits set, so p = 2p'+1 has exactly ``bits`` bits
        # with its top two bits set and the product of two such primes has exactly 2·bits bits.
        start = rng.getrandbits(bits - 1) | (3 << (bits - 3)) | 1
        for i in _sieve_window(start).tolist():
            q = gmpy2.mpz(start + 2 * i)
            p = 2 * q + 1
            if p.bit_length() != bits:
                break
            # powmod_base_list releases the GIL, so threads searching in parallel scale.
            if gmpy2.powmod_base_list([two], p - 1, p)[0] != 1:
                continue
            if gmpy2.is_prime(q, _MR_ROUNDS) and gmpy2.is_prime(p, _MR_ROUNDS):
                return int(p)
    return None


def generate_safe_prime(bits: int, *, rng: Rng | None = None) -> int:
    """Return a random safe prime of exactly ``bits`` bits whose top two bits are set.

    Args:
        bits: 16 ≤ bits ≤ 8192.
        rng: randomness source; ``None`` means the OS CSPRNG. A seeded ``random.Random`` gives
            reproducible primes for tests and vectors, never for real keys.

    Raises:
        CryptoError: ``bits`` out of range.
    """
    bits = require_int("bits", bits, low=16, high=8192)
    source = system_rng(rng)
    while True:
        found = _search(bits, 1, source)
        if found is not None:
            return found


def generate_safe_prime_pair(bits: int, *, workers: int | None = None) -> tuple[int, int]:
    """Two distinct random safe primes of ``bits`` bits, searched on ``workers`` threads.

    The expensive step, the Fermat test of each sieve survivor, runs in gmpy2 with the GIL
    released, so threads share the search without processes (and without the re-import of the
    caller's ``__main__`` that spawned processes would need).

    Raises:
        CryptoError: ``bits`` out of range.
    """
    bits = require_int("bits", bits, low=16, high=8192)
    workers = default_workers() if workers is None else require_int("workers", workers, low=1)
    if workers == 1:
        return _distinct_pair(bits)
    found: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    rng = system_rng(None)

    def search() -> None:
        while not done.is_set():
            prime = _search(bits, 1, rng)
            if prime is None:
                continue
            with lock:
                if prime not in found:
                    found.append(prime)
                if len(found) >= 2:
                    done.set()

    threads = [
        threading.Thread(target=search, name=f"fedlora-primes-{i}", daemon=True)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found[0], found[1]


def _distinct_pair(bits: int) -> tuple[int, int]:
    p = generate_safe_prime(bits)
    q = generate_safe_prime(bits)
    while q == p:
        q = generate_safe_prime(bits)
    return p, q


def is_safe_prime(p: int) -> bool:
    """True when ``p`` and ``(p-1)/2`` are both (probable) primes."""
    p = int(p)
    if p < 7 or p % 2 == 0:
        return False
    return bool(gmpy2.is_prime(p, _MR_ROUNDS) and gmpy2.is_prime((p - 1) // 2, _MR_ROUNDS))


def require_safe_prime(name: str, p: int) -> int:
    """Return ``p`` or raise :class:`CryptoError` if it is not a safe prime."""
    p = require_int(name, p, low=7)
    if not is_safe_prime(p):
        raise CryptoError(f"{name} is not a safe prime")
    return p
