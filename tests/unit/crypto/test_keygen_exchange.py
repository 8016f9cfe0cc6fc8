"""The key generation's messages through an untrusted relay (fedlora.ceremony._exchange).

Real Ed25519 and X25519 keys, real AES-GCM, every holder a thread running the real protocol;
the relay is the attacker: it alters, replays, reorders, drops and injects messages, and one
holder signs with a key that is not its pinned one. Each attack aborts the generation, names
who is to blame, and leaves no key.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlora.ceremony._exchange import (
    CeremonyAborted,
    MemoryRelay,
    SecureExchange,
    decode_payload,
    encode_payload,
)
from fedlora.crypto import (
    combine_partial_decryptions,
    ed25519_public_bytes,
    encrypt_batch,
    partial_decrypt,
    x25519_public_bytes,
)
from fedlora.crypto._keygen import KeygenParams, generate_in_process
from fedlora.errors import CryptoError

PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e")
SIGNING = {p: Ed25519PrivateKey.generate() for p in PARTIES}
X25519 = {p: X25519PrivateKey.generate() for p in PARTIES}


def _run(tamper=None, *, signing=None, session: bytes | None = None):  # type: ignore[no-untyped-def]
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"x")
    relay = MemoryRelay(len(PARTIES), timeout_s=20, tamper=tamper)
    sid = session or os.urandom(32)
    keys = signing or SIGNING

    def exchange_for(index: int) -> SecureExchange:
        pid = PARTIES[index - 1]
        return SecureExchange(
            session=sid,
            parties=PARTIES,
            index=index,
            signing_key=keys[pid],
            x25519_key=X25519[pid],
            signing_keys={p: ed25519_public_bytes(k) for p, k in SIGNING.items()},
            x25519_keys={p: x25519_public_bytes(k) for p, k in X25519.items()},
            relay=relay,
        )

    return generate_in_process(params, exchange_for=exchange_for, abort=relay.abort)


def test_a_key_generated_through_the_relay_decrypts() -> None:
    seen: list[bytes] = []

    def watch(number, sender, recipient, message):  # type: ignore[no-untyped-def]
        seen.append(message)
        return message

    generated = _run(watch)
    key = generated.public_key
    cts = encrypt_batch(key.paillier, [31337])
    partials = [partial_decrypt(key, s, cts) for s in generated.shares[1:4]]
    assert combine_partial_decryptions(key, cts, partials) == [31337]
    # The relay saw only ciphertexts: no share of any p_i (a 2-byte residue array) in the clear.
    assert seen and all(len(m) > 64 for m in seen)


@pytest.mark.parametrize(
    ("attack", "blamed", "why"),
    [
        ("alter", "relay", "does not open for this session and round"),
        ("replay", "relay", "does not open for this session and round"),
        ("swap", "relay", "does not open for this session and round"),
        ("drop", "hospital-c", "no message from it arrived"),
    ],
)
def test_a_hostile_relay_aborts_the_generation_with_blame(attack, blamed, why) -> None:
    earlier: dict[tuple[int, int], bytes] = {}
    current: dict[tuple[int, int, int], bytes] = {}

    def hostile(number, sender, recipient, message):  # type: ignore[no-untyped-def]
        earlier.setdefault((sender, recipient), message)
        current[(number, sender, recipient)] = message
        if number != 3 or recipient != 2:
            return message
        if attack == "alter":
            return message[:-1] + bytes([message[-1] ^ 1])
        if attack == "replay":  # round 1's message from the same sender, again
            return earlier[(sender, recipient)]
        if attack == "swap":  # this round's message from bank-a, under hospital-c's name
            return current[(number, 1, recipient)] if sender == 3 else message
        return None if sender == 3 else message  # drop hospital-c's message to bank-b

    with pytest.raises(CeremonyAborted, match=why) as exc:
        _run(hostile)
    assert exc.value.party == blamed


def test_a_holder_signing_with_another_key_is_named() -> None:
    keys = dict(SIGNING, **{"hospital-d": Ed25519PrivateKey.generate()})
    with pytest.raises(CeremonyAborted, match="not signed by its pinned key") as exc:
        _run(signing=keys)
    assert exc.value.party == "hospital-d"


def test_payloads_round_trip_and_hostile_bytes_are_refused() -> None:
    value = {
        1: [3, -(1 << 4000), b"\x00\xff"],
        7: (None, np.arange(12, dtype=np.uint16).reshape(3, 4)),
    }
    decoded = decode_payload(encode_payload(value))
    assert decoded[1] == value[1] and decoded[7][0] is None
    assert np.array_equal(decoded[7][1], value[7][1])
    for bad in (
        b"",
        b"X",
        encode_payload([1, 2]) + b"\x00",  # trailing
        b"L\xff\xff\xff\xff",  # a list longer than anything allowed
        b"I\x00\x00\x10\x00" + b"\x01",  # an int longer than the data
        b"A\x09" + b"\x00" * 40,  # too many axes
        b"L\x00\x00\x00\x01" * 6 + b"N",  # nested too deeply
        b"D\x00\x00\x00\x02" + encode_payload(1) + b"N" + encode_payload(1) + b"N",  # a key twice
    ):
        with pytest.raises(CryptoError):
            decode_payload(bad)
    for unsendable in (True, 1.5, "text", np.zeros(2, dtype=np.int64), {"k": 1}):
        with pytest.raises(CryptoError):
            encode_payload(unsendable)


def test_a_generated_key_is_accepted_only_with_a_quorum_of_holder_signatures() -> None:
    """Members take a generated key (or a re-key) only from a statement signed by a quorum of
    its holders: not from the coordinator's signature, not from too few holders, not for
    another key or federation, and a forged or foreign signature does not count."""
    from fedlora.ceremony._statement import KeyStatement, accept_key
    from fedlora.errors import VerificationError

    generated = _run()
    key = generated.public_key
    statement = KeyStatement("fed", os.urandom(32), key.fingerprint, key.party_ids, b"t" * 32)
    pinned = {p: ed25519_public_bytes(k) for p, k in SIGNING.items()}
    signatures = {p: statement.sign(SIGNING[p]) for p in PARTIES}
    assert accept_key(statement, key, signatures, pinned, federation_id="fed") == set(PARTIES)
    # ⌈(5 + 3)/2⌉ = 4 of them are needed
    three = {p: signatures[p] for p in PARTIES[:3]}
    with pytest.raises(VerificationError, match="3 valid holder signatures, 4 are required"):
        accept_key(statement, key, three, pinned, federation_id="fed")
    coordinator = Ed25519PrivateKey.generate()
    forged = dict(three, **{"coordinator": statement.sign(coordinator)})
    forged["hospital-d"] = statement.sign(coordinator)  # the coordinator signing as a holder
    with pytest.raises(VerificationError, match="'coordinator' \\(not a holder") as exc:
        accept_key(statement, key, forged, pinned, federation_id="fed")
    assert "'hospital-d' (signature does not verify)" in str(exc.value)
    other = KeyStatement("fed", statement.session, b"\0" * 32, key.party_ids, b"t" * 32)
    with pytest.raises(VerificationError, match="names another key"):
        accept_key(other, key, signatures, pinned, federation_id="fed")
    with pytest.raises(VerificationError, match="for federation 'fed', not 'other'"):
        accept_key(statement, key, signatures, pinned, federation_id="other")
    # A signature over another transcript does not count for this one.
    moved = KeyStatement("fed", statement.session, key.fingerprint, key.party_ids, b"u" * 32)
    with pytest.raises(VerificationError, match="0 valid holder signatures"):
        accept_key(moved, key, signatures, pinned, federation_id="fed")


def test_a_rekey_needs_a_quorum_of_the_replaced_keys_holders_too() -> None:
    """A re-key cannot be pushed by the coordinator with a few holders: besides a quorum of the
    new key's holders, a quorum of the key it replaces must sign it."""
    from fedlora.ceremony._generate import KeygenOutcome, accept_outcome
    from fedlora.ceremony._statement import KeyStatement
    from fedlora.crypto import generate_threshold_key
    from fedlora.errors import VerificationError

    previous = _run().public_key  # 3-of-5: a re-key needs ⌈(5 + 3)/2⌉ = 4 of its holders
    pinned = {p: ed25519_public_bytes(k) for p, k in SIGNING.items()}

    def outcome(holders):  # type: ignore[no-untyped-def]
        key = generate_threshold_key(512, 2, list(holders)).public_key
        session = os.urandom(32)
        statement = KeyStatement("fed", session, key.fingerprint, key.party_ids, b"t" * 32)
        signatures = {p: statement.sign(SIGNING[p]) for p in holders}
        return KeygenOutcome(session, key, b"t" * 32, signatures), key

    three, _ = outcome(PARTIES[:3])
    check = {"federation_id": "fed", "threshold": 2, "signing_keys": pinned}
    # Act / Assert: three new holders are a quorum of their own key, not of the one replaced.
    assert accept_outcome(three, holders=PARTIES[:3], **check).party_ids == PARTIES[:3]
    with pytest.raises(VerificationError, match="signed by 3 holders of the key it replaces"):
        accept_outcome(three, holders=PARTIES[:3], previous=previous, **check)
    four, key = outcome(PARTIES[:4])
    assert accept_outcome(four, holders=PARTIES[:4], previous=previous, **check) == key
