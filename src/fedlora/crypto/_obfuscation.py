"""Obfuscators ``R = rⁿ mod n²`` for Paillier encryption, made ahead of time.

Encrypting is ``(1 + m·n) · R mod n²``; nearly all of its cost is ``R``. Two sources:

* :class:`ObfuscatorPool` — textbook ``R = rⁿ`` for uniform ``r``, computed in the background on a
  modexp backend (by default gmpy2 on every core) while the client trains, so that encryption
  itself is one multiplication per ciphertext.
* :class:`DjnObfuscator` — Damgård, Jurik and Nielsen, "A generalization of Paillier's public-key
  system with applications to electronic voting" (IJIS 2010), §4.1: with ``h = -x² mod n`` and
  ``hₛ = hⁿ mod n²`` fixed, ``R = hₛ^α`` for a random ``α`` of ⌈k/2⌉ bits (k = bits of n). A fixed
  base allows a precomputed comb table, so each ``R`` costs ~k/16 multiplications instead of one
  full-length exponentiation. Its security rests on the DJN short-exponent assumption; the pool
  makes no assumption beyond Paillier's own.

Both hand out every ``R`` exactly once: two ciphertexts sharing ``R`` reveal the difference of their
plaintexts (their ratio is ``(1+n)^(m₁-m₂)``). Neither class can be serialized, so a pool is never
persisted next to what it encrypted.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import NoReturn, Protocol

import gmpy2
from phe import PaillierPublicKey

from fedlora.crypto._backend import ModexpBackend, pippenger
from fedlora.crypto._factory import resolve_backend
from fedlora.crypto._util import Rng, require_int, system_rng
from fedlora.errors import CryptoError

__all__ = ["DjnObfuscator", "EncryptionWitness", "ObfuscatorPool", "ObfuscatorSource"]


class EncryptionWitness(Protocol):
    """The n-th roots behind a batch of obfuscators, usable only in combination.

    ``combined_root(w)`` is ``∏ ρⱼ^wⱼ mod n`` where ``Rⱼ = ρⱼⁿ mod n²`` — what a proof of
    plaintext knowledge needs (:func:`fedlora.crypto.encrypt_and_prove`), without exposing any
    single root.
    """

    def combined_root(self, weights: Sequence[bytes]) -> int: ...


class ObfuscatorSource(Protocol):
    """Anything that hands out fresh, never-reused obfuscators for one public key."""

    public_key: PaillierPublicKey

    def take(self, count: int) -> list[int]: ...

    def take_with_witness(self, count: int) -> tuple[list[int], EncryptionWitness]: ...


class _NoPickle:
    def __reduce__(self) -> NoReturn:
        raise CryptoError(f"{type(self).__name__} must never be serialized or persisted")


class RootsWitness(_NoPickle):
    """Textbook obfuscators ``rⱼⁿ``: the roots are the ``rⱼ`` themselves."""

    def __init__(self, roots: list[int], n: int) -> None:
        self._roots, self._n = roots, n

    def combined_root(self, weights: Sequence[bytes]) -> int:
        return pippenger(self._roots, weights, self._n)  # secret bases: not the public kernel


class DjnWitness(_NoPickle):
    """DJN obfuscators ``hₛ^αⱼ = (h^αⱼ)ⁿ``: the combined root is ``h^(Σ wⱼαⱼ) mod n``."""

    def __init__(self, h: int, alphas: list[int], n: int) -> None:
        self._h, self._alphas, self._n = h, alphas, n

    def combined_root(self, weights: Sequence[bytes]) -> int:
        exponent = sum(int.from_bytes(w, "big") * a for w, a in zip(weights, self._alphas))
        return int(gmpy2.powmod(self._h, exponent, self._n))


class DjnObfuscator(_NoPickle):
    """Fixed-base short-exponent obfuscators (DJN 2010 §4.1) from a precomputed comb table.

    Construction costs one full exponentiation and ~k²/16 multiplications for the table
    (~20 ms at 2048 bits); each obfuscator then costs ⌈k/16⌉ multiplications mod n².
    The table holds ⌈k/16⌉·255 residues mod n² (≈ 16 MiB at 2048 bits).

    Args:
        public_key: the Paillier key; ``n`` must be a product of two primes ≡ 3 (mod 4) (safe
            primes are) so that ``-1`` is a non-square with Jacobi symbol +1 and ``h`` generates
            a large subgroup.
        rng: randomness for ``x`` and every ``α``; ``None`` means the OS CSPRNG.
    """

    _WINDOW_BITS = 8

    def __init__(self, public_key: PaillierPublicKey, *, rng: Rng | None = None) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise CryptoError("public_key must be a phe.PaillierPublicKey")
        self.public_key = public_key
        self._rng = system_rng(rng)
        n = public_key.n
        self._n2 = gmpy2.mpz(public_key.nsquare)
        self.exponent_bits = (n.bit_length() + 1) // 2
        x = self._rng.randrange(2, n - 1)
        h = (-x * x) % n
        self._h, self._n = h, n
        hs = gmpy2.powmod(h, n, self._n2)
        # table[w][d] = hs^(d · 2^(8w)) for every byte position w of α and digit d = 1..255.
        self._table: list[list[gmpy2.mpz]] = []
        base = hs
        for _ in range(-(-self.exponent_bits // self._WINDOW_BITS)):
            row = [gmpy2.mpz(1), base]
            for _ in range(254):
                row.append(row[-1] * base % self._n2)
            self._table.append(row)
            base = row[-1] * base % self._n2  # hs^(256 · 2^(8w))
        self._lock = threading.Lock()

    def take(self, count: int) -> list[int]:
        """``count`` fresh obfuscators; each ``α`` is drawn once and then forgotten."""
        return self.take_with_witness(count)[0]

    def take_with_witness(self, count: int) -> tuple[list[int], EncryptionWitness]:
        """``count`` fresh obfuscators and the witness of their roots (for a proof of knowledge)."""
        count = require_int("count", count, low=0)
        width = len(self._table)
        out = []
        with self._lock:
            alphas = [self._rng.getrandbits(self.exponent_bits) for _ in range(count)]
        n2 = self._n2
        for alpha in alphas:
            digits = alpha.to_bytes(width, "little")
            acc = gmpy2.mpz(1)
            for row, d in zip(self._table, digits):
                if d:
                    acc = acc * row[d] % n2
            out.append(int(acc))
        return out, DjnWitness(self._h, alphas, self._n)


class ObfuscatorPool(_NoPickle):
    """Textbook obfuscators ``rⁿ mod n²``, precomputed in the background.

    ``start()`` begins filling up to ``capacity`` on one background thread, which hands batches
    of ``batch`` to the backend (the default backend spreads each batch over every core);
    ``take(k)`` removes ``k`` obfuscators (each is handed out once, then dropped), computing any
    shortfall on the spot. ``close()`` stops the filler and discards what is left. The ``r`` are
    secret, so every batch goes to :meth:`~fedlora.crypto.ModexpBackend.powmod_bases_secret`.

    Args:
        capacity: how many obfuscators to keep ready, e.g. the ciphertexts of one round; ≥ 1.
        backend: computes ``rⁿ mod n²``; ``None`` is :func:`~fedlora.crypto.default_backend`.
        batch: obfuscators per background step, ≥ 1; smaller batches make ``close()`` and
            ``take()`` more responsive, larger ones keep more cores busy.
        rng: randomness for every ``r``; ``None`` means the OS CSPRNG.
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        capacity: int,
        *,
        backend: ModexpBackend | None = None,
        batch: int = 256,
        rng: Rng | None = None,
    ) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise CryptoError("public_key must be a phe.PaillierPublicKey")
        self.public_key = public_key
        self.capacity = require_int("capacity", capacity, low=1)
        self._backend = resolve_backend(backend)
        self._batch = require_int("batch", batch, low=1)
        self._rng = system_rng(rng)
        self._ready: deque[tuple[int, int]] = deque()  # (r, rⁿ mod n²)
        self._cond = threading.Condition()
        self._reserved = 0  # obfuscators being computed right now by the filler
        self._taking = 0  # takes computing a shortfall: the filler starts no batch meanwhile
        self._stop = False
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready)

    def _draw_rs(self, count: int) -> list[int]:
        n = self.public_key.n
        with self._cond:
            return [self._rng.randrange(1, n) for _ in range(count)]

    def _fill(self) -> None:
        n, n2 = self.public_key.n, self.public_key.nsquare
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or not self._taking)
                room = self.capacity - len(self._ready) - self._reserved
                if self._stop or room <= 0:
                    return
                k = min(self._batch, room)
                self._reserved += k
            rs = self._draw_rs(k)
            values = self._backend.powmod_bases_secret(rs, n, n2)
            with self._cond:
                self._reserved -= k
                if self._stop:
                    return
                self._ready.extend(zip(rs, values))
                self._cond.notify_all()

    def start(self) -> ObfuscatorPool:
        """Start the background filler (idempotent); returns ``self``."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop = False
            self._thread = threading.Thread(
                target=self._fill, name="fedlora-obfuscators", daemon=True
            )
            self._thread.start()
        return self

    def fill(self) -> None:
        """Fill the pool to capacity now, on the backend, and return when it is full (or closed)."""
        with self._cond:
            missing = self.capacity - len(self._ready) - self._reserved
            # Reserved under the lock, so that the background filler does not compute the
            # same shortfall a second time and overfill the pool.
            self._reserved += max(0, missing)
        if missing > 0:
            n, n2 = self.public_key.n, self.public_key.nsquare
            made: list[tuple[int, int]] = []
            try:
                rs = self._draw_rs(missing)
                made = list(zip(rs, self._backend.powmod_bases_secret(rs, n, n2)))
            finally:
                with self._cond:
                    self._reserved -= missing
                    if not self._stop:
                        self._ready.extend(made)
                    self._cond.notify_all()
        with self._cond:
            # The background filler may still be finishing obfuscators it reserved.
            self._cond.wait_for(lambda: self._stop or len(self._ready) >= self.capacity)

    def take(self, count: int) -> list[int]:
        """Remove and return ``count`` obfuscators; any shortfall is computed now on the backend."""
        return self.take_with_witness(count)[0]

    def take_with_witness(self, count: int) -> tuple[list[int], EncryptionWitness]:
        """Like :meth:`take`, with the witness of their roots (for a proof of knowledge)."""
        count = require_int("count", count, low=0)
        with self._cond:
            got = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
            # The batch the filler is computing lands soon: wait for it rather than compute it
            # twice, compute only the rest here, and let the filler start nothing meanwhile.
            inflight = min(count - len(got), self._reserved)
            self._taking += 1
        try:
            self._compute_into(got, count - len(got) - inflight)
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop or not self._reserved or len(self._ready) >= inflight
                )
                got.extend(self._ready.popleft() for _ in range(min(inflight, len(self._ready))))
        finally:
            with self._cond:
                self._taking -= 1
                self._cond.notify_all()
        self._compute_into(got, count - len(got))  # what a closed pool's filler did not make
        return [v for _, v in got], RootsWitness([r for r, _ in got], self.public_key.n)

    def _compute_into(self, got: list[tuple[int, int]], missing: int) -> None:
        if missing > 0:
            rs = self._draw_rs(missing)
            values = self._backend.powmod_bases_secret(
                rs, self.public_key.n, self.public_key.nsquare
            )
            got.extend(zip(rs, values))

    def close(self) -> None:
        """Stop the filler and drop every unused obfuscator."""
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self) -> ObfuscatorPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
