from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedlora.crypto import CodecParams, decode, encode, pack_slots, unpack_slots
from fedlora.errors import CryptoError

PARAMS = CodecParams(clip=1.0, value_bits=16, max_total_weight=10, key_bits=2048)


def test_slot_layout_matches_the_design() -> None:
    # 16 value bits + 4 headroom bits for 10 contributions → 20-bit slots → 102 per 2048-bit key
    # (85 when slots were rounded up to 3 bytes); 8-bit values → 12-bit slots → 170.
    assert PARAMS.headroom_bits == 4
    assert PARAMS.slot_bits == 20
    assert PARAMS.slots_per_ciphertext == 102
    assert CodecParams(1.0, 8, 10, 2048).slots_per_ciphertext == 170
    assert CodecParams(1.0, 16, 256, 2048).slot_bits == 24
    assert CodecParams(1.0, 16, 257, 2048).slot_bits == 25
    assert CodecParams(1.0, 16, 1, 2048).headroom_bits == 0
    assert CodecParams(1.0, 32, 1 << 31, 2048).slot_bits == 63  # the widest: fits a uint64


def test_packing_known_answer() -> None:
    # 8 value bits + 1 headroom bit → 9-bit slots, not byte-aligned: 28 per 256-bit plaintext
    # (255 // 9), the plaintext's 252 bits preceded by 4 zero bits in its 32 bytes.
    params = CodecParams(clip=1.0, value_bits=8, max_total_weight=2, key_bits=256)
    assert params.slots_per_ciphertext == 28 and params.plaintext_bytes == 32
    slots = np.arange(1, 31, dtype=np.uint64)
    packed = pack_slots(slots, params)
    assert len(packed) == 2
    assert packed[0] == int("".join(f"{v:09b}" for v in range(1, 29)), 2)
    assert packed[1] == int(f"{29:09b}{30:09b}" + "0" * 9 * 26, 2)
    assert np.array_equal(unpack_slots(packed, params, 30), slots)
    with pytest.raises(CryptoError, match="does not fit in 9 bits"):
        pack_slots(np.array([512], dtype=np.uint64), params)
    with pytest.raises(CryptoError, match="wider than 28 slots of 9 bits"):
        unpack_slots([1 << 252], params, 1)


def test_the_codec_digest_names_the_bit_layout() -> None:
    # Peers that packed slots in whole bytes (digest v1) and peers that pack bits refuse each
    # other's signatures instead of decoding each other's sums wrongly.
    import hashlib

    canonical = json.dumps(PARAMS.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert PARAMS.digest() == hashlib.sha256(b"fedlora/codec/v2\x00" + canonical).digest()
    assert PARAMS.digest() != hashlib.sha256(b"fedlora/codec/v1\x00" + canonical).digest()


@given(
    values=st.lists(st.integers(0, 2**20 - 1), min_size=1, max_size=300),
)
def test_pack_unpack_round_trip_at_slot_limits(values) -> None:
    slots = np.array(values + [0, 2**20 - 1], dtype=np.uint64)  # both slot limits always present
    packed = pack_slots(slots, PARAMS)
    assert all(0 <= m < 2**2047 for m in packed)
    assert np.array_equal(unpack_slots(packed, PARAMS, slots.size), slots)


@given(
    data=hnp.arrays(np.float64, st.integers(1, 400), elements=st.floats(-3, 3)),
    weights=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    seed=st.integers(0, 2**32),
)
def test_sum_of_encodings_decodes_to_weighted_mean_within_one_step(data, weights, seed) -> None:
    # Arrange: one contribution per weight, each a perturbed copy of the data.
    params = CodecParams(clip=2.0, value_bits=12, max_total_weight=20, key_bits=512)
    rng = np.random.default_rng(seed)
    inputs = [data + rng.normal(0, 0.5, data.size) for _ in weights]
    # Act: add the packed plaintexts as Paillier would (integer addition, no modulus reached).
    encoded = [encode(x, params, weight=w, rng=rng) for x, w in zip(inputs, weights)]
    summed = [sum(col) for col in zip(*encoded)]
    assert all(m < 2**511 for m in summed)
    mean = decode(summed, params, length=data.size, total_weight=sum(weights))
    # Assert
    clipped = [np.clip(x, -2, 2) for x in inputs]
    expected = sum(w * x for w, x in zip(weights, clipped)) / sum(weights)
    assert np.max(np.abs(mean - expected)) <= params.step


def test_extremes_encode_exactly() -> None:
    x = np.array([-1.0, 1.0, -5.0, 5.0])
    out = decode(encode(x, PARAMS), PARAMS, length=4, total_weight=1)
    assert np.array_equal(out, [-1.0, 1.0, -1.0, 1.0])


def test_stochastic_rounding_is_unbiased() -> None:
    x = np.full(200_000, 0.3 * PARAMS.step)  # a third of a step above -c + k·step
    out = decode(
        encode(x, PARAMS, rng=np.random.default_rng(0)), PARAMS, length=x.size, total_weight=1
    )
    assert abs(out.mean() - x[0]) < 0.01 * PARAMS.step


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad) -> None:
    with pytest.raises(CryptoError, match=r"value\[1\] is not finite"):
        encode(np.array([0.0, bad]), PARAMS)


