from __future__ import annotations

import base64
import json
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlora.crypto import deal_threshold_key, open_key_share, seal_key_share
from fedlora.errors import CryptoError
from tests.conftest import PARTIES


@pytest.fixture()
def sealed(dealt):
    recipient = X25519PrivateKey.generate()
    share = dealt.shares[2]
    return share, recipient, seal_key_share(share, recipient.public_key())


def test_round_trip(dealt, sealed) -> None:
    share, recipient, blob = sealed
    opened = open_key_share(blob, recipient, party_id=share.party_id, public_key=dealt.public_key)
    assert opened == share
    assert str(share.secret) not in blob.decode()
    assert format(share.secret, "x") not in blob.decode()


def test_wrong_recipient_key_is_refused(dealt, sealed) -> None:
    share, _, blob = sealed
    with pytest.raises(CryptoError, match="different X25519 key"):
        open_key_share(
            blob, X25519PrivateKey.generate(), party_id=share.party_id, public_key=dealt.public_key
        )


def test_mis_addressed_share_is_refused(dealt, sealed) -> None:
    _share, recipient, blob = sealed
    with pytest.raises(CryptoError, match="is for party 'hospital-c', not 'bank-a'"):
        open_key_share(blob, recipient, party_id="bank-a", public_key=dealt.public_key)
    # Rewriting the envelope's party id does not help: it is authenticated data.
    doc = json.loads(blob)
    doc["party_id"] = "bank-a"
    with pytest.raises(CryptoError, match="failed authentication"):
        open_key_share(
            json.dumps(doc).encode(), recipient, party_id="bank-a", public_key=dealt.public_key
        )


def test_share_of_another_key_is_refused(safe_primes, sealed) -> None:
    share, recipient, blob = sealed
    other = deal_threshold_key(*safe_primes, 3, PARTIES, rng=random.Random(5)).public_key
    with pytest.raises(CryptoError, match="belongs to another threshold key than the one given"):
        open_key_share(blob, recipient, party_id=share.party_id, public_key=other)


@pytest.mark.parametrize("position", [0, 7, 40, -1])
def test_every_flipped_ciphertext_byte_is_caught(dealt, sealed, position) -> None:
    share, recipient, blob = sealed
    doc = json.loads(blob)
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[position] ^= 0x01
    doc["ciphertext"] = base64.b64encode(raw).decode()
    with pytest.raises(CryptoError, match="failed authentication"):
        open_key_share(
            json.dumps(doc).encode(),
            recipient,
            party_id=share.party_id,
            public_key=dealt.public_key,
        )


@pytest.mark.parametrize("field", ["nonce", "ephemeral"])
def test_tampered_header_fields_are_caught(dealt, sealed, field) -> None:
    share, recipient, blob = sealed
    doc = json.loads(blob)
    raw = bytearray(bytes.fromhex(doc[field]))
    raw[0] ^= 0x80
    doc[field] = raw.hex()
    with pytest.raises(CryptoError, match=r"failed authentication|invalid ephemeral"):
        open_key_share(
            json.dumps(doc).encode(),
            recipient,
            party_id=share.party_id,
            public_key=dealt.public_key,
        )


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "x"}',
        b'{"format": "fedlora-keyshare/1", "party_id": "hospital-c"}',
    ],
)
def test_malformed_files_are_refused(dealt, blob) -> None:
    with pytest.raises(CryptoError):
        open_key_share(
            blob, X25519PrivateKey.generate(), party_id="hospital-c", public_key=dealt.public_key
        )


def test_truncated_file_is_refused(dealt, sealed) -> None:
    share, recipient, blob = sealed
    with pytest.raises(CryptoError):
        open_key_share(
            blob[: len(blob) // 2], recipient, party_id=share.party_id, public_key=dealt.public_key
        )
