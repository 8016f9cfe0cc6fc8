from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import (
    canonical_digest,
    canonical_encode,
    checkpoint_digest,
    contribution_digest,
    ed25519_public_bytes,
    partial_statement_digest,
    receipt_digest,
    sign_digest,
    ticket_digest,
    verify_signature,
)
from fedlora.errors import CryptoError, VerificationError
from tests.conftest import load_vectors

BASE = dict(
    federation_id="fed-1",
    round_number=3,
    client_id="bank-a",
    codec_digest=b"c" * 32,
    key_fingerprint=b"k" * 32,
    weight=7,
    ciphertexts_digest=b"x" * 32,
    value_count=1000,
    global_version=2,
    global_digest=b"g" * 32,
)


def test_rfc8032_vectors() -> None:
    for case in load_vectors("ed25519")["cases"]:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["secret"]))
        assert ed25519_public_bytes(key).hex() == case["public"]
        message = bytes.fromhex(case["message"])
        assert key.sign(message).hex() == case["signature"]


def test_sign_and_verify_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    digest = contribution_digest(**BASE)
    signature = sign_digest(key, digest)
    assert verify_signature(key.public_key(), digest, signature) is None
    assert verify_signature(ed25519_public_bytes(key), digest, signature) is None


@pytest.mark.parametrize(
    "change",
    [
        {"federation_id": "fed-2"},
        {"round_number": 4},
        {"client_id": "bank-b"},
        {"codec_digest": b"d" * 32},
        {"key_fingerprint": b"j" * 32},
        {"weight": 8},
        {"ciphertexts_digest": b"y" * 32},
        {"value_count": 999},
        {"global_version": 1},
        {"global_digest": b"h" * 32},
    ],
)
def test_a_contribution_signature_cannot_be_replayed_with_any_field_changed(change) -> None:
    key = Ed25519PrivateKey.generate()
    signature = sign_digest(key, contribution_digest(**BASE))
    with pytest.raises(VerificationError, match="does not verify"):
        verify_signature(key.public_key(), contribution_digest(**{**BASE, **change}), signature)


def test_wrong_key_and_malformed_signatures_raise() -> None:
    key = Ed25519PrivateKey.generate()
    digest = checkpoint_digest(log_id="log", tree_size=3, root_hash=b"r" * 32, timestamp_ms=1)
    signature = sign_digest(key, digest)
    with pytest.raises(VerificationError):
        verify_signature(Ed25519PrivateKey.generate().public_key(), digest, signature)
    with pytest.raises(VerificationError, match="64 bytes"):
        verify_signature(key.public_key(), digest, signature[:-1])
    with pytest.raises(VerificationError, match="32 bytes"):
        verify_signature(b"short", digest, signature)
    with pytest.raises(CryptoError, match="32 bytes"):
        sign_digest(key, b"not a digest")


def test_canonical_encoding_is_unambiguous_and_domain_separated() -> None:
    assert canonical_encode("a", [("x", "bc")]) != canonical_encode("a", [("x", b"bc")])
    assert canonical_encode("a", [("x", "b"), ("y", "c")]) != canonical_encode(
        "a", [("x", "bc"), ("y", "")]
    )
    assert canonical_encode("a", [("x", 1)]) != canonical_encode("a", [("y", 1)])
    assert canonical_digest("receipt", [("x", 1)]) != canonical_digest("checkpoint", [("x", 1)])
    receipt = receipt_digest(
        federation_id="f",
        round_number=1,
        client_id="c",
        contribution=b"d" * 32,
        log_index=0,
        received_at_ms=5,
    )
    assert len(receipt) == 32
    for bad in ([("x", -1)], [("x", True)], [("x", 1.5)]):
        with pytest.raises(CryptoError, match="field 'x'"):
            canonical_encode("a", bad)


TICKET = dict(
    federation_id="fed-1",
    round_number=3,
    key_fingerprint=b"k" * 32,
    aggregate_digest=b"a" * 32,
    global_version=2,
    global_digest=b"g" * 32,
    contributions=[("bank-a", b"1" * 32), ("bank-b", b"2" * 32), ("hospital-c", b"3" * 32)],
)


@pytest.mark.parametrize(
    "change",
    [
        {"federation_id": "fed-2"},
        {"round_number": 2},
        {"aggregate_digest": b"b" * 32},
        {"global_digest": b"h" * 32},
        # The same round without one contributor: the differencing attack's second aggregate.
        {"contributions": [("bank-a", b"1" * 32), ("bank-b", b"2" * 32)]},
        {
            "contributions": [
                ("bank-a", b"1" * 32),
                ("bank-b", b"2" * 32),
                ("hospital-c", b"4" * 32),
            ]
        },
    ],
)
def test_a_ticket_names_one_aggregate_of_one_round(change) -> None:
    assert ticket_digest(**TICKET) != ticket_digest(**{**TICKET, **change})


@pytest.mark.parametrize(
    "contributions",
    [[], [("bank-b", b"2" * 32), ("bank-a", b"1" * 32)], [("bank-a", b"1" * 32)] * 2],
)
def test_a_ticket_refuses_unsorted_repeated_or_empty_contributions(contributions) -> None:
    with pytest.raises(CryptoError, match="sorted and distinct"):
        ticket_digest(**{**TICKET, "contributions": contributions})


def test_a_partial_statement_binds_round_ticket_chunk_values_and_proof() -> None:
    base = dict(
        federation_id="fed-1",
        round_number=3,
        party_id="bank-a",
        ticket=b"t" * 32,
        first_record=0,
        ciphertexts_digest=b"c" * 32,
        values_digest=b"v" * 32,
        challenge=5,
        response=7,
    )
    digests = {
        partial_statement_digest(**{**base, k: v})
        for k, v in [
            ("round_number", 4),
            ("party_id", "bank-b"),
            ("ticket", b"u" * 32),
            ("first_record", 1024),
            ("ciphertexts_digest", b"d" * 32),
            ("values_digest", b"w" * 32),
            ("challenge", 6),
            ("response", 8),
        ]
    }
    assert len(digests) == 8 and partial_statement_digest(**base) not in digests
