"""Fixed-width records: the one place contributions, aggregates and partials are (un)packed.

A vector of big integers travels and is stored as ``count`` big-endian records of ``width``
bytes each (``width`` = the byte length of n²), the layout :func:`fedlora.crypto.records_hasher`
digests. :class:`RecordSplitter` cuts a stream of arbitrary chunks into whole records as it
arrives, so intake can check each record without holding the stream.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.errors import VerificationError


def pack_records(values: Sequence[int], width: int) -> bytes:
    """``values`` as concatenated ``width``-byte big-endian records.

    Raises:
        VerificationError: a value is negative or does not fit in ``width`` bytes.
    """
    try:
        return b"".join(int(v).to_bytes(width, "big") for v in values)
    except OverflowError:
        raise VerificationError(f"a record does not fit in {width} bytes") from None


def unpack_records(data: bytes | bytearray | memoryview, width: int) -> list[int]:
    """The integers of concatenated ``width``-byte big-endian records.

    Raises:
        VerificationError: ``data`` is not a whole number of records.
    """
    if len(data) % width:
        raise VerificationError(f"{len(data)} bytes are not a whole number of {width}-byte records")
    view = memoryview(data)
    return [int.from_bytes(view[i : i + width], "big") for i in range(0, len(data), width)]


class RecordSplitter:
    """Cut streamed chunks into whole records; the remainder waits for the next chunk."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.records = 0  # records returned so far
        self._carry = b""

    def feed(self, chunk: bytes) -> tuple[int, bytes]:
        """(index of the first whole record in the returned bytes, those whole records)."""
        data = self._carry + chunk
        usable = len(data) - len(data) % self.width
        self._carry = data[usable:]
        first = self.records
        self.records += usable // self.width
        return first, data[:usable]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record still waiting."""
        return len(self._carry)
