"""Fixed-width records, as contributions, aggregates and partials travel and are stored.

A vector of big integers is ``count`` big-endian records of ``width`` bytes each (``width`` = the
byte length of n²): :class:`fedlora.crypto.CiphertextVector`'s layout, packed and unpacked by
:mod:`fedlora.crypto` alone. This module adds :class:`RecordSplitter`, which cuts a stream of
arbitrary chunks into whole records as it arrives, so intake can check each record without
holding the stream.
"""

from __future__ import annotations

from fedlora.crypto import pack_records, unpack_records

__all__ = ["RecordSplitter", "pack_records", "unpack_records"]


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
