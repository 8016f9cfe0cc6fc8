from __future__ import annotations

import pickle
import time

import pytest

from fedlora.crypto import (
    DjnObfuscator,
    ObfuscatorPool,
    ThreadsBackend,
    decrypt_batch,
    encrypt_batch,
)
from fedlora.errors import CryptoError


def test_pool_fills_in_the_background_and_hands_each_obfuscator_out_once(keypair) -> None:
    # Arrange
    public, private = keypair
    pool = ObfuscatorPool(public, capacity=40, backend=ThreadsBackend(2), batch=8).start()
    deadline = time.monotonic() + 30
    while len(pool) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pool) == 40  # the background thread filled it, nobody asked
    # Act
    first = pool.take(25)
    second = pool.take(25)  # 15 left in the pool, 10 computed on the spot
    pool.close()
    # Assert
    assert len(first) == 25 and len(second) == 25
    assert len(set(first + second)) == 50
    assert len(pool) == 0
    cts = encrypt_batch(public, list(range(50)), obfuscators=ObfuscatorPool(public, capacity=1))
    assert decrypt_batch(private, cts) == list(range(50))


def test_every_obfuscator_is_an_nth_residue(keypair, safe_primes) -> None:
    # R = r^n mod n² ⟺ R^(λ) ≡ 1 (mod n²) with λ = lcm(p-1, q-1): a ciphertext of 0 decrypts to 0.
    public, private = keypair
    for source in (ObfuscatorPool(public, capacity=5), DjnObfuscator(public)):
        for r in source.take(5):
            assert decrypt_batch(private, [r]) == [0]


def test_djn_obfuscators_are_distinct(keypair) -> None:
    public, _ = keypair
    values = DjnObfuscator(public).take(200)
    assert len(set(values)) == 200


def test_obfuscator_sources_refuse_to_be_persisted(keypair) -> None:
    public, _ = keypair
    for source in (ObfuscatorPool(public, capacity=2), DjnObfuscator(public)):
        with pytest.raises(CryptoError, match="never be serialized"):
            pickle.dumps(source)


def test_pool_fill_reaches_capacity_and_close_discards(keypair) -> None:
    public, _ = keypair
    with ObfuscatorPool(public, capacity=12) as pool:
        pool.fill()
        assert len(pool) == 12
    assert len(pool) == 0
