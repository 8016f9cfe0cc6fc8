"""Choosing the modexp backend, and the front doors that run on the default one.

:func:`make_backend` picks among the backends (:mod:`._backend`'s reference gmpy2 threads,
:mod:`._ifma`, :mod:`._openssl`), each only after it agrees with gmpy2 on a known answer;
:func:`resolve_backend` is what every batch function calls with its ``backend`` argument. Kept
apart from :mod:`._backend` so that the backends import the interface and nothing imports back.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import gmpy2

from fedlora.crypto import _ifma, _openssl
from fedlora.crypto._backend import ModexpBackend, MultiExp, ThreadsBackend
from fedlora.errors import CryptoError

__all__ = [
    "BACKEND_NAMES",
    "default_backend",
    "make_backend",
    "multi_powmod",
    "multi_powmods",
    "resolve_backend",
    "select_backend",
]

BACKEND_NAMES = ("auto", "ifma", "openssl", "gmpy2")


def make_backend(name: str = "auto", workers: int | None = None) -> tuple[ModexpBackend, str]:
    """The backend ``name`` names, and one line saying which runs and why.

    ``auto`` takes the fastest that works here, each only after it agrees with gmpy2 on a known
    answer: fedlora's AVX-512 IFMA kernel (:class:`~fedlora.crypto.IfmaBackend`: eight
    constant-time exponentiations at once) where it was built and the CPU runs it; else
    OpenSSL's libcrypto (:class:`~fedlora.crypto.OpenSSLBackend`: constant-time for secrets);
    else gmpy2, and the line says so. ``ifma`` and ``openssl`` insist on theirs; ``gmpy2`` is
    the reference backend.

    Raises:
        CryptoError: an unknown name, or ``ifma`` / ``openssl`` where it cannot run here.
    """
    if name not in BACKEND_NAMES:
        raise CryptoError(f"modexp backend {name!r}: one of {', '.join(BACKEND_NAMES)}")
    if name == "gmpy2":
        threads = ThreadsBackend(workers)
        return threads, f"modexp backend: gmpy2 on {threads.workers} threads (not constant-time)"
    lib = _openssl.load_libcrypto()
    openssl = _openssl.OpenSSLBackend(workers, lib) if lib is not None else None
    if openssl is not None and not _agrees(openssl):
        openssl = None
    if name in ("auto", "ifma") and _ifma.load_kernel() is not None:
        fallback: ModexpBackend = openssl if openssl is not None else ThreadsBackend(workers)
        ifma = _ifma.IfmaBackend(workers, fallback)
        if _agrees(ifma):
            return ifma, (
                f"modexp backend: AVX-512 IFMA, 8 lanes on {ifma.workers} threads (constant-"
                f"time), {'OpenSSL' if openssl is not None else 'gmpy2'} for small batches"
            )
    if name == "ifma":
        raise CryptoError(
            "modexp backend ifma: fedlora's AVX-512 IFMA kernel is not available here (it needs "
            "an x86-64 CPU with AVX-512 IFMA and a C compiler when fedlora is installed); choose "
            "backend auto"
        )
    if openssl is not None:
        return openssl, (
            f"modexp backend: OpenSSL libcrypto on {openssl.workers} threads "
            "(constant-time for secret exponents)"
        )
    if name == "openssl":
        raise CryptoError(
            "modexp backend openssl: no working libcrypto (OpenSSL ≥ 1.1) was found; install "
            "OpenSSL's libcrypto (e.g. the libssl3 package) or choose backend gmpy2"
        )
    threads = ThreadsBackend(workers)
    return threads, (
        "modexp backend: gmpy2 (no working OpenSSL libcrypto found; gmpy2 is slower and not "
        "constant-time)"
    )


def _agrees(backend: ModexpBackend) -> bool:
    """A known answer from ``backend`` and gmpy2 (a broken or odd build is not used): nine
    bases, so that a multi-buffer backend runs a full group of lanes and a partial one."""
    modulus = (1 << 521) - 1  # a Mersenne prime: odd, as Montgomery needs
    bases = [3, 5, (1 << 400) + 7, *(modulus - k for k in range(1, 7))]
    exponent = (1 << 300) + 12345
    expected = [int(gmpy2.powmod(b, exponent, modulus)) for b in bases]
    try:
        return (
            backend.powmod_bases(bases, exponent, modulus) == expected
            and backend.powmod_bases_secret(bases, exponent, modulus) == expected
        )
    except (CryptoError, OSError, MemoryError, ValueError, RuntimeError):
        return False


@lru_cache(maxsize=1)
def _auto() -> tuple[ModexpBackend, str]:
    return make_backend("auto")


def default_backend() -> ModexpBackend:
    """The shared backend :func:`make_backend` picks (``auto``), used wherever ``backend`` is
    ``None``: the IFMA kernel, else OpenSSL, else gmpy2 — the first that works here."""
    return _auto()[0]


def select_backend(name: str) -> tuple[ModexpBackend, str]:
    """A configuration's ``crypto.backend``: the shared default for ``auto``, else a new one;
    with the line saying which runs (see :func:`make_backend`)."""
    return _auto() if name == "auto" else make_backend(name)


def resolve_backend(backend: ModexpBackend | None) -> ModexpBackend:
    """``backend``, or :func:`default_backend` when it is ``None``."""
    return default_backend() if backend is None else backend


def multi_powmod(
    bases: Sequence[int],
    exponents: Sequence[bytes],
    modulus: int,
    backend: ModexpBackend | None = None,
) -> int:
    """``∏ bases[j] ** exponents[j] mod modulus`` for short exponents given as big-endian bytes,
    every operand public, on ``backend`` (``None``: the default backend).

    Raises:
        ValueError: bases and exponents differ in length, or the exponents in width.
    """
    return multi_powmods([(bases, exponents)], modulus, backend)[0]


def multi_powmods(
    jobs: Sequence[MultiExp], modulus: int, backend: ModexpBackend | None = None
) -> list[int]:
    """:func:`multi_powmod` for several jobs at once (one modulus), on ``backend``: how a round's
    proof checks are batched across its contributions.

    Raises:
        ValueError: in a job, bases and exponents differ in length, or the exponents in width.
    """
    for bases, exponents in jobs:
        if len(bases) != len(exponents):
            raise ValueError("bases and exponents differ in length")
        if exponents and any(len(e) != len(exponents[0]) for e in exponents):
            raise ValueError("exponents differ in width")
    return resolve_backend(backend).multi_powmods(jobs, modulus)
