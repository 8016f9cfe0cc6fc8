from __future__ import annotations

import hashlib

import pytest

from fedlora.crypto import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from fedlora.errors import CryptoError, VerificationError
from tests.conftest import load_vectors

VEC = load_vectors("merkle")
CT_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VEC["leaves"]]
MANY = [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(40)]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_rfc6962_roots() -> None:
    assert merkle_root([]) == EMPTY_ROOT
    for size, root in enumerate(VEC["roots"]):
        assert merkle_root(CT_LEAVES[:size]).hex() == root


def test_rfc6962_inclusion_vectors() -> None:
    for case in VEC["inclusion"]:
        proof = inclusion_proof(case["index"], CT_LEAVES[: case["size"]])
        assert [p.hex() for p in proof] == case["proof"]
        verify_inclusion(
            CT_LEAVES[case["index"]],
            case["index"],
            case["size"],
            proof,
            h(VEC["roots"][case["size"]]),
        )


def test_rfc6962_consistency_vectors() -> None:
    for case in VEC["consistency"]:
        proof = consistency_proof(case["first"], CT_LEAVES[: case["second"]])
        assert [p.hex() for p in proof] == case["proof"]
        verify_consistency(
            case["first"],
            case["second"],
            h(VEC["roots"][case["first"]]),
            h(VEC["roots"][case["second"]]),
            proof,
        )


def test_every_inclusion_proof_verifies_and_tampering_is_caught() -> None:
    for n in range(1, len(MANY) + 1):
        root = merkle_root(MANY[:n])
        for i in range(n):
            proof = inclusion_proof(i, MANY[:n])
            assert verify_inclusion(MANY[i], i, n, proof, root) is None
            if n > 1:
                with pytest.raises(VerificationError):
                    verify_inclusion(MANY[i], (i + 1) % n, n, proof, root)  # wrong index
                flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                with pytest.raises(VerificationError):
                    verify_inclusion(MANY[i], i, n, flipped, root)  # flipped byte
                with pytest.raises(VerificationError):
                    verify_inclusion(MANY[i], i, n, proof[:-1], root)  # truncated
                with pytest.raises(VerificationError):
                    verify_inclusion(MANY[i], i, n, [*proof, b"\xab" * 32], root)  # extended
                with pytest.raises(VerificationError):
                    verify_inclusion(MANY[(i + 1) % n], i, n, proof, root)  # wrong leaf


def test_every_consistency_proof_verifies_and_tampering_is_caught() -> None:
    roots = [merkle_root(MANY[:n]) for n in range(len(MANY) + 1)]
    for new in range(len(MANY) + 1):
        for old in range(new + 1):
            proof = consistency_proof(old, MANY[:new])
            assert verify_consistency(old, new, roots[old], roots[new], proof) is None
            if 0 < old < new:
                with pytest.raises(VerificationError):
                    verify_consistency(
                        old,
                        new,
                        roots[old],
                        roots[new],
                        [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]],
                    )
                with pytest.raises(VerificationError):
                    verify_consistency(old, new, roots[old], roots[new], proof[:-1])
                with pytest.raises(VerificationError):
                    verify_consistency(
                        old, new, roots[old - 1], roots[new], proof
                    )  # reordered/other history
                if len(proof) > 1 and proof[0] != proof[1]:
                    with pytest.raises(VerificationError):
                        verify_consistency(
                            old, new, roots[old], roots[new], [proof[1], proof[0], *proof[2:]]
                        )


def test_bad_arguments() -> None:
    with pytest.raises(CryptoError, match="leaf index"):
        inclusion_proof(3, CT_LEAVES[:3])
    with pytest.raises(CryptoError, match="old tree size"):
        consistency_proof(4, CT_LEAVES[:3])
    with pytest.raises(CryptoError, match="32-byte"):
        merkle_root([b"short"])
    with pytest.raises(VerificationError, match="larger"):
        verify_consistency(5, 3, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(VerificationError, match="different roots"):
        verify_consistency(3, 3, merkle_root(CT_LEAVES[:3]), EMPTY_ROOT, [])
    with pytest.raises(VerificationError, match="outside"):
        verify_inclusion(CT_LEAVES[0], 3, 3, [], EMPTY_ROOT)


def test_compact_range_matches_the_full_root_at_every_size() -> None:
    from fedlora.crypto import CompactRange

    acc = CompactRange()
    assert acc.root() == EMPTY_ROOT
    for n, leaf in enumerate(MANY, start=1):
        acc.append(leaf)
        assert acc.size == n
        assert acc.root() == merkle_root(MANY[:n])
    ct = CompactRange()
    for leaf in CT_LEAVES:
        ct.append(leaf)
    assert ct.root().hex() == VEC["roots"][8]
