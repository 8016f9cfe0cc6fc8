"""AVX-512 IFMA multi-buffer exponentiation: eight bases at a time, constant-time, every core.

Partial decryption raises every ciphertext of a vector to one secret exponent modulo n², and an
obfuscator pool raises random bases to n: many bases, one exponent, one modulus. Processors with
AVX-512 IFMA (Intel since Ice Lake, AMD since Zen 4) multiply 52-bit limbs in eight 64-bit lanes
at once, so :class:`IfmaBackend` runs eight such exponentiations side by side, one per lane, in
fedlora's C kernel (``_mbexp.c``; almost-Montgomery multiplication after Gueron 2012, the
multi-buffer layout of Gueron and Krasnov). Every lane follows the same exponent, so the lanes
share one control flow; the fixed 5-bit window reads its table by scanning every entry with
masks, and no step depends on a bit of the exponent or of a base: every call runs the same
constant-time code, for secret and public operands alike. Only a secret exponent's length in
64-bit words shapes the loop, as in OpenSSL's constant-time exponentiation.

Batches of fewer than :data:`MIN_BATCH` bases, one base with many exponents, even moduli and
moduli wider than the kernel's 8,318 bits go to the ``fallback`` backend (OpenSSL's, where there
is one).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from types import ModuleType

import gmpy2

from fedlora.crypto._backend import (
    ModexpBackend,
    MultiExp,
    ThreadsBackend,
    _invert,
    _require_modulus,
    pippenger,
)
from fedlora.crypto._util import require_int
from fedlora.errors import CryptoError

__all__ = ["IfmaBackend", "load_kernel"]

LANES = 8
MIN_BATCH = 4  # below this, most lanes would idle: the fallback is faster
MIN_MULTI = 2048  # a multi-exponentiation piece of fewer bases: gmpy2's bucket method is faster
_MAX_LIMBS = 160  # the kernel's bound: moduli up to 52·160 − 2 bits
_MAX_CONTEXTS = 64


@lru_cache(maxsize=1)
def load_kernel() -> ModuleType | None:
    """The compiled kernel where it was built and this CPU and OS run AVX-512 IFMA, else None."""
    try:
        from fedlora.crypto import _mbexp  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return _mbexp if _mbexp.available() else None
    except Exception:  # an odd build: not used
        return None


class _Modulus:
    """What the kernel needs of a modulus, computed once: its limbs, R² mod N and −N⁻¹ mod 2⁵²."""

    def __init__(self, modulus: int) -> None:
        bits = modulus.bit_length()
        self.width = (bits + 7) // 8
        self.limbs = max(2, -(-(bits + 2) // 52))  # R = 2^(52·limbs) > 4N; the kernel wants 2+
        self.modulus = modulus.to_bytes(self.width, "big")
        self.rr = int(gmpy2.powmod(2, 104 * self.limbs, modulus)).to_bytes(self.width, "big")
        self.k0 = int(-gmpy2.invert(modulus, 1 << 52) % (1 << 52))


class IfmaBackend(ThreadsBackend):
    """The multi-buffer kernel on a pool of threads (see the module doc).

    Args:
        workers: threads per call (default: every core the process may run on).
        fallback: the backend for what the kernel does not take (default: OpenSSL's where there
            is a libcrypto, else gmpy2).

    Raises:
        CryptoError: the kernel was not built, or this CPU does not run AVX-512 IFMA.
    """

    name = "ifma"

    def __init__(self, workers: int | None = None, fallback: ModexpBackend | None = None) -> None:
        super().__init__(workers)
        kernel = load_kernel()
        if kernel is None:
            raise CryptoError(
                "the AVX-512 IFMA kernel is not available (not built, or this CPU does not run "
                "AVX-512 IFMA)"
            )
        self.kernel = kernel
        if fallback is None:
            from fedlora.crypto._openssl import OpenSSLBackend, load_libcrypto

            fallback = (
                OpenSSLBackend(self.workers)
                if load_libcrypto() is not None
                else ThreadsBackend(self.workers)
            )
        self.fallback = fallback
        self._moduli: dict[int, _Modulus] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IfmaBackend(workers={self.workers}, fallback={self.fallback!r})"

    def _context(self, modulus: int) -> _Modulus:
        with self._lock:
            found = self._moduli.get(modulus)
            if found is None:
                found = _Modulus(modulus)
                if len(self._moduli) < _MAX_CONTEXTS:
                    self._moduli[modulus] = found
            return found

    def _bases(self, bases: Sequence[int], exponent: int, modulus: int, secret: bool) -> list[int]:
        m = int(_require_modulus(modulus))
        e = require_int("exponent", exponent)
        usable = m % 2 == 1 and m > 1 and m.bit_length() + 2 <= 52 * _MAX_LIMBS
        if not usable or len(bases) < MIN_BATCH:
            run = self.fallback.powmod_bases_secret if secret else self.fallback.powmod_bases
            return run(bases, exponent, modulus)
        if e < 0:
            bases = [int(_invert(b, gmpy2.mpz(m), i)) for i, b in enumerate(bases)]
            e = -e
        ctx = self._context(m)
        # A secret exponent's length shows only to the 64-bit word (as OpenSSL's constant-time
        # code, which works in words); padding it further would cost an obfuscator, whose
        # exponent n is public and half the modulus' length, twice the work.
        width = -(-max(1, (e.bit_length() + 7) // 8) // 8) * 8 if secret else 0
        exp = e.to_bytes(max(width, (e.bit_length() + 7) // 8, 1), "big")
        w = ctx.width

        def run_chunk(chunk: Sequence[int]) -> list[int]:
            data = b"".join((b if 0 <= b < m else b % m).to_bytes(w, "big") for b in chunk)
            out = self.kernel.powmod(data, len(chunk), exp, ctx.modulus, ctx.rr, ctx.k0, ctx.limbs)
            return [int.from_bytes(out[i : i + w], "big") for i in range(0, len(out), w)]

        items = [int(b) for b in bases]
        # One chunk per worker, each a whole number of eight-lane groups.
        size = -(-len(items) // self.workers)
        size = -(-size // LANES) * LANES
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        if len(chunks) == 1:
            return run_chunk(chunks[0])
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            parts = list(pool.map(run_chunk, chunks))
        return [x for part in parts for x in part]

    def powmod_bases(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """``[b ** exponent % modulus for b in bases]`` on the kernel, eight bases per lane group.

        Raises:
            CryptoError: ``modulus`` < 1, or a negative ``exponent`` with a base that is not
                invertible modulo ``modulus`` (named by index).
        """
        return self._bases(bases, exponent, modulus, secret=False)

    def powmod_bases_secret(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """As :meth:`powmod_bases`, the exponent padded to a public length (see the module doc);
        small batches go to the fallback's constant-time code."""
        return self._bases(bases, exponent, modulus, secret=True)

    def powmod_exponents(self, base: int, exponents: Sequence[int], modulus: int) -> list[int]:
        """One base, many exponents: the fallback's (lanes need one shared exponent)."""
        return self.fallback.powmod_exponents(base, exponents, modulus)

    def multi_powmods(self, jobs: Sequence[MultiExp], modulus: int) -> list[int]:
        """Each job's product on the kernel's multi-exponentiation (the bucket method, eight lanes
        each summing an eighth of the bases, see ``run_multi`` in ``_mbexp.c``); the jobs of the
        whole batch are cut into pieces of at least :data:`MIN_MULTI` bases that run on the
        worker threads together, so that one round's proof checks keep every core busy. Jobs
        too small for the kernel, and moduli it does not take, run gmpy2's bucket method.
        Public operands only: which bucket a base joins follows its exponent's digits."""
        m = int(_require_modulus(modulus))
        usable = m % 2 == 1 and m > 1 and m.bit_length() + 2 <= 52 * _MAX_LIMBS
        total = sum(len(bases) for bases, _ in jobs)
        piece = max(MIN_MULTI, -(-total // self.workers))
        results = [1] * len(jobs)
        pieces: list[tuple[int, Sequence[int], Sequence[bytes]]] = []
        for j, (bases, exponents) in enumerate(jobs):
            if not usable or len(bases) < MIN_MULTI:
                results[j] = pippenger(bases, exponents, m)
                continue
            count = -(-len(bases) // piece)
            size = -(-len(bases) // count)
            for i in range(0, len(bases), size):
                pieces.append((j, bases[i : i + size], exponents[i : i + size]))
        if not pieces:
            return results
        ctx = self._context(m)
        w = ctx.width

        def run(item: tuple[int, Sequence[int], Sequence[bytes]]) -> int:
            _, bases, exponents = item
            data = b"".join((b if 0 <= b < m else b % m).to_bytes(w, "big") for b in bases)
            out = self.kernel.multiexp(
                data, len(bases), b"".join(exponents), ctx.modulus, ctx.rr, ctx.k0, ctx.limbs
            )
            acc = gmpy2.mpz(1)
            for i in range(0, len(out), w):
                acc = acc * int.from_bytes(out[i : i + w], "big") % m
            return int(acc)

        if len(pieces) == 1:
            parts = [run(pieces[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(pieces))) as pool:
                parts = list(pool.map(run, pieces))
        for (j, _, _), part in zip(pieces, parts):
            results[j] = results[j] * part % m
        return [int(r) for r in results]
