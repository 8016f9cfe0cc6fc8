"""Small shared helpers: argument checks, randomness, fixed-width integer encoding."""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import gmpy2

from fedlora.errors import CryptoError


class Rng(Protocol):
    """The slice of :class:`random.Random` that fedlora uses; ``secrets.SystemRandom`` by default."""

    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...

    def getrandbits(self, k: int, /) -> int: ...


_SYSTEM_RNG: Rng = secrets.SystemRandom()


def system_rng(rng: Rng | None) -> Rng:
    """Return ``rng``, or the operating system's CSPRNG when it is ``None``."""
    return _SYSTEM_RNG if rng is None else rng


def deterministic_rng(seed: int) -> Rng:
    """A seeded, *insecure* generator for tests and known-answer vectors only."""
    return random.Random(seed)


def require_int(
    name: str, value: object, *, low: int | None = None, high: int | None = None
) -> int:
    """Return ``value`` as an ``int`` or raise :class:`CryptoError` naming ``name``.

    ``bool`` is refused although it subclasses ``int``; ``low`` and ``high`` are inclusive bounds.
    gmpy2's ``mpz`` is accepted and converted.
    """
    if isinstance(value, bool) or not isinstance(value, (int, type(gmpy2.mpz(0)))):
        raise CryptoError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if low is not None and v < low:
        raise CryptoError(f"{name} must be >= {low}, got a value below it")
    if high is not None and v > high:
        raise CryptoError(f"{name} must be <= {high}, got a value above it")
    return v


def require_bytes(name: str, value: object, *, length: int | None = None) -> bytes:
    """Return ``value`` as ``bytes`` or raise :class:`CryptoError` naming ``name`` and the length."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CryptoError(f"{name} must be bytes, got {type(value).__name__}")
    b = bytes(value)
    if length is not None and len(b) != length:
        raise CryptoError(f"{name} must be {length} bytes, got {len(b)}")
    return b


def require_sequence(name: str, value: object) -> Sequence[Any]:
    """Return ``value`` if it is a list or tuple, else raise :class:`CryptoError` naming ``name``.

    Strings, bytes, mappings, sets and iterators are refused: they are never what a caller meant
    by a vector, and an iterator would be consumed by the check.
    """
    if not isinstance(value, (list, tuple)):
        raise CryptoError(f"{name} must be a list or tuple, got {type(value).__name__}")
    return value


def byte_length(modulus: int) -> int:
    """Bytes needed for any residue modulo ``modulus``."""
    return (int(modulus).bit_length() + 7) // 8


def int_to_fixed_bytes(value: int, width: int) -> bytes:
    """Big-endian, exactly ``width`` bytes (STYLE.md §6: big integers travel fixed-width)."""
    value = require_int("value", value, low=0)
    try:
        return value.to_bytes(width, "big")
    except OverflowError:
        raise CryptoError(f"integer does not fit in {width} bytes") from None


def fixed_bytes_to_int(data: bytes, width: int) -> int:
    """Inverse of :func:`int_to_fixed_bytes`; refuses any other length."""
    data = require_bytes("data", data)
    if len(data) != width:
        raise CryptoError(f"expected {width} bytes for an integer, got {len(data)}")
    return int.from_bytes(data, "big")
