"""Proofs of plaintext knowledge: honest vectors verify; mauled, moved or copied ones do not."""

from __future__ import annotations

import dataclasses
import random

import gmpy2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.crypto import (
    DjnObfuscator,
    ObfuscatorPool,
    PlaintextProof,
    add_ciphertext_vectors,
    decrypt_batch,
    deterministic_rng,
    encrypt_and_prove,
    encrypt_batch,
    verify_plaintext_knowledge,
    verify_plaintext_knowledge_batch,
)
from fedlora.errors import CryptoError, VerificationError

CTX = b"fed-1/round-3/bank-a"


@pytest.mark.parametrize("source", ["cold", "pool", "djn"])
def test_an_honest_vector_verifies_and_decrypts(keypair, source) -> None:
    # Arrange
    public, private = keypair
    obfuscators = {
        "cold": None,
        "pool": ObfuscatorPool(public, capacity=4),
        "djn": DjnObfuscator(public),
    }[source]
    messages = [0, 1, 2**100, public.n - 1, 7]
    # Act
    cts, proof = encrypt_and_prove(public, messages, context=CTX, obfuscators=obfuscators)
    # Assert
    assert verify_plaintext_knowledge(public, cts, proof, context=CTX) is None
    assert decrypt_batch(private, cts) == messages
    assert PlaintextProof.from_bytes(public, proof.to_bytes(public)) == proof


@given(st.lists(st.integers(min_value=0, max_value=2**64), min_size=1, max_size=12))
def test_any_vector_proves(keypair, messages) -> None:
    public, _ = keypair
    cts, proof = encrypt_and_prove(public, messages, context=CTX)
    verify_plaintext_knowledge(public, cts, proof, context=CTX)


def test_a_vector_that_cancels_someone_elses_cannot_be_proven(keypair) -> None:
    # Arrange: the victim's honest contribution, and an attacker that wants its own vector to
    # be c_victim⁻¹·E(0), so that victim + attacker + … sums to the others alone.
    public, private = keypair
    n2 = public.nsquare
    victim, victim_proof = encrypt_and_prove(public, [11, 22, 33], context=b"victim")
    zeros, own_proof = encrypt_and_prove(public, [0, 0, 0], context=b"attacker")
    mauled = [int(gmpy2.invert(c, n2)) * z % n2 for c, z in zip(victim, zeros)]
    assert decrypt_batch(private, add_ciphertext_vectors(public, victim, mauled)) == [0, 0, 0]
    # Act / Assert: neither its own proof, nor the victim's, nor the victim's moved to the
    # attacker's context verifies for the mauled vector.
    for proof, context in [
        (own_proof, b"attacker"),
        (victim_proof, b"attacker"),
        (victim_proof, b"victim"),
    ]:
        with pytest.raises(VerificationError, match="does not know what it encrypted"):
            verify_plaintext_knowledge(public, mauled, proof, context=context)
    # A verbatim copy of the victim's vector cannot be passed off under another context either.
    with pytest.raises(VerificationError, match="does not know what it encrypted"):
        verify_plaintext_knowledge(public, victim, victim_proof, context=b"attacker")


@pytest.mark.parametrize("backend", ["gmpy2", "ifma"])
def test_a_batch_of_proofs_blames_exactly_the_bad_claims(keypair, backend) -> None:
    # Arrange: a round's worth of claims on one backend batch: honest ones, a mauled vector
    # with its sender's own proof, a proof moved to another context, a malformed proof and an
    # empty vector. The ifma case runs vectors above the kernel's floor, so the kernel decides.
    from fedlora.crypto import make_backend
    from fedlora.crypto._ifma import MIN_MULTI, load_kernel

    if backend == "ifma" and load_kernel() is None:
        pytest.skip("the IFMA kernel is not built here, or this CPU does not run AVX-512 IFMA")
    engine = make_backend(backend)[0]
    public, _ = keypair
    n2 = public.nsquare
    size = MIN_MULTI + 3 if backend == "ifma" else 12
    rng = deterministic_rng(b"batch")
    honest = [
        encrypt_and_prove(public, [i % 7] * size, context=b"c%d" % i, rng=rng) for i in range(3)
    ]
    zeros, own = encrypt_and_prove(public, [0] * size, context=b"mauler", rng=rng)
    mauled = [int(gmpy2.invert(c, n2)) * z % n2 for c, z in zip(honest[0][0], zeros)]
    claims = [
        (honest[0][0], honest[0][1], b"c0"),
        (mauled, own, b"mauler"),
        (honest[1][0], honest[1][1], b"c1"),
        (honest[2][0], honest[2][1], b"elsewhere"),
        (honest[2][0], dataclasses.replace(honest[2][1], response_r=0), b"c2"),
        ([], honest[2][1], b"c2"),
        (honest[2][0], honest[2][1], b"c2"),
    ]
    # Act
    outcome = verify_plaintext_knowledge_batch(public, claims, backend=engine)
    # Assert
    assert [o is None for o in outcome] == [True, False, True, False, False, False, True]
    assert "does not know" in str(outcome[1]) and "does not know" in str(outcome[3])
    assert "out of range" in str(outcome[4]) and "empty vector" in str(outcome[5])
    with pytest.raises(VerificationError, match="does not know"):
        verify_plaintext_knowledge(public, mauled, own, context=b"mauler", backend=engine)


def test_one_altered_ciphertext_or_response_is_caught(keypair) -> None:
    public, _ = keypair
    cts, proof = encrypt_and_prove(public, list(range(20)), context=CTX)
    altered = list(cts)
    altered[7] = encrypt_batch(public, [7])[0]  # same plaintext, other randomness
    with pytest.raises(VerificationError, match="does not know"):
        verify_plaintext_knowledge(public, altered, proof, context=CTX)
    for field in ("commitment", "response_m", "response_r"):
        bad = dataclasses.replace(proof, **{field: getattr(proof, field) + 1})
        with pytest.raises(VerificationError):
            verify_plaintext_knowledge(public, cts, bad, context=CTX)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"response_m": -1}, "out of range"),
        ({"response_r": 0}, "out of range"),
        ({"commitment": 0}, "proof of plaintext knowledge"),
    ],
)
def test_malformed_proofs_are_refused(keypair, change, match) -> None:
    public, _ = keypair
    cts, proof = encrypt_and_prove(public, [1, 2], context=CTX)
    with pytest.raises(VerificationError, match=match):
        verify_plaintext_knowledge(public, cts, dataclasses.replace(proof, **change), context=CTX)
    with pytest.raises(VerificationError, match="bytes"):
        PlaintextProof.from_bytes(public, proof.to_bytes(public)[:-1])


def test_bad_plaintexts_and_empty_vectors_are_refused(keypair) -> None:
    public, _ = keypair
    with pytest.raises(CryptoError, match=r"plaintext\[1\]"):
        encrypt_and_prove(public, [1, public.n], context=CTX)
    with pytest.raises(CryptoError, match="empty"):
        encrypt_and_prove(public, [], context=CTX)


def test_the_proof_is_deterministic_for_a_seeded_rng(keypair) -> None:
    # Known-answer shape: the same seed gives the same ciphertexts and proof (Fiat–Shamir).
    public, _ = keypair
    first = encrypt_and_prove(public, [5, 6], context=CTX, rng=deterministic_rng(7))
    second = encrypt_and_prove(public, [5, 6], context=CTX, rng=deterministic_rng(7))
    other = encrypt_and_prove(public, [5, 6], context=CTX, rng=random.Random(3))
    assert first == second and first != other
