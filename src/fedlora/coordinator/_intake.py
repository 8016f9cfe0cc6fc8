"""Streaming intake: an upload's chunks checked as they arrive, written and fsynced.

No decisions about rounds here (the engine makes those, before and after): only "are these the
bytes the header announced, well formed, and safely on disk". Any failure removes the temporary
file, so a refused or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedlora.crypto import records_hasher
from fedlora.errors import VerificationError
from fedlora.protocol import ContributionHeader, RecordSplitter, SecureSum


@dataclass(frozen=True)
class Received:
    """An upload on disk (not yet committed) and the digest of what arrived."""

    temp: Path
    digest: bytes
    records: bytes  # kept for the proof check (a contribution is a few MB at most per round)


def receive_contribution(
    header: ContributionHeader, chunks: Iterable[bytes], secure_sum: SecureSum, temp: Path
) -> Received:
    """Read a contribution's records into ``temp``, checking every record and the total size.

    Raises:
        VerificationError: oversized, truncated, a malformed record, or records that do not
            match the header's digest (``temp`` is removed).
    """
    width = secure_sum.width
    expected = header.record_count * width
    hasher = records_hasher(header.record_count, width)
    splitter = RecordSplitter(width)
    received = 0
    kept = bytearray()
    try:
        with open(temp, "wb") as fh:
            for chunk in chunks:
                received += len(chunk)
                if received > expected:
                    raise VerificationError(
                        f"contribution is oversized: more than the {expected} bytes announced"
                    )
                first, whole = splitter.feed(chunk)
                secure_sum.check_records(whole, first)
                hasher.update(chunk)
                kept += chunk
                fh.write(chunk)
            if received != expected:
                raise VerificationError(
                    f"contribution is truncated: {received} of {expected} bytes arrived"
                )
            fh.flush()
            os.fsync(fh.fileno())
        digest = hasher.digest()
        if not hmac.compare_digest(digest, header.ciphertexts_digest):
            raise VerificationError("ciphertexts do not match the digest in the header")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return Received(temp, digest, bytes(kept))


def receive_bounded(chunks: Iterable[bytes], expected: int, what: str) -> bytes:
    """All of a stream that must be exactly ``expected`` bytes; stops reading once it is more.

    Raises:
        VerificationError: oversized or short.
    """
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > expected:
            raise VerificationError(f"{what} is oversized")
    if len(data) != expected:
        raise VerificationError(f"{what} has {len(data)} bytes, expected {expected}")
    return bytes(data)
