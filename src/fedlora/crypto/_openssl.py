"""OpenSSL's libcrypto as a modexp backend: Montgomery exponentiation, constant-time for secrets.

:class:`OpenSSLBackend` calls libcrypto through ``ctypes`` (which releases the GIL for the length
of each foreign call, so one thread per core runs in parallel):

* secret calls (:meth:`powmod_bases_secret`: a key share or a prime in the exponent or modulus,
  the randomness of an obfuscator in the base) run ``BN_mod_exp_mont_consttime`` with
  ``BN_FLG_CONSTTIME`` set on the exponent — a fixed-window ladder whose sequence of operations
  and table accesses does not depend on the exponent's bits (its cache-line access pattern is
  scattered with OpenSSL's ``MOD_EXP_CTIME`` layout). gmpy2's ``mpz_powm`` has no such property;
* public calls (proof checks, combination) run ``BN_mod_exp_mont``, OpenSSL's fastest variable-
  time code.

A Montgomery context is computed once per modulus and reused across calls and threads (OpenSSL
only reads it during exponentiation). Moduli must be odd, as Montgomery multiplication needs; an
even modulus (which no Paillier or threshold modulus is) goes to gmpy2.

Secrets pass through Python ``int``s and byte buffers, as they do with gmpy2: constant time is a
property of the exponentiation here, not of the Python code around it. The exponent's ``BIGNUM``
is wiped (``BN_clear_free``) after a secret call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Sequence
from functools import lru_cache

import gmpy2

from fedlora.crypto._backend import ThreadsBackend, _invert, _require_modulus
from fedlora.crypto._util import require_int
from fedlora.errors import CryptoError

__all__ = ["OpenSSLBackend", "load_libcrypto"]

_BN_FLG_CONSTTIME = 0x04
_MAX_CONTEXTS = 64  # distinct moduli with a cached Montgomery context (a process uses a few)


class _LibCrypto:
    """The handful of libcrypto BIGNUM functions used, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        sig = {
            "BN_new": (p, []),
            "BN_free": (None, [p]),
            "BN_clear_free": (None, [p]),
            "BN_CTX_new": (p, []),
            "BN_CTX_free": (None, [p]),
            "BN_bin2bn": (p, [c, i, p]),
            "BN_bn2binpad": (i, [p, ctypes.c_void_p, i]),
            "BN_set_flags": (None, [p, i]),
            "BN_MONT_CTX_new": (p, []),
            "BN_MONT_CTX_free": (None, [p]),
            "BN_MONT_CTX_set": (i, [p, p, p]),
            "BN_mod_exp_mont": (i, [p, p, p, p, p, p]),
            "BN_mod_exp_mont_consttime": (i, [p, p, p, p, p, p]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)  # AttributeError: an old or stripped libcrypto
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        self.lib = lib

    def bn(self, value: int) -> int:
        data = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
        out = self.BN_bin2bn(data, len(data), None)  # type: ignore[attr-defined]
        if not out:
            raise MemoryError("libcrypto could not allocate a BIGNUM")
        return int(out)


@lru_cache(maxsize=1)
def load_libcrypto() -> _LibCrypto | None:
    """libcrypto (OpenSSL ≥ 1.1) with every function used, or None where there is none."""
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"]
    for name in names:
        if not name:
            continue
        try:
            return _LibCrypto(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    return None


class _Modulus:
    """A modulus as a BIGNUM with its Montgomery context (freed only with the backend)."""

    def __init__(self, lib: _LibCrypto, modulus: int) -> None:
        self.lib, self.modulus = lib, modulus
        self.bytes = (modulus.bit_length() + 7) // 8
        self.bn = lib.bn(modulus)
        self.mont = lib.BN_MONT_CTX_new()  # type: ignore[attr-defined]
        ctx = lib.BN_CTX_new()  # type: ignore[attr-defined]
        try:
            if not self.mont or not lib.BN_MONT_CTX_set(self.mont, self.bn, ctx):  # type: ignore[attr-defined]
                raise CryptoError("libcrypto could not set up Montgomery arithmetic")
        finally:
            lib.BN_CTX_free(ctx)  # type: ignore[attr-defined]

    def free(self) -> None:
        self.lib.BN_MONT_CTX_free(self.mont)  # type: ignore[attr-defined]
        self.lib.BN_free(self.bn)  # type: ignore[attr-defined]


class OpenSSLBackend(ThreadsBackend):
    """libcrypto's Montgomery exponentiation on a pool of threads (see the module doc).

    Args:
        workers: threads per call (default: every core the process may run on).
        lib: a loaded libcrypto (default: :func:`load_libcrypto`).

    Raises:
        CryptoError: no usable libcrypto on this machine.
    """

    name = "openssl"

    def __init__(self, workers: int | None = None, lib: _LibCrypto | None = None) -> None:
        super().__init__(workers)
        loaded = lib or load_libcrypto()
        if loaded is None:
            raise CryptoError("no libcrypto (OpenSSL ≥ 1.1) was found on this machine")
        self.lib = loaded
        self._moduli: dict[int, _Modulus] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenSSLBackend(workers={self.workers})"

    def __del__(self) -> None:
        for m in getattr(self, "_moduli", {}).values():
            m.free()

    def _modulus(self, modulus: int) -> tuple[_Modulus, bool]:
        """The cached context for ``modulus`` (and False), or a fresh one to free (and True)."""
        with self._lock:
            found = self._moduli.get(modulus)
            if found is not None:
                return found, False
            made = _Modulus(self.lib, modulus)
            if len(self._moduli) < _MAX_CONTEXTS:
                self._moduli[modulus] = made
                return made, False
            return made, True

    def _run(
        self, bases: Sequence[int], exponents: Sequence[int], modulus: int, *, secret: bool
    ) -> list[int]:
        """``bases[i] ** exponents[i] mod modulus`` (one of the two sequences has length 1)."""
        lib = self.lib
        m, temporary = self._modulus(modulus)
        exp_fn = lib.BN_mod_exp_mont_consttime if secret else lib.BN_mod_exp_mont  # type: ignore[attr-defined]
        free = lib.BN_clear_free if secret else lib.BN_free  # type: ignore[attr-defined]
        count = max(len(bases), len(exponents))
        buf = ctypes.create_string_buffer(m.bytes)
        ctx = lib.BN_CTX_new()  # type: ignore[attr-defined]
        result = lib.BN_new()  # type: ignore[attr-defined]
        base_bn = exp_bn = None
        out: list[int] = []
        try:
            if not ctx or not result:
                raise MemoryError("libcrypto could not allocate")
            for i in range(count):
                if base_bn is None or len(bases) > 1:
                    if base_bn is not None:
                        free(base_bn)
                    b = bases[i] if len(bases) > 1 else bases[0]
                    base_bn = lib.bn(b if 0 <= b < modulus else b % modulus)
                if exp_bn is None or len(exponents) > 1:
                    if exp_bn is not None:
                        free(exp_bn)
                    exp_bn = lib.bn(exponents[i] if len(exponents) > 1 else exponents[0])
                    if secret:
                        lib.BN_set_flags(exp_bn, _BN_FLG_CONSTTIME)  # type: ignore[attr-defined]
                if not exp_fn(result, base_bn, exp_bn, m.bn, ctx, m.mont):
                    raise CryptoError("libcrypto's modular exponentiation failed")
                if lib.BN_bn2binpad(result, buf, m.bytes) != m.bytes:  # type: ignore[attr-defined]
                    raise CryptoError("libcrypto returned a result wider than the modulus")
                out.append(int.from_bytes(buf.raw, "big"))
        finally:
            for bn in (base_bn, exp_bn, result):
                if bn:
                    free(bn)
            lib.BN_CTX_free(ctx)  # type: ignore[attr-defined]
            if temporary:
                m.free()
        return out

    def _bases(self, bases: Sequence[int], exponent: int, modulus: int, secret: bool) -> list[int]:
        m = _require_modulus(modulus)
        e = require_int("exponent", exponent)
        if m % 2 == 0 or m == 1:
            return super().powmod_bases(bases, exponent, modulus)  # no Montgomery form
        if e < 0:
            bases = [int(_invert(b, m, i)) for i, b in enumerate(bases)]
            e = -e
        bases = [int(b) for b in bases]
        mod = int(m)
        return self.map_chunks(lambda chunk: self._run(chunk, [e], mod, secret=secret), bases)

    def powmod_bases(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """``[b ** exponent % modulus for b in bases]``: ``BN_mod_exp_mont`` on the threads.

        Raises:
            CryptoError: ``modulus`` < 1, or a negative ``exponent`` with a base that is not
                invertible modulo ``modulus`` (named by index).
        """
        return self._bases(bases, exponent, modulus, secret=False)

    def powmod_bases_secret(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        """As :meth:`powmod_bases`, with ``BN_mod_exp_mont_consttime`` (see the module doc)."""
        return self._bases(bases, exponent, modulus, secret=True)

    def powmod_exponents(self, base: int, exponents: Sequence[int], modulus: int) -> list[int]:
        """``[base ** e % modulus for e in exponents]``: ``BN_mod_exp_mont`` on the threads.

        Raises:
            CryptoError: ``modulus`` < 1, or a negative exponent while ``base`` is not
                invertible modulo ``modulus``.
        """
        m = _require_modulus(modulus)
        if m % 2 == 0 or m == 1:
            return super().powmod_exponents(base, exponents, modulus)
        b = gmpy2.mpz(base) % m
        inverse = _invert(b, m, 0) if any(e < 0 for e in exponents) else None
        mod = int(m)

        def run(chunk: Sequence[int]) -> list[int]:
            pos = [(i, e) for i, e in enumerate(chunk) if e >= 0]
            neg = [(i, -e) for i, e in enumerate(chunk) if e < 0]
            out = [0] * len(chunk)
            for group, value in ((pos, int(b)), (neg, int(inverse or 0))):
                if group:
                    values = self._run([value], [e for _, e in group], mod, secret=False)
                    for (i, _), v in zip(group, values):
                        out[i] = v
            return out

        return self.map_chunks(run, [int(e) for e in exponents])
