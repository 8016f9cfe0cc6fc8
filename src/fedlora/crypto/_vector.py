"""Fixed-width vectors of big integers: the wire layout of every ciphertext vector.

A vector of ``count`` residues travels, is stored and is hashed as ``count`` big-endian records
of ``width`` bytes each, concatenated with nothing between them (STYLE.md §6); for Paillier
ciphertexts ``width`` is the byte length of n². :class:`CiphertextVector` holds exactly those
bytes as one immutable buffer, and this module is the one place records are packed, unpacked and
digested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

from fedlora.crypto._util import require_int
from fedlora.errors import CryptoError, VerificationError

__all__ = ["CiphertextVector", "pack_records", "records_hasher", "unpack_records"]

_MPZ = type(gmpy2.mpz(0))


def pack_records(values: Iterable[int], width: int) -> bytes:
    """``values`` as concatenated ``width``-byte big-endian records.

    Raises:
        CryptoError: a value that is not an integer (``bool`` included), negative, or wider than
            ``width`` bytes; the message names its index.
    """
    width = require_int("width", width, low=1)
    if isinstance(values, (str, bytes, bytearray, memoryview)) or not isinstance(values, Iterable):
        raise CryptoError(f"values must be an iterable of integers, got {type(values).__name__}")
    out = []
    for index, value in enumerate(values):
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, (int, _MPZ)):
                raise CryptoError(f"record[{index}] must be an integer, got {type(value).__name__}")
            value = int(value)
        try:
            out.append(value.to_bytes(width, "big"))
        except OverflowError:
            problem = "is negative" if value < 0 else f"does not fit in {width} bytes"
            raise CryptoError(f"record[{index}] {problem}") from None
    return b"".join(out)


def _check_layout(size: int, width: int) -> int:
    """Records in ``size`` bytes of ``width``-byte records, or :class:`VerificationError`."""
    count, extra = divmod(size, width)
    if extra:
        raise VerificationError(
            f"a vector of {width}-byte records must be a multiple of {width} bytes long, "
            f"got {size} bytes ({count} records and {extra} bytes over)"
        )
    return count


def unpack_records(data: bytes | bytearray | memoryview, width: int) -> list[int]:
    """The integers of concatenated ``width``-byte big-endian records (inverse of
    :func:`pack_records`).

    Raises:
        VerificationError: ``data`` is not a whole number of records.
    """
    width = require_int("width", width, low=1)
    view = memoryview(data).cast("B")
    _check_layout(len(view), width)
    return [int.from_bytes(view[i : i + width], "big") for i in range(0, len(view), width)]


def records_hasher(count: int, width: int) -> hashlib._Hash:
    """A SHA-256 object primed for ``count`` fixed-width records of ``width`` bytes.

    Feeding it the records' bytes (in chunks, as they stream in) gives the digest of
    :meth:`CiphertextVector.digest` and :func:`fedlora.crypto.ciphertext_vector_digest`:
    ``SHA-256("fedlora/ciphertexts/v1" ‖ 0x00 ‖ count as 8 bytes ‖ width as 4 bytes ‖ records)``.
    """
    count = require_int("count", count, low=0)
    width = require_int("width", width, low=1)
    h = hashlib.sha256(b"fedlora/ciphertexts/v1\x00")
    h.update(count.to_bytes(8, "big"))
    h.update(width.to_bytes(4, "big"))
    return h


class CiphertextVector:
    """An immutable vector of ``count`` non-negative integers of ``width`` bytes each.

    Stored as one ``bytes`` buffer of ``count · width`` bytes — record ``i`` is the big-endian
    encoding of value ``i`` in bytes ``[i·width, (i+1)·width)`` — so sending, storing, hashing
    and handing the vector to a GPU never repack it. Build one with :meth:`from_ints` or
    :meth:`from_bytes`. Equal when width and bytes are equal.
    """

    __slots__ = ("_count", "_data", "_width")

    _data: bytes
    _width: int
    _count: int

    def __init__(self, data: bytes, width: int) -> None:
        """Use :meth:`from_bytes` or :meth:`from_ints`; this checks the layout like them."""
        width = require_int("width", width, low=1)
        if not isinstance(data, bytes):
            raise CryptoError(f"data must be bytes, got {type(data).__name__}")
        object.__setattr__(self, "_count", _check_layout(len(data), width))
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_width", width)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @classmethod
    def from_ints(cls, values: Iterable[int], width: int) -> CiphertextVector:
        """Pack integers ``0 ≤ v < 256^width`` into records.

        Raises:
            CryptoError: a value that is not an integer, is negative or does not fit; the
                message names its index.
        """
        return cls(pack_records(values, width), width)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, width: int) -> CiphertextVector:
        """Take concatenated records as they came off the wire (``bytes`` is kept, not copied).

        Raises:
            VerificationError: ``len(data)`` is not a multiple of ``width``; the message gives
                both sizes.
            CryptoError: ``data`` is not bytes-like, or ``width`` < 1.
        """
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        return cls(data, width)

    @classmethod
    def from_limbs_le32(cls, limbs: npt.ArrayLike, width: int) -> CiphertextVector:
        """Inverse of :meth:`limbs_le32`: records from ``(count, ⌈width/4⌉)`` 32-bit limbs.

        Raises:
            CryptoError: the array has the wrong shape, or a value does not fit in ``width``
                bytes (a padding byte above the record is not zero).
        """
        width = require_int("width", width, low=1)
        words = -(-width // 4)
        array = np.asarray(limbs)
        if (
            array.ndim != 2
            or array.shape[1] != words
            or array.dtype.kind != "u"
            or array.dtype.itemsize != 4
        ):
            raise CryptoError(
                f"limbs must be a uint32 array of shape (count, {words}), "
                f"got {array.dtype} of shape {array.shape}"
            )
        le = np.ascontiguousarray(array, dtype="<u4").view(np.uint8).reshape(len(array), 4 * words)
        if le[:, width:].any():
            raise CryptoError(f"a value in limbs does not fit in {width} bytes")
        return cls(le[:, width - 1 :: -1].tobytes(), width)

    @property
    def width(self) -> int:
        """Bytes per record."""
        return self._width

    @property
    def count(self) -> int:
        """Number of records (also ``len(vector)``)."""
        return self._count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"{type(self).__name__} indices must be integers")
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"record {index} of a vector of {self._count}")
        start = index * self._width
        return int.from_bytes(self._data[start : start + self._width], "big")

    def __iter__(self) -> Iterator[int]:
        view, w = memoryview(self._data), self._width
        for start in range(0, len(view), w):
            yield int.from_bytes(view[start : start + w], "big")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CiphertextVector):
            return NotImplemented
        return self._width == other._width and self._data == other._data

    def __hash__(self) -> int:
        return hash((self._width, self._data))

    def __repr__(self) -> str:
        return f"CiphertextVector(count={self._count}, width={self._width})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).from_bytes, (self._data, self._width))

    def to_bytes(self) -> bytes:
        """The records, concatenated: the wire form (no copy)."""
        return self._data

    def to_ints(self) -> list[int]:
        """The values as Python integers."""
        return unpack_records(self._data, self._width)

    def chunks(self, records: int) -> Iterator[memoryview]:
        """Read-only views of at most ``records`` whole records each, in order, for streaming.

        Raises:
            CryptoError: ``records`` < 1.
        """
        records = require_int("records", records, low=1)
        step = records * self._width
        view = memoryview(self._data)
        for start in range(0, len(view), step):
            yield view[start : start + step]

    def digest(self) -> bytes:
        """SHA-256 naming this exact vector (see :func:`records_hasher`)."""
        h = records_hasher(self._count, self._width)
        h.update(self._data)
        return h.digest()

    def as_array(self) -> npt.NDArray[np.uint8]:
        """The buffer as a read-only ``uint8`` array of shape ``(count, width)``, without a copy.

        Row ``i`` is record ``i``, most significant byte first.
        """
        array = np.frombuffer(self._data, dtype=np.uint8).reshape(self._count, self._width)
        array.flags.writeable = False
        return array

    def limbs_le32(self) -> npt.NDArray[np.uint32]:
        """The values as ``(count, ⌈width/4⌉)`` little-endian 32-bit limbs (a new array).

        This is the operand layout of a GPU Montgomery kernel: value ``i`` is
        ``Σⱼ limbs[i, j] · 2^(32j)``, least significant limb first, and each row's memory is the
        record's bytes reversed, zero-padded at the top to a multiple of 4 bytes. The dtype is
        explicitly little-endian (``<u4``), native on every machine fedlora runs on.
        """
        words = -(-self._width // 4)
        le = np.zeros((self._count, 4 * words), dtype=np.uint8)
        le[:, : self._width] = self.as_array()[:, ::-1]
        return le.view("<u4")
