"""Packing codec: many quantized values per Paillier plaintext (BatchCrypt-style).

Zhang et al., "BatchCrypt: Efficient Homomorphic Encryption for Cross-Silo Federated Learning"
(USENIX ATC 2020) pack quantized gradients into one plaintext so that one ciphertext carries many
values and one homomorphic addition adds them all. This codec:

1. clips each value to ``[-c, c]`` (non-finite values are refused, never clipped);
2. quantizes to ``b`` bits with stochastic rounding, which is unbiased: ``E[q] = (x+c)/(2c)·(2ᵇ−1)``;
3. uses offset binary (``q ∈ [0, 2ᵇ−1]``), so the sign needs no two's-complement carry handling;
4. multiplies by the contribution's integer weight ``w`` (weighted FedAvg);
5. leaves ``h = ⌈log₂ W⌉`` headroom bits, ``W`` the largest total weight an aggregate may have, so
   a sum ``Σ wₖ·qₖ ≤ W·(2ᵇ−1) < 2^(b+h)`` never carries into the next slot;
6. packs slots of exactly ``s = b + h`` bits, not rounded up to bytes (numpy's bit unpacking and
   one ``int.from_bytes`` per plaintext; no Python loop per value).

``k = ⌊(|n|−1) / s⌋`` slots fit below ``2^(|n|−1) ≤ n``, so a full plaintext and any admissible
sum of them stay below ``n``: at 2048 bits, 102 slots of 20 bits (16-bit values, up to 16
contributions), 170 of 12 bits (8-bit values). Byte-aligned slots, as this codec had before,
fit 85 slots of 24 bits: the bit layout needs about a sixth fewer ciphertexts, and its digest
(bound into every signature) names the layout, so peers that pack differently refuse each other.

Decoding the sum of encodings of total weight ``W'`` gives the weighted mean of the clipped values
within one quantization step ``2c/(2ᵇ−1)`` per value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from fedlora.crypto._util import require_int, require_sequence
from fedlora.errors import CryptoError

__all__ = ["CodecParams", "decode", "encode", "pack_slots", "unpack_slots"]

_MAX_SLOT_BITS = 64  # slots are handled as uint64


@dataclass(frozen=True)
class CodecParams:
    """Codec parameters; validated on construction, serializable, hashed into signatures.

    Attributes:
        clip: c > 0; values are clipped to [-c, c].
        value_bits: b in 2..32.
        max_total_weight: W in 1..2³¹, the largest sum of contribution weights one aggregate may
            hold (the number of contributions for unweighted averaging).
        key_bits: bit length of the Paillier modulus n, 256..16384.
    """

    clip: float
    value_bits: int
    max_total_weight: int
    key_bits: int

    def __post_init__(self) -> None:
        def need_int(name: str, value: object, low: int, high: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CryptoError(
                    f"codec {name} must be an integer in {low}..{high}, got {value!r}"
                )

        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise CryptoError(f"codec clip must be a number, got {type(self.clip).__name__}")
        try:
            finite = math.isfinite(self.clip)
        except OverflowError:
            finite = False
        if not (finite and self.clip > 0):
            raise CryptoError(f"codec clip must be finite and > 0, got {self.clip!r}")
        object.__setattr__(self, "clip", float(self.clip))
        need_int("value_bits", self.value_bits, 2, 32)
        need_int("max_total_weight", self.max_total_weight, 1, 1 << 31)
        need_int("key_bits", self.key_bits, 256, 16384)
        if self.slot_bits > _MAX_SLOT_BITS:
            raise CryptoError(
                f"codec slot needs {self.slot_bits} bits (value_bits + headroom), more than {_MAX_SLOT_BITS}"
            )
        if self.slots_per_ciphertext < 1:
            raise CryptoError("codec key_bits is too small for one slot")

    @property
    def headroom_bits(self) -> int:
        """h = ⌈log₂ W⌉."""
        return (self.max_total_weight - 1).bit_length()

    @property
    def slot_bits(self) -> int:
        return self.value_bits + self.headroom_bits

    @property
    def slots_per_ciphertext(self) -> int:
        return (self.key_bits - 1) // self.slot_bits

    @property
    def plaintext_bytes(self) -> int:
        """Bytes of one packed plaintext, k·s bits rounded up."""
        return -(-(self.slots_per_ciphertext * self.slot_bits) // 8)

    @property
    def levels(self) -> int:
        """2ᵇ − 1, the largest quantized value."""
        return (1 << self.value_bits) - 1

    @property
    def step(self) -> float:
        """One quantization step, 2c/(2ᵇ−1): the decoding error bound per value."""
        return 2 * self.clip / self.levels

    def ciphertexts_for(self, values: int) -> int:
        """How many plaintexts a vector of ``values`` values packs into."""
        return -(-values // self.slots_per_ciphertext)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: object) -> CodecParams:
        """Build from a mapping with exactly the four fields.

        Raises:
            CryptoError: not a mapping, unknown or missing fields, or invalid values.
        """
        if not isinstance(doc, dict):
            raise CryptoError("codec parameters must be a mapping")
        expected = {"clip", "value_bits", "max_total_weight", "key_bits"}
        if set(doc) != expected:
            extra, missing = sorted(set(doc) - expected), sorted(expected - set(doc))
            raise CryptoError(f"codec parameters: unknown fields {extra}, missing fields {missing}")
        return cls(**doc)

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON: what signatures bind to."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        # v2: slots of exactly slot_bits bits (v1 rounded them up to whole bytes).
        return hashlib.sha256(b"fedlora/codec/v2\x00" + canonical.encode()).digest()


def pack_slots(slots: npt.NDArray[np.uint64], params: CodecParams) -> list[int]:
    """Pack unsigned slot values (each < 2^slot_bits) into plaintext integers.

    Slot 0 of each plaintext is its most significant; the last plaintext is zero-padded.

    Raises:
        CryptoError: a value that is not a non-negative integer, or one wider than a slot.
    """
    try:
        values = np.ascontiguousarray(slots, dtype=np.uint64).ravel()
    except (TypeError, ValueError, OverflowError):
        raise CryptoError("slots must be an array of non-negative integers") from None
    s, k = params.slot_bits, params.slots_per_ciphertext
    if values.size and int(values.max()) >> s:
        raise CryptoError(f"a slot value does not fit in {s} bits")
    count = params.ciphertexts_for(values.size)
    width = params.plaintext_bytes
    pad = 8 * width - k * s  # leading zero bits of each plaintext
    out: list[int] = []
    rows = max(1, (1 << 22) // (k * 64))  # plaintexts per block: bounded memory for the bits
    for first in range(0, count, rows):
        block = np.zeros((min(rows, count - first), k), dtype=">u8")
        flat = block.reshape(-1)
        chunk = values[first * k : (first + block.shape[0]) * k]
        flat[: chunk.size] = chunk
        bits = np.unpackbits(block.view(np.uint8).reshape(block.shape[0], k, 8), axis=2)
        bits = bits[:, :, 64 - s :].reshape(block.shape[0], k * s)
        if pad:
            bits = np.concatenate([np.zeros((block.shape[0], pad), dtype=np.uint8), bits], axis=1)
        blob = np.packbits(bits, axis=1).tobytes()
        out.extend(int.from_bytes(blob[i : i + width], "big") for i in range(0, len(blob), width))
    return out


def unpack_slots(
    plaintexts: Sequence[int], params: CodecParams, length: int
) -> npt.NDArray[np.uint64]:
    """Inverse of :func:`pack_slots`: the first ``length`` slot values.

    Raises:
        CryptoError: a plaintext wider than ``k`` slots, or too few plaintexts for ``length``.
    """
    s, k = params.slot_bits, params.slots_per_ciphertext
    plaintexts = require_sequence("plaintexts", plaintexts)
    length = require_int("length", length, low=0)
    if length > len(plaintexts) * k:
        raise CryptoError(
            f"{len(plaintexts)} plaintexts hold at most {len(plaintexts) * k} values, asked for {length}"
        )
    needed = -(-length // k) if k else 0
    width = params.plaintext_bytes
    pad = 8 * width - k * s
    parts: list[npt.NDArray[np.uint64]] = []
    rows = max(1, (1 << 22) // (k * 64))
    for first in range(0, needed, rows):
        group = plaintexts[first : min(needed, first + rows)]
        blob = b"".join(_fits(m, k, s).to_bytes(width, "big") for m in group)
        bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8).reshape(len(group), width), axis=1)
        bits = bits[:, pad:].reshape(len(group), k, s)
        full = np.zeros((len(group), k, 64), dtype=np.uint8)
        full[:, :, 64 - s :] = bits
        parts.append(np.packbits(full, axis=2).reshape(-1, 8).view(">u8").ravel())
    # Every plaintext must fit in k slots, the unread ones too (a corrupt sum is refused whole).
    for m in plaintexts[needed:]:
        _fits(m, k, s)
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=">u8")
    return joined[:length].astype(np.uint64)


def _fits(m: object, k: int, s: int) -> int:
    value = require_int("plaintext", m)
    if value < 0 or value >> (k * s):
        raise CryptoError(f"a plaintext is wider than {k} slots of {s} bits: corrupt or overflowed")
    return value


def encode(
    values: npt.ArrayLike,
    params: CodecParams,
    *,
    weight: int = 1,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Clip, quantize (stochastic rounding), weight and pack a float vector into plaintexts.

    Args:
        values: any float array; flattened in C order.
        weight: the contribution's integer weight, 1..max_total_weight (e.g. its example count).
        rng: numpy generator for the rounding noise; ``None`` seeds one from the OS.

    Raises:
        CryptoError: NaN or infinite values, an empty vector, or a weight out of range.
    """
    try:
        x = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError, OverflowError):
        raise CryptoError("values must be an array of numbers") from None
    if x.size == 0:
        raise CryptoError("cannot encode an empty vector")
    if not np.all(np.isfinite(x)):
        bad = int(np.argmin(np.isfinite(x)))
        raise CryptoError(f"value[{bad}] is not finite; refusing to encode NaN or infinity")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int)
        or not 1 <= weight <= params.max_total_weight
    ):
        raise CryptoError(
            f"weight must be an integer in 1..{params.max_total_weight}, got {weight!r}"
        )
    generator = np.random.default_rng() if rng is None else rng
    c = params.clip
    scaled = (np.clip(x, -c, c) + c) * (params.levels / (2 * c))
    q = np.floor(scaled + generator.random(x.size))
    q = np.clip(q, 0, params.levels).astype(np.uint64)  # guards the float edge at exactly 2ᵇ−1
    return pack_slots(q * np.uint64(weight), params)


def decode(
    plaintexts: Sequence[int], params: CodecParams, *, length: int, total_weight: int
) -> npt.NDArray[np.float64]:
    """Unpack a decrypted sum and return the weighted mean of the clipped inputs.

    Args:
        length: number of values encoded.
        total_weight: Σ of the weights of the contributions in the sum, 1..max_total_weight.

    Raises:
        CryptoError: total_weight out of range, or a slot larger than total_weight·(2ᵇ−1)
            (a corrupted or overflowed sum, which must not be silently averaged).
    """
    if (
        isinstance(total_weight, bool)
        or not isinstance(total_weight, int)
        or not 1 <= total_weight <= params.max_total_weight
    ):
        raise CryptoError(
            f"total_weight must be an integer in 1..{params.max_total_weight}, got {total_weight!r}"
        )
    sums = unpack_slots(plaintexts, params, length)
    limit = total_weight * params.levels
    if sums.size and int(sums.max()) > limit:
        raise CryptoError(
            f"a slot sum exceeds total_weight·(2^b−1) = {limit}: the sum is corrupt or overflowed"
        )
    return (
        sums.astype(np.float64) * (2 * params.clip / (params.levels * total_weight)) - params.clip
    )
