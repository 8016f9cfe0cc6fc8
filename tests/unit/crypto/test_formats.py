"""Known-answer vectors for fedlora's own wire formats (tests/vectors/formats.json).

The signed statements, the proof of plaintext knowledge and the sealed share file are what
parties exchange and keep; a change to any of their bytes breaks every federation already
running, so each is frozen here (regenerate with ``python scripts/gen_vectors.py formats`` only
together with a format version bump).
"""

from __future__ import annotations

import hashlib
import json
import random

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from phe import PaillierPublicKey

from fedlora.crypto import (
    PlaintextProof,
    ThresholdPublicKey,
    checkpoint_digest,
    contribution_digest,
    encrypt_and_prove,
    open_key_share,
    partial_statement_digest,
    proof_context,
    receipt_digest,
    seal_key_share,
    ticket_digest,
    verify_plaintext_knowledge,
)
from tests.conftest import load_vectors

V = load_vectors("formats")


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_signed_statements_keep_their_bytes() -> None:
    computed = {
        "contribution": contribution_digest(
            federation_id="fed-1",
            round_number=3,
            client_id="bank-a",
            codec_digest=h("codec"),
            key_fingerprint=h("key"),
            weight=7,
            ciphertexts_digest=h("cts"),
            value_count=1000,
            global_version=2,
            global_digest=h("global"),
        ),
        "ticket": ticket_digest(
            federation_id="fed-1",
            round_number=3,
            key_fingerprint=h("key"),
            aggregate_digest=h("aggregate"),
            global_version=2,
            global_digest=h("global"),
            contributions=[("bank-a", h("a")), ("bank-b", h("b"))],
        ),
        "partial": partial_statement_digest(
            federation_id="fed-1",
            round_number=3,
            party_id="bank-a",
            ticket=h("ticket"),
            first_record=2048,
            ciphertexts_digest=h("chunk"),
            values_digest=h("values"),
            challenge=2**255 + 1,
            response=3**300,
        ),
        "receipt": receipt_digest(
            federation_id="fed-1",
            round_number=3,
            client_id="bank-a",
            contribution=h("contribution"),
            log_index=41,
            received_at_ms=1795465587182,
        ),
        "checkpoint": checkpoint_digest(
            log_id="fed-1", tree_size=42, root_hash=h("root"), timestamp_ms=5
        ),
    }
    assert {s["name"]: s["digest"] for s in V["statements"]} == {
        k: v.hex() for k, v in computed.items()
    }
    context = proof_context(
        federation_id="fed-1", round_number=3, client_id="bank-a", key_fingerprint=h("key")
    )
    assert context.hex() == V["proof_context"]


def test_the_proof_of_plaintext_knowledge_keeps_its_transcript() -> None:
    doc = V["plaintext_proof"]
    public = PaillierPublicKey(int(doc["p"], 16) * int(doc["q"], 16))
    messages = [int(m, 16) for m in doc["messages"]]
    cts, proof = encrypt_and_prove(
        public, messages, context=doc["context"].encode(), rng=random.Random(doc["rng_seed"])
    )
    assert [format(c, "x") for c in cts] == doc["ciphertexts"]
    assert proof.to_bytes(public).hex() == doc["proof"]
    stored = PlaintextProof.from_bytes(public, bytes.fromhex(doc["proof"]))
    verify_plaintext_knowledge(
        public, [int(c, 16) for c in doc["ciphertexts"]], stored, context=b"kat"
    )


def test_a_sealed_share_file_keeps_its_bytes_and_opens() -> None:
    doc = V["share_file"]
    key = ThresholdPublicKey.from_json(json.dumps(doc["threshold_key"]).encode())
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(doc["recipient_private"]))
    share = open_key_share(
        doc["sealed"].encode(), recipient, party_id=doc["party_id"], public_key=key
    )
    assert format(share.secret, "x") == doc["secret"]
    resealed = seal_key_share(share, recipient.public_key(), rng=random.Random(14))
    assert resealed.decode() == doc["sealed"]
