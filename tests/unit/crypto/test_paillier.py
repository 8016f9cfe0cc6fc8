from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from phe import PaillierPrivateKey, PaillierPublicKey

from fedlora.crypto import (
    DjnObfuscator,
    ObfuscatorPool,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    decrypt,
    decrypt_batch,
    encrypt,
    encrypt_batch,
    key_fingerprint,
    keypair_from_primes,
    validate_ciphertext,
    validate_ciphertexts,
)
from fedlora.errors import CryptoError
from tests.conftest import load_vectors


def test_known_answers_match_phe_raw_encrypt() -> None:
    # Arrange
    vec = load_vectors("paillier")
    public, private = keypair_from_primes(int(vec["p"], 16), int(vec["q"], 16))
    for case in vec["cases"]:
        m, r, c = (int(case[k], 16) for k in ("m", "r", "c"))
        # Act
        ours = encrypt(public, m, obfuscator=pow(r, public.n, public.nsquare))
        # Assert
        assert ours == c
        assert decrypt(private, c) == m


@pytest.mark.parametrize("source", ["fresh", "pool", "djn"])
def test_phe_private_key_decrypts_fedlora_ciphertexts(safe_primes, source) -> None:
    # Arrange: phe's own private key, built from p and q, independent of fedlora.
    p, q = safe_primes
    public = PaillierPublicKey(p * q)
    phe_private = PaillierPrivateKey(public, p, q)
    messages = [0, 1, public.n - 1, *(random.randrange(public.n) for _ in range(20))]
    obfuscators = {
        "fresh": None,
        "pool": ObfuscatorPool(public, capacity=8),
        "djn": DjnObfuscator(public),
    }[source]
    # Act
    cts = encrypt_batch(public, messages, obfuscators=obfuscators)
    # Assert
    assert [phe_private.raw_decrypt(c) for c in cts] == messages


def test_phe_ciphertexts_decrypt_with_fedlora(keypair) -> None:
    public, private = keypair
    messages = [random.randrange(public.n) for _ in range(10)]
    cts = [public.raw_encrypt(m) for m in messages]
    assert decrypt_batch(private, cts) == messages


@given(st.data())
def test_homomorphic_addition(keypair, data) -> None:
    # D(E(a)·E(b)) = a + b mod n
    public, private = keypair
    a = data.draw(st.lists(st.integers(0, public.n - 1), min_size=1, max_size=8))
    b = data.draw(st.lists(st.integers(0, public.n - 1), min_size=len(a), max_size=len(a)))
    summed = add_ciphertext_vectors(public, encrypt_batch(public, a), encrypt_batch(public, b))
    assert decrypt_batch(private, summed) == [(x + y) % public.n for x, y in zip(a, b)]


def test_encryption_is_randomized(keypair) -> None:
    public, _ = keypair
    assert encrypt(public, 5) != encrypt(public, 5)


@pytest.mark.parametrize("bad", [-1, "n", 1.5, True, None])
def test_out_of_range_or_mistyped_plaintext_is_refused(keypair, bad) -> None:
    public, _ = keypair
    if bad == "n":
        bad = public.n
    with pytest.raises(CryptoError, match="plaintext"):
        encrypt(public, bad)
    with pytest.raises(CryptoError, match=r"plaintext\[1\]"):
        encrypt_batch(public, [1, bad])


def test_ciphertexts_outside_the_unit_group_are_refused(keypair, safe_primes) -> None:
    public, private = keypair
    p, _ = safe_primes
    for bad in [0, public.nsquare, public.nsquare + 5, p, p * 17, -3]:
        with pytest.raises(CryptoError):
            validate_ciphertext(public, bad)
    with pytest.raises(CryptoError, match=r"ciphertext\[2\]"):
        validate_ciphertexts(public, [2, 3, p])
    with pytest.raises(CryptoError, match="ciphertext"):
        decrypt(private, p)


def test_wrong_key_types_are_named(keypair) -> None:
    public, private = keypair
    with pytest.raises(CryptoError, match="PaillierPublicKey"):
        encrypt(private, 1)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="PaillierPrivateKey"):
        decrypt(public, 1)  # type: ignore[arg-type]


def test_vectors_of_different_length_do_not_add(keypair) -> None:
    public, _ = keypair
    with pytest.raises(CryptoError, match="differ in length"):
        add_ciphertext_vectors(public, [2, 3], [2])


def test_keypair_from_primes_rejects_bad_primes(safe_primes) -> None:
    p, q = safe_primes
    with pytest.raises(CryptoError, match="distinct"):
        keypair_from_primes(p, p)
    with pytest.raises(CryptoError, match="prime"):
        keypair_from_primes(p, q + 2)
    with pytest.raises(CryptoError, match="at least"):
        keypair_from_primes(1019, 1031)


def test_digests_and_fingerprints_name_exact_content(keypair) -> None:
    public, _ = keypair
    cts = encrypt_batch(public, [1, 2, 3])
    assert ciphertext_vector_digest(public, cts) != ciphertext_vector_digest(public, cts[::-1])
    assert ciphertext_vector_digest(public, cts) != ciphertext_vector_digest(public, cts[:2])
    other = PaillierPublicKey(public.n + 2)
    assert key_fingerprint(public) != key_fingerprint(other)
    assert len(key_fingerprint(public)) == 32
