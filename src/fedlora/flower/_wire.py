"""fedlora's protocol messages inside Flower ``RecordDict``s: a thin adapter, nothing decided here.

Every protocol message travels as its fedlora protobuf (:mod:`fedlora.rpc`, the same conversions
the gRPC transport uses) serialized into a ``uint8`` :class:`flwr.app.Array` of the ``fedlora``
:class:`flwr.app.ArrayRecord`; Flower chunks arrays, so megabytes of ciphertexts stream the way
model weights do (bytes in a ``ConfigRecord`` would not be chunked). A small ``ConfigRecord``
says which protocol step a message is.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedlora.errors import ProtocolError

STEP = "fedlora.step"  # ConfigRecord: {"step": ..., and small scalars}
BLOBS = "fedlora.blobs"  # ArrayRecord: name -> uint8 Array

JOIN, TRAIN, DECRYPT, RELEASE, KEEP = "join", "train", "decrypt", "release", "keep"
EVALUATE = "evaluate"  # an evaluate message: the model to evaluate is the verified global
KEYGEN = "keygen"  # key generation without a dealer, before round 1 (flower._keygen)
PARTIAL_HEADER, PARTIAL = "partial_header:", "partial:"  # + the chunk's first record


def put(content: RecordDict, step: str, blobs: Mapping[str, bytes], **scalars: Any) -> RecordDict:
    """Add a fedlora step and its blobs to ``content`` (which may carry the user's records)."""
    content[STEP] = ConfigRecord({"step": step, **scalars})
    content[BLOBS] = ArrayRecord(
        {name: Array(np.frombuffer(data, dtype=np.uint8).copy()) for name, data in blobs.items()}
    )
    return content


def step_of(content: RecordDict) -> str | None:
    """The fedlora step a message carries, or None for a message that is not fedlora's."""
    if STEP not in content.config_records:
        return None
    step = content.config_records[STEP].get("step")
    return step if isinstance(step, str) else None


def scalar(content: RecordDict, name: str) -> Any:
    return content.config_records[STEP].get(name)


SMALL = 1 << 16  # the bound on a blob that carries no ciphertexts, models or log entries


def blob(
    content: RecordDict, name: str, *, required: bool = True, max_bytes: int | None = None
) -> bytes:
    """A blob's bytes, at most ``max_bytes`` (``None``: no bound beyond the message's own).

    The array is read as a plain ``.npy`` payload of a 1-D ``uint8`` vector (never through
    ``np.load``, which accepts other formats), and its length is checked against the bound
    before anything is copied.

    Raises:
        ProtocolError: a required blob is missing, or it is not a byte array, malformed or
            larger than ``max_bytes``.
    """
    records = content.array_records.get(BLOBS)
    if records is None or name not in records:
        if required:
            raise ProtocolError(f"the fedlora message has no {name!r}")
        return b""
    array = records[name]
    bad = ProtocolError(f"the fedlora message's {name!r} is not a byte array")
    if (
        getattr(array, "stype", None) != "numpy.ndarray"
        or array.dtype != "uint8"
        or not isinstance(array.shape, (list, tuple))
        or len(array.shape) != 1
        or not isinstance(array.data, bytes)
    ):
        raise bad
    if max_bytes is not None and array.shape[0] > max_bytes:
        raise ProtocolError(
            f"the fedlora message's {name!r} has {array.shape[0]:,} bytes; at most "
            f"{max_bytes:,} are allowed"
        )
    payload = npy_payload(array, np.dtype(np.uint8), (array.shape[0],))
    if payload is None:
        raise bad
    return payload


def npy_payload(array: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes | None:
    """The raw bytes of a Flower ``Array`` that is exactly a C-order ``.npy`` payload of
    ``dtype`` and ``shape``, or None. The header is read strictly (never through ``np.load``,
    which accepts other formats, such as a zip archive, and allocates what the header claims)
    and compared before anything is copied."""
    data = getattr(array, "data", None)
    if getattr(array, "stype", None) != "numpy.ndarray" or not isinstance(data, bytes):
        return None
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
    except (ValueError, TypeError, EOFError, SyntaxError):
        return None
    start = fh.tell()
    size = int(np.prod(shape)) if shape else 1
    if got_dtype != dtype or tuple(got_shape) != tuple(shape) or (fortran and len(shape) > 1):
        return None
    if len(data) - start != size * dtype.itemsize:
        return None
    return data[start:]


def parse(message: Any, data: bytes, what: str) -> Any:
    """Parse a fedlora protobuf, turning a decode error into a ProtocolError."""
    from google.protobuf.message import DecodeError

    try:
        message.ParseFromString(data)
    except DecodeError:
        raise ProtocolError(f"the fedlora message's {what} is malformed") from None
    return message


def pack_lines(lines: list[bytes]) -> bytes:
    """Audit lines as one blob: each a 4-byte big-endian length and its bytes."""
    return b"".join(len(line).to_bytes(4, "big") + line for line in lines)


def unpack_lines(data: bytes, *, skip: int = 0, limit: int | None = None) -> list[bytes]:
    """The inverse of :func:`pack_lines`: lines ``skip`` … ``skip + limit − 1``.

    Raises:
        ProtocolError: a length runs past the end.
    """
    out: list[bytes] = []
    i, seen = 0, 0
    while i < len(data) and (limit is None or len(out) < limit):
        if i + 4 > len(data):
            raise ProtocolError("the fedlora message's audit entries are malformed")
        n = int.from_bytes(data[i : i + 4], "big")
        if i + 4 + n > len(data):
            raise ProtocolError("the fedlora message's audit entries are malformed")
        if seen >= skip:
            out.append(data[i + 4 : i + 4 + n])
        seen += 1
        i += 4 + n
    return out
