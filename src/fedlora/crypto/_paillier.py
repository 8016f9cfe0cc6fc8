"""Paillier encryption over phe's key objects, with gmpy2 arithmetic and ``g = n + 1``.

Paillier, "Public-Key Cryptosystems Based on Composite Degree Residuosity Classes" (EUROCRYPT
1999). With ``g = n + 1`` the encryption of ``m`` with obfuscator ``R = rⁿ mod n²`` is

    c = (1 + m·n) · R  mod n²                                    (binomial expansion of (1+n)^m)

which is exactly what ``phe.PaillierPublicKey.raw_encrypt`` computes, so ciphertexts made here
decrypt with phe's own ``PaillierPrivateKey`` and vice versa. Every ciphertext a public function
returns is obfuscated with a fresh ``R``: a ciphertext ``1 + m·n`` without ``R`` reveals ``m``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import gmpy2
from phe import PaillierPrivateKey, PaillierPublicKey

from fedlora.crypto._backend import ModexpBackend
from fedlora.crypto._factory import resolve_backend
from fedlora.crypto._util import Rng, byte_length, require_int, require_sequence, system_rng
from fedlora.crypto._vector import CiphertextVector
from fedlora.errors import CryptoError

if TYPE_CHECKING:
    from fedlora.crypto._obfuscation import ObfuscatorSource

__all__ = [
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "add_ciphertext_vectors",
    "ciphertext_vector_digest",
    "ciphertext_width",
    "decrypt",
    "decrypt_batch",
    "encrypt",
    "encrypt_batch",
    "key_fingerprint",
    "keypair_from_primes",
    "validate_ciphertext",
    "validate_ciphertexts",
]

MIN_KEY_BITS = 256  # small keys exist for tests only; production configs enforce ≥ 2048


def _require_public_key(public_key: object) -> PaillierPublicKey:
    if not isinstance(public_key, PaillierPublicKey):
        raise CryptoError(
            f"public_key must be a phe.PaillierPublicKey, got {type(public_key).__name__}"
        )
    return public_key


def keypair_from_primes(p: int, q: int) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """phe key objects for ``n = p·q``.

    Raises:
        CryptoError: ``p == q``, non-integers, or a modulus under :data:`MIN_KEY_BITS` bits.
    """
    p = require_int("p", p, low=3)
    q = require_int("q", q, low=3)
    if p == q:
        raise CryptoError("p and q must be distinct primes")
    if not (gmpy2.is_prime(p) and gmpy2.is_prime(q)):
        raise CryptoError("p and q must both be prime")
    n = p * q
    if n.bit_length() < MIN_KEY_BITS:
        raise CryptoError(f"modulus must have at least {MIN_KEY_BITS} bits, got {n.bit_length()}")
    public = PaillierPublicKey(n)
    return public, PaillierPrivateKey(public, p, q)


def key_fingerprint(public_key: PaillierPublicKey) -> bytes:
    """SHA-256 over a domain tag and the fixed-width modulus: names a key in messages and files."""
    pk = _require_public_key(public_key)
    width = byte_length(pk.n)
    return hashlib.sha256(
        b"fedlora/paillier-key/v1\x00" + int(pk.n).to_bytes(width, "big")
    ).digest()


def ciphertext_width(public_key: PaillierPublicKey) -> int:
    """Bytes of one ciphertext on the wire: the byte length of n²."""
    return byte_length(int(_require_public_key(public_key).nsquare))


def validate_ciphertext(public_key: PaillierPublicKey, ciphertext: object) -> int:
    """Return ``ciphertext`` as an int if it lies in Z*_{n²}, else raise :class:`CryptoError`.

    A value sharing a factor with ``n`` would let whoever sent it probe the factorization through
    a decryptor's answers, so membership is checked with a gcd, not only a range test.
    """
    pk = _require_public_key(public_key)
    c = require_int("ciphertext", ciphertext)
    if not 0 < c < pk.nsquare:
        raise CryptoError("ciphertext is outside the range 1..n²-1")
    if gmpy2.gcd(c, pk.n) != 1:
        raise CryptoError("ciphertext is not a unit modulo n²")
    return int(c)


def validate_ciphertexts(
    public_key: PaillierPublicKey, ciphertexts: Sequence[object] | CiphertextVector
) -> list[int]:
    """:func:`validate_ciphertext` over a vector; the error names the first bad index."""
    pk = _require_public_key(public_key)
    if isinstance(ciphertexts, CiphertextVector):
        ciphertexts = ciphertexts.to_ints()
    n, n2 = gmpy2.mpz(pk.n), pk.nsquare
    out = []
    product = gmpy2.mpz(1)
    for index, c in enumerate(require_sequence("ciphertexts", ciphertexts)):
        if isinstance(c, bool) or not isinstance(c, int):
            raise CryptoError(f"ciphertext[{index}] must be an integer, got {type(c).__name__}")
        if not 0 < c < n2:
            raise CryptoError(f"ciphertext[{index}] is not in Z*_(n²)")
        product = product * c % n
        out.append(c)
    # Every c is a unit mod n exactly when their product is (a prime factor of n dividing one c
    # divides the product): one gcd for the vector, and one per value only to name a bad one.
    if gmpy2.gcd(product, n) != 1:
        bad = next(i for i, c in enumerate(out) if gmpy2.gcd(c, n) != 1)
        raise CryptoError(f"ciphertext[{bad}] is not in Z*_(n²)")
    return out


def _require_plaintext(pk: PaillierPublicKey, m: object, name: str = "plaintext") -> int:
    value = require_int(name, m)
    if not 0 <= value < pk.n:
        raise CryptoError(f"{name} must lie in 0..n-1")
    return int(value)


def encrypt(
    public_key: PaillierPublicKey,
    plaintext: int,
    *,
    obfuscator: int | None = None,
    rng: Rng | None = None,
    backend: ModexpBackend | None = None,
) -> int:
    """Encrypt one plaintext ``0 ≤ m < n``.

    Args:
        obfuscator: a precomputed ``R = rⁿ mod n²`` used for this ciphertext only (from an
            :class:`~fedlora.crypto.ObfuscatorPool`); ``None`` draws ``r`` from ``rng``.
        backend: computes ``rⁿ`` when no obfuscator is given; ``None`` is the default backend.

    Raises:
        CryptoError: plaintext out of range or not an integer.
    """
    pk = _require_public_key(public_key)
    m = _require_plaintext(pk, plaintext)
    if obfuscator is None:
        r = system_rng(rng).randrange(1, pk.n)
        obfuscator = resolve_backend(backend).powmod_bases_secret([r], pk.n, pk.nsquare)[0]
    else:
        obfuscator = require_int("obfuscator", obfuscator, low=1, high=pk.nsquare - 1)
    return int((1 + m * pk.n) % pk.nsquare * gmpy2.mpz(obfuscator) % pk.nsquare)


def encrypt_batch(
    public_key: PaillierPublicKey,
    plaintexts: Sequence[int],
    *,
    obfuscators: ObfuscatorSource | None = None,
    rng: Rng | None = None,
    backend: ModexpBackend | None = None,
) -> list[int]:
    """Encrypt a vector of plaintexts.

    With ``obfuscators`` (a pool or a DJN generator), each ciphertext takes a fresh precomputed
    ``R`` and costs one modular multiplication. Without, ``rⁿ mod n²`` is computed here by
    ``backend`` (``None``: the default, every core) — the "cold" path, dominated by one
    2048-bit-exponent powmod per ciphertext.

    Raises:
        CryptoError: a plaintext out of range (named by index).
    """
    pk = _require_public_key(public_key)
    n, n2 = pk.n, gmpy2.mpz(pk.nsquare)
    ms = []
    for i, m in enumerate(require_sequence("plaintexts", plaintexts)):
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < n:
            raise CryptoError(f"plaintext[{i}] must be an integer in 0..n-1")
        ms.append(m)
    if obfuscators is None:
        source = system_rng(rng)
        rs = [source.randrange(1, n) for _ in ms]
        rn = resolve_backend(backend).powmod_bases_secret(rs, n, pk.nsquare)
    else:
        rn = obfuscators.take(len(ms))
    return [int((1 + m * n) * gmpy2.mpz(r) % n2) for m, r in zip(ms, rn)]


def add_ciphertext_vectors(
    public_key: PaillierPublicKey,
    left: Sequence[int] | CiphertextVector,
    right: Sequence[int] | CiphertextVector,
) -> list[int]:
    """Slot-wise homomorphic addition: ``D(left[i]·right[i]) = D(left[i]) + D(right[i]) mod n``.

    Inputs are trusted to be valid (run :func:`validate_ciphertexts` on anything a peer sent).

    Raises:
        CryptoError: the vectors differ in length.
    """
    pk = _require_public_key(public_key)
    if isinstance(left, CiphertextVector):
        left = left.to_ints()
    if isinstance(right, CiphertextVector):
        right = right.to_ints()
    n2 = pk.nsquare
    for name, vector in (("left", left), ("right", right)):
        for i, c in enumerate(require_sequence(name, vector)):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < n2:
                raise CryptoError(f"{name}[{i}] is not a ciphertext for this key")
    if len(left) != len(right):
        raise CryptoError(f"ciphertext vectors differ in length: {len(left)} and {len(right)}")
    m = gmpy2.mpz(n2)
    return [int(gmpy2.mpz(a) * b % m) for a, b in zip(left, right)]


class _CrtDecryptor:
    """Decryption by the CRT, as in Paillier §7 and phe: work mod p² and q² separately."""

    def __init__(self, private_key: PaillierPrivateKey) -> None:
        p, q = gmpy2.mpz(private_key.p), gmpy2.mpz(private_key.q)
        self.p, self.q = p, q
        self.psq, self.qsq = p * p, q * q
        g = p * q + 1
        self.hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self.psq) - 1) // p, p)
        self.hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self.qsq) - 1) // q, q)
        self.p_inv_q = gmpy2.invert(p, q)

    def finish(self, up: int, uq: int) -> int:
        """Plaintext from ``c^(p-1) mod p²`` and ``c^(q-1) mod q²``."""
        mp = (up - 1) // self.p * self.hp % self.p
        mq = (uq - 1) // self.q * self.hq % self.q
        return int(mp + (mq - mp) * self.p_inv_q % self.q * self.p)


def _require_private_key(private_key: object) -> PaillierPrivateKey:
    if not isinstance(private_key, PaillierPrivateKey):
        raise CryptoError(
            f"private_key must be a phe.PaillierPrivateKey, got {type(private_key).__name__}"
        )
    return private_key


def decrypt(
    private_key: PaillierPrivateKey, ciphertext: int, *, backend: ModexpBackend | None = None
) -> int:
    """Decrypt with a full (non-threshold) private key; for tests, tools and the dealer.

    Raises:
        CryptoError: ciphertext not in Z*_{n²} or wrong key type.
    """
    return decrypt_batch(private_key, [ciphertext], backend=backend)[0]


def decrypt_batch(
    private_key: PaillierPrivateKey,
    ciphertexts: Sequence[int] | CiphertextVector,
    *,
    backend: ModexpBackend | None = None,
) -> list[int]:
    """:func:`decrypt` over a vector (validated first), with the powmods on ``backend``.

    The exponents ``p − 1``, ``q − 1`` and moduli ``p²``, ``q²`` are secret, so the work goes to
    :meth:`~fedlora.crypto.ModexpBackend.powmod_bases_secret`.
    """
    sk = _require_private_key(private_key)
    cs = validate_ciphertexts(sk.public_key, ciphertexts)
    crt = _CrtDecryptor(sk)
    engine = resolve_backend(backend)
    ups = engine.powmod_bases_secret(cs, int(crt.p - 1), int(crt.psq))
    uqs = engine.powmod_bases_secret(cs, int(crt.q - 1), int(crt.qsq))
    return [crt.finish(a, b) for a, b in zip(ups, uqs)]


def ciphertext_vector_digest(
    public_key: PaillierPublicKey, ciphertexts: Sequence[int] | CiphertextVector
) -> bytes:
    """SHA-256 over a domain tag, the count, the width and each ciphertext as a fixed-width
    big-endian record (:meth:`CiphertextVector.digest`, :func:`fedlora.crypto.records_hasher`).

    Names one exact ciphertext vector in signatures, receipts, manifests and proofs.

    Raises:
        CryptoError: a value that is not an integer in ``0..256^w − 1`` for ``w`` the byte length
            of n², or a :class:`CiphertextVector` whose width is not ``w``.
    """
    pk = _require_public_key(public_key)
    width = byte_length(pk.nsquare)
    if isinstance(ciphertexts, CiphertextVector):
        if ciphertexts.width != width:
            raise CryptoError(
                f"ciphertext vector has {ciphertexts.width}-byte records, "
                f"this key's ciphertexts are {width} bytes"
            )
        return ciphertexts.digest()
    return CiphertextVector.from_ints(require_sequence("ciphertexts", ciphertexts), width).digest()