def test_bad_weights_and_totals_are_refused() -> None:
    with pytest.raises(CryptoError, match="weight"):
        encode(np.zeros(3), PARAMS, weight=11)
    with pytest.raises(CryptoError, match="weight"):
        encode(np.zeros(3), PARAMS, weight=True)
    with pytest.raises(CryptoError, match="total_weight"):
        decode([0], PARAMS, length=1, total_weight=0)
    with pytest.raises(CryptoError, match="empty"):
        encode(np.zeros(0), PARAMS)


def test_corrupt_or_overflowed_sums_are_detected() -> None:
    one = encode(np.ones(5), PARAMS)  # every slot at 2^16 - 1
    with pytest.raises(CryptoError, match="exceeds total_weight"):
        decode([2 * m for m in one], PARAMS, length=5, total_weight=1)
    with pytest.raises(CryptoError, match="wider than"):
        unpack_slots([1 << 2047], PARAMS, 1)
    with pytest.raises(CryptoError, match="at most 102"):
        unpack_slots([0], PARAMS, 103)


def test_params_validate_serialize_and_digest() -> None:
    assert CodecParams.from_dict(json.loads(json.dumps(PARAMS.to_dict()))) == PARAMS
    assert PARAMS.digest() != CodecParams(1.0, 16, 11, 2048).digest()
    for bad in [
        dict(clip=0.0, value_bits=16, max_total_weight=10, key_bits=2048),
        dict(clip=float("nan"), value_bits=16, max_total_weight=10, key_bits=2048),
        dict(clip=1.0, value_bits=True, max_total_weight=10, key_bits=2048),
        dict(clip=1.0, value_bits=33, max_total_weight=10, key_bits=2048),
        dict(clip=1.0, value_bits=16, max_total_weight=10, key_bits=100),
        dict(clip=1.0, value_bits=16, max_total_weight=0, key_bits=2048),
    ]:
        with pytest.raises(CryptoError, match="codec"):
            CodecParams(**bad)
    with pytest.raises(CryptoError, match="unknown fields"):
        CodecParams.from_dict({**PARAMS.to_dict(), "extra": 1})


def test_a_million_values_pack_without_a_per_value_loop() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 1 << 20).astype(np.float32)
    packed = encode(x, PARAMS, rng=np.random.default_rng(2))
    assert len(packed) == PARAMS.ciphertexts_for(1 << 20) == 10281  # 12337 in whole bytes
    out = decode(packed, PARAMS, length=x.size, total_weight=1)
    assert np.max(np.abs(out - x)) <= PARAMS.step
