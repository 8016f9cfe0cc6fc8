"""The modular-exponentiation backend: the one seam between crypto's math and the hardware.

Nearly all of fedlora's cost is exponentiation over long vectors: ``rⁿ mod n²`` for every
obfuscator, ``c^(2Δsᵢ) mod n²`` for every partial decryption, ``c^(2λᵢ)`` when combining. Each
batch function in :mod:`fedlora.crypto` takes a ``backend`` — any object with the methods of
:class:`ModexpBackend` — chosen at the edge of the program (STYLE.md §16, pyca's pattern) and
handed in; ``None`` means :func:`fedlora.crypto._factory.default_backend`. crypto itself never
imports a GPU library. This module holds the interface and the reference backend; choosing one
(and the front doors that use the default) is :mod:`fedlora.crypto._factory`, so the backends
it chooses among import this module and nothing imports back.

Calls in which any operand is secret (a key share or prime in the exponent or modulus, the
randomness ``r`` of an obfuscator in the base) go to :meth:`ModexpBackend.powmod_bases_secret`,
so that a constant-time backend can route exactly those calls and leave the public ones (proof
checks, combination) on the fastest code it has.

:class:`ThreadsBackend` is the default: gmpy2's ``powmod_base_list`` (many bases, one exponent)
and ``powmod_exp_list`` (one base, many exponents) release the GIL while they work, so plain
threads scale across cores without pickling multi-kilobyte integers to other processes. Work is
cut into one contiguous chunk per worker, and results come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

import gmpy2

from fedlora.crypto._util import require_int
from fedlora.errors import CryptoError

__all__ = ["ModexpBackend", "MultiExp", "ThreadsBackend", "default_workers", "pippenger"]

T = TypeVar("T")
R = TypeVar("R")

MultiExp = tuple[Sequence[int], Sequence[bytes]]
"""One multi-exponentiation: bases, and as many exponents as big-endian bytes of one width."""

_MIN_CHUNK = 16  # below this, thread start-up costs more than the work


class ModexpBackend(Protocol):
    """What crypto asks of a modular-exponentiation backend; results come back in input order.

    Every method takes Python ``int`` operands and returns a new ``list[int]``; ``modulus`` is
    at least 1. A negative exponent means the inverse raised to its absolute value and is
    allowed only when every base it applies to is invertible modulo ``modulus`` (otherwise
    :class:`~fedlora.errors.CryptoError`). An implementation must be safe to call from several
    threads at once (an :class:`~fedlora.crypto.ObfuscatorPool` fills in the background while
    the caller encrypts).
    """

    name: str

    def powmod_bases(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """``[b ** exponent % modulus for b in bases]``, every operand public."""
        ...

    def powmod_exponents(self, base: int, exponents: Sequence[int], modulus: int) -> list[int]:
        """``[base ** e % modulus for e in exponents]``, every operand public."""
        ...

    def powmod_bases_secret(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """As :meth:`powmod_bases`, where the bases, the exponent or the modulus are secret.

        Partial decryption (the exponent holds a key share), Paillier decryption (the prime
        ``p − 1`` in the exponent, ``p²`` as modulus) and obfuscators (the random ``r`` in the
        base) come here. A backend that offers constant-time code runs it for these calls.
        """
        ...

    def multi_powmods(self, jobs: Sequence[MultiExp], modulus: int) -> list[int]:
        """``[∏ bases[i] ** exponents[i] % modulus for bases, exponents in jobs]``: the random
        linear combinations of the proof checks, every operand public (see :func:`multi_powmod`
        for the shape of a job). All jobs are one batch, so a backend can spread the whole
        round's proof checks over its cores at once."""
        ...


def default_workers() -> int:
    """Worker threads for heavy modexp work: every core the process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _require_modulus(modulus: int) -> gmpy2.mpz:
    return gmpy2.mpz(require_int("modulus", modulus, low=1))


class ThreadsBackend:
    """gmpy2 on a pool of threads: the default backend, and the reference for any other.

    **Not constant-time.** GMP's ``mpz_powm`` is built for speed: its running time and memory
    access pattern depend on the bits of the exponent and on the sizes of the operands, so
    :meth:`powmod_bases_secret` runs the same code as :meth:`powmod_bases`. The secret calls are
    separated only so that a constant-time backend can take them over.

    Args:
        workers: threads per call, 1 ≤ workers; ``None`` means every core the process may run
            on (:func:`default_workers`). A batch of fewer than 16 values per thread runs on
            fewer threads, and one chunk runs on the calling thread.
    """

    name = "gmpy2-threads"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = (
            default_workers() if workers is None else require_int("workers", workers, low=1)
        )

    def __repr__(self) -> str:
        return f"ThreadsBackend(workers={self.workers})"

    def map_chunks(self, func: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
        """Apply ``func`` to contiguous chunks of ``items`` on the worker threads; concatenate.

        ``func`` must release the GIL for the threads to run in parallel (gmpy2's list
        functions do).
        """
        size = max(_MIN_CHUNK, -(-len(items) // self.workers))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        if len(chunks) <= 1:
            return func(items) if items else []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(chunks))) as pool:
            parts = list(pool.map(func, chunks))
        out: list[R] = []
        for part in parts:
            out.extend(part)
        return out

    def powmod_bases(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """``[b ** exponent % modulus for b in bases]`` on the worker threads.

        Raises:
            CryptoError: ``modulus`` < 1, or a negative ``exponent`` with a base that is not
                invertible modulo ``modulus`` (named by index).
        """
        m = _require_modulus(modulus)
        e = gmpy2.mpz(require_int("exponent", exponent))
        if e < 0:
            # gmpy2 aborts the whole process (GMP's "divide by zero") on a non-invertible base
            # with a negative exponent, so invert here, where a failure is an exception.
            bases = [_invert(b, m, i) for i, b in enumerate(bases)]
            e = -e

        def run(chunk: Sequence[int]) -> list[int]:
            return [int(x) for x in gmpy2.powmod_base_list(list(chunk), e, m)]

        return self.map_chunks(run, bases)

    def powmod_bases_secret(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """Same as :meth:`powmod_bases`; gmpy2 is not constant-time (see the class docstring)."""
        return self.powmod_bases(bases, exponent, modulus)

    def powmod_exponents(self, base: int, exponents: Sequence[int], modulus: int) -> list[int]:
        """``[base ** e % modulus for e in exponents]`` on the worker threads.

        Raises:
            CryptoError: ``modulus`` < 1, or a negative exponent while ``base`` is not
                invertible modulo ``modulus``.
        """
        m = _require_modulus(modulus)
        b = gmpy2.mpz(base)
        if any(e < 0 for e in exponents):
            _invert(b, m, 0)  # the same abort as in powmod_bases, refused the same way

        def run(chunk: Sequence[int]) -> list[int]:
            return [int(x) for x in gmpy2.powmod_exp_list(b, list(chunk), m)]

        return self.map_chunks(run, exponents)

    def multi_powmods(self, jobs: Sequence[MultiExp], modulus: int) -> list[int]:
        """Pippenger's bucket method (:func:`pippenger`) per job, on the calling thread: gmpy2's
        single multiplications hold the GIL, so threads would not run them in parallel."""
        m = _require_modulus(modulus)
        return [pippenger(bases, exponents, m) for bases, exponents in jobs]


def _invert(value: int, modulus: gmpy2.mpz, index: int) -> gmpy2.mpz:
    if modulus == 1:
        return gmpy2.mpz(0)
    try:
        return gmpy2.invert(value, modulus)
    except ZeroDivisionError:
        raise CryptoError(
            f"base[{index}] is not invertible modulo the modulus, so it has no negative power"
        ) from None


if TYPE_CHECKING:
    _CHECK: ModexpBackend = ThreadsBackend()  # mypy proves the default meets the protocol


def pippenger(bases: Sequence[int], exponents: Sequence[bytes], modulus: int) -> int:
    """``∏ bases[j] ** exponents[j] mod modulus`` with gmpy2 on the calling thread.

    Pippenger's bucket method with 8-bit windows: for each byte position, bases are multiplied
    into one of 255 buckets by their digit and the buckets are summed with two running products.
    For N bases and k-byte exponents this costs about k·(N + 512) multiplications instead of the
    ~1.5·8k·N of N separate exponentiations — the batch proofs in threshold decryption need
    this for vectors of tens of thousands of ciphertexts. It is the gmpy2 backend's
    multi-exponentiation and the reference for the others (the IFMA kernel runs the same method
    eight lanes at a time).
    """
    m = gmpy2.mpz(modulus)
    if len(bases) != len(exponents):
        raise ValueError("bases and exponents differ in length")
    if not bases:
        return 1
    width = len(exponents[0])
    if any(len(e) != width for e in exponents):
        raise ValueError("exponents differ in width")
    gbases = [gmpy2.mpz(b) for b in bases]
    acc = gmpy2.mpz(1)
    for pos in range(width):
        if pos:
            for _ in range(8):
                acc = acc * acc % m
        buckets: list[gmpy2.mpz | None] = [None] * 256
        for b, e in zip(gbases, exponents):
            d = e[pos]
            if d:
                cur = buckets[d]
                buckets[d] = b if cur is None else cur * b % m
        running = gmpy2.mpz(1)
        total = gmpy2.mpz(1)
        for d in range(255, 0, -1):
            cur = buckets[d]
            if cur is not None:
                running = running * cur % m
            total = total * running % m
        acc = acc * total % m
    return int(acc)
