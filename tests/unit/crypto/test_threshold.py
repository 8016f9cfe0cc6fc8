from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.crypto import (
    KeyShare,
    ThresholdPublicKey,
    combine_partial_decryptions,
    deal_threshold_key,
    default_backend,
    encrypt_batch,
    generate_threshold_key,
    partial_decrypt,
    proof_response_bound,
    ticket_quorum,
    verify_partial_decryption,
)
from fedlora.crypto._threshold import _combine
from fedlora.errors import CryptoError, VerificationError
from tests.conftest import PARTIES, load_vectors


def _encrypt(dealt, messages):
    return encrypt_batch(dealt.public_key.paillier, messages)


def test_known_answer_vector() -> None:
    # Arrange: vector computed with Python's pow from the DJ 2001 equations (scripts/gen_vectors.py).
    vec = load_vectors("threshold")
    dealt = deal_threshold_key(
        int(vec["p"], 16),
        int(vec["q"], 16),
        vec["threshold"],
        vec["party_ids"],
        rng=random.Random(0),
    )
    key = dealt.public_key
    c = int(vec["ciphertext"], 16)
    n2 = key.nsquare
    # The vector's shares are one valid dealing: check them against the definition d ≡ 0 mod m, 1 mod n.
    shares = {int(i): int(s, 16) for i, s in vec["shares"].items()}
    m_prime = int(vec["m_prime"], 16)
    xs = vec["combined_from"]
    lam = {
        i: math.prod(j for j in xs if j != i)
        * math.factorial(5)
        // math.prod(j - i for j in xs if j != i)
        for i in xs
    }
    d_times_delta = sum(lam[i] * shares[i] for i in xs)
    assert d_times_delta % m_prime == 0
    assert d_times_delta % key.n == math.factorial(5) % key.n
    # Act: fedlora's partial decryptions with the vector's shares, combined by fedlora.
    vshares = [
        KeyShare(pid, i, shares[i], key.fingerprint)
        for i, pid in enumerate(vec["party_ids"], start=1)
    ]
    fake_key = dataclasses.replace(
        key,
        v=int(vec["v"], 16),
        verification_keys=tuple(
            pow(int(vec["v"], 16), math.factorial(5) * shares[i], n2) for i in range(1, 6)
        ),
    )
    vshares = [dataclasses.replace(s, key_fingerprint=fake_key.fingerprint) for s in vshares]
    partials = [partial_decrypt(fake_key, vshares[i - 1], [c]) for i in xs]
    # Assert
    assert fake_key.fingerprint.hex() == vec["public_key_fingerprint"]
    for p in partials:
        assert p.values[0] == int(vec["partials"][str(p.index)], 16)
    assert combine_partial_decryptions(fake_key, [c], partials) == [int(vec["plaintext"], 16)]


def test_any_t_of_n_shares_decrypt(dealt) -> None:
    # Arrange
    key = dealt.public_key
    messages = [0, 1, key.n - 1, *(random.randrange(key.n) for _ in range(5))]
    cts = _encrypt(dealt, messages)
    partials = {s.index: partial_decrypt(key, s, cts) for s in dealt.shares}
    # Act / Assert: every subset of size t, in every order, and also more than t.
    for subset in itertools.combinations(partials.values(), key.threshold):
        assert combine_partial_decryptions(key, cts, list(subset)[::-1]) == messages
    assert combine_partial_decryptions(key, cts, list(partials.values())) == messages


def test_t_minus_one_shares_do_not_decrypt(dealt) -> None:
    key = dealt.public_key
    messages = [random.randrange(1, key.n) for _ in range(4)]
    cts = _encrypt(dealt, messages)
    partials = [partial_decrypt(key, s, cts) for s in dealt.shares]
    for subset in itertools.combinations(partials, key.threshold - 1):
        # The public function refuses outright...
        with pytest.raises(CryptoError, match="need partial decryptions from 3 parties, got 2"):
            combine_partial_decryptions(key, cts, list(subset))
        # ...and the raw interpolation over t-1 points does not yield the plaintext either.
        try:
            combined = _combine(key, list(subset), default_backend())
        except CryptoError:
            combined = None  # the shares do not even combine to plaintexts of the form 1 + k·n
        assert combined != messages


@given(st.data())
def test_threshold_decryption_of_homomorphic_sums(dealt, data) -> None:
    key = dealt.public_key
    vectors = data.draw(
        st.lists(st.lists(st.integers(0, 2**64), min_size=3, max_size=3), min_size=1, max_size=4)
    )
    from fedlora.crypto import add_ciphertext_vectors

    acc = _encrypt(dealt, vectors[0])
    for v in vectors[1:]:
        acc = add_ciphertext_vectors(key.paillier, acc, _encrypt(dealt, v))
    chosen = data.draw(st.permutations(dealt.shares))[: key.threshold]
    partials = [partial_decrypt(key, s, acc) for s in chosen]
    assert combine_partial_decryptions(key, acc, partials) == [
        sum(col) % key.n for col in zip(*vectors)
    ]


def test_a_cheating_party_is_named(dealt) -> None:
    # Arrange: party hospital-c answers one slot with a value of another ciphertext.
    key = dealt.public_key
    cts = _encrypt(dealt, [5, 6, 7])
    good = [partial_decrypt(key, s, cts) for s in dealt.shares[:3]]
    tampered_values = (good[2].values[0], good[2].values[0], good[2].values[2])
    bad = dataclasses.replace(good[2], values=tampered_values)
    # Act / Assert
    with pytest.raises(VerificationError, match="'hospital-c' failed its proof"):
        combine_partial_decryptions(key, cts, [good[0], good[1], bad])
    with pytest.raises(VerificationError, match="'hospital-c'"):
        verify_partial_decryption(key, cts, bad)
    forged_proof = dataclasses.replace(
        good[1], proof=dataclasses.replace(good[1].proof, response=good[1].proof.response + 1)
    )
    with pytest.raises(VerificationError, match="'bank-b' failed its proof"):
        verify_partial_decryption(key, cts, forged_proof)


def test_a_huge_proof_response_is_refused_before_any_exponentiation(dealt) -> None:
    # Arrange: a hostile holder answers with a valid partial but a 1 Mibit response z.
    key = dealt.public_key
    cts = _encrypt(dealt, [5, 6, 7])
    good = partial_decrypt(key, dealt.shares[0], cts)
    huge = dataclasses.replace(
        good, proof=dataclasses.replace(good.proof, response=good.proof.response << (1 << 20))
    )
    # Act / Assert: refused on its size (the message names the bound), not by a slow check.
    assert good.proof.response < proof_response_bound(key)
    with pytest.raises(VerificationError, match="above the bound"):
        verify_partial_decryption(key, cts, huge)


def test_a_negated_partial_with_a_fresh_valid_proof_is_refused(dealt) -> None:
    """The proof checks squares, so x and −x = n² − x both pass it: a holder could sign two
    different answers for one chunk. Partials are canonical (the smaller of the two), and the
    other one is refused even with a proof that holds."""
    from fedlora.crypto import _threshold as th

    key = dealt.public_key
    share = dealt.shares[1]
    cts = _encrypt(dealt, [5, 6, 7])
    good = partial_decrypt(key, share, cts)
    n2 = key.nsquare
    assert all(x <= n2 // 2 for x in good.values)
    # The attacker negates one value and proves the result honestly with its own share.
    values = [n2 - good.values[0], *good.values[1:]]
    digest = th.ciphertext_vector_digest(key.paillier, cts)
    c4, ci2 = th._batched_statement(key, good.index, cts, digest, values, None)
    secret = key.delta * share.secret
    r = random.Random(1).getrandbits(th._nonce_bits(key))
    vk = key.verification_keys[good.index - 1]
    e = th._challenge(key, good.index, key.v, c4, vk, ci2, pow(c4, r, n2), pow(key.v, r, n2))
    z = r + e * secret
    a = pow(c4, z, n2) * pow(ci2, -e, n2) % n2
    b = pow(key.v, z, n2) * pow(vk, -e, n2) % n2
    assert th._challenge(key, good.index, key.v, c4, vk, ci2, a, b) == e  # the proof holds
    negated = dataclasses.replace(
        good, values=tuple(values), proof=dataclasses.replace(good.proof, challenge=e, response=z)
    )
    with pytest.raises(VerificationError, match=r"value\[0\] is not canonical") as caught:
        verify_partial_decryption(key, cts, negated)
    assert caught.value.party == share.party_id  # the blame travels on the error, not its text


def test_the_proof_nonce_is_sized_from_the_public_bound_not_the_share(dealt) -> None:
    # Arrange: every holder's share has a different bit length; |z| must not reveal it.
    key = dealt.public_key
    cts = _encrypt(dealt, [1, 2])
    # Act
    lengths = {
        s.party_id: max(partial_decrypt(key, s, cts).proof.response.bit_length() for _ in range(8))
        for s in dealt.shares
    }
    # Assert: the largest z of each holder sits just under the public bound, whatever |sᵢ| is.
    bound_bits = proof_response_bound(key).bit_length() - 1
    assert all(bound_bits - 8 <= bits <= bound_bits for bits in lengths.values()), lengths


@pytest.mark.parametrize(
    ("parties", "threshold", "quorum"), [(3, 2, 3), (5, 3, 4), (6, 3, 5), (6, 2, 4), (10, 3, 7)]
)
def test_ticket_quorums_always_share_t_holders(parties, threshold, quorum) -> None:
    # Two quorums overlap in 2q - n holders; that must be at least t, so with t-1 colluders
    # there is an honest holder in both, who signs one ticket per round.
    assert ticket_quorum(parties, threshold) == quorum
    assert 2 * quorum - parties >= threshold and quorum <= parties
    assert 2 * (quorum - 1) - parties < threshold or quorum - 1 < threshold


def test_a_share_of_another_key_is_rejected(dealt, safe_primes) -> None:
    # Arrange: a second dealing from the same primes is a different key (fresh polynomial and v).
    key = dealt.public_key
    other = deal_threshold_key(*safe_primes, 3, PARTIES, rng=random.Random(99))
    cts = _encrypt(dealt, [1, 2])
    # Act / Assert
    with pytest.raises(CryptoError, match="belongs to another key"):
        partial_decrypt(key, other.shares[0], cts)
    foreign = partial_decrypt(other.public_key, other.shares[0], cts)
    ours = [partial_decrypt(key, s, cts) for s in dealt.shares[1:3]]
    with pytest.raises(VerificationError, match="made for another key"):
        combine_partial_decryptions(key, cts, [foreign, *ours])


def test_duplicate_and_mislabelled_partials_are_rejected(dealt) -> None:
    key = dealt.public_key
    cts = _encrypt(dealt, [3])
    p = [partial_decrypt(key, s, cts) for s in dealt.shares[:3]]
    with pytest.raises(CryptoError, match="duplicate partial decryption from party 'bank-a'"):
        combine_partial_decryptions(key, cts, [p[0], p[0], p[1]])
    relabelled = dataclasses.replace(p[2], party_id="bank-e")
    with pytest.raises(VerificationError, match="claims index 3"):
        combine_partial_decryptions(key, cts, [p[0], p[1], relabelled])
    stranger = dataclasses.replace(p[2], party_id="mallory")
    with pytest.raises(VerificationError, match="holds no share"):
        combine_partial_decryptions(key, cts, [p[0], p[1], stranger])


def test_partials_for_another_vector_are_rejected(dealt) -> None:
    key = dealt.public_key
    cts = _encrypt(dealt, [3, 4])
    other = _encrypt(dealt, [3, 4])
    p = [partial_decrypt(key, s, cts) for s in dealt.shares[:3]]
    with pytest.raises(VerificationError, match="different ciphertext vector"):
        combine_partial_decryptions(key, other, p)


def test_share_with_wrong_party_or_index_is_refused(dealt) -> None:
    key = dealt.public_key
    share = dealt.shares[0]
    with pytest.raises(CryptoError, match="has index 2"):
        partial_decrypt(key, dataclasses.replace(share, index=2), _encrypt(dealt, [1]))
    with pytest.raises(CryptoError, match="holds no share"):
        partial_decrypt(key, dataclasses.replace(share, party_id="nobody"), _encrypt(dealt, [1]))
    with pytest.raises(CryptoError, match="KeyShare"):
        partial_decrypt(key, "share", _encrypt(dealt, [1]))  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="empty"):
        partial_decrypt(key, share, [])


def test_public_key_file_round_trip_and_tamper(dealt) -> None:
    key = dealt.public_key
    data = key.to_json()
    assert ThresholdPublicKey.from_json(data) == key
    tampered = data.replace(b'"threshold": 3', b'"threshold": 2')
    with pytest.raises(CryptoError, match="fingerprint does not match"):
        ThresholdPublicKey.from_json(tampered)
    for garbage in [b"", b"{", b"[]", b'{"format": "other"}', data[: len(data) // 2]]:
        with pytest.raises(CryptoError):
            ThresholdPublicKey.from_json(garbage)
    missing = data.replace(b'"v":', b'"w":')
    with pytest.raises(CryptoError, match="lacks field 'v'"):
        ThresholdPublicKey.from_json(missing)


def test_key_share_bytes_round_trip_and_truncation(dealt) -> None:
    share = dealt.shares[1]
    raw = share.to_bytes()
    assert KeyShare.from_bytes(raw) == share
    assert "secret=<hidden>" in repr(share)
    assert str(share.secret) not in repr(share) and hex(share.secret)[2:] not in repr(share)
    for cut in (0, 5, len(raw) - 1):
        with pytest.raises(CryptoError, match="truncated or malformed"):
            KeyShare.from_bytes(raw[:cut])


@pytest.mark.parametrize(
    ("threshold", "ids", "match"),
    [
        (0, PARTIES, "threshold"),
        (6, PARTIES, "threshold"),
        (2, ("a", "a"), "distinct"),
        (1, ("bad id!",), "party id"),
        (1, (), "parties must number"),
    ],
)
def test_dealing_rejects_bad_parameters(safe_primes, threshold, ids, match) -> None:
    with pytest.raises(CryptoError, match=match):
        deal_threshold_key(*safe_primes, threshold, ids)


def test_dealing_requires_safe_primes(safe_primes) -> None:
    p, _ = safe_primes
    with pytest.raises(CryptoError, match="q is not a safe prime"):
        deal_threshold_key(p, 1000003, 2, PARTIES)
    with pytest.raises(CryptoError, match="distinct"):
        deal_threshold_key(p, p, 2, PARTIES)


@pytest.mark.slow
def test_2048_bit_key_end_to_end() -> None:
    dealt = generate_threshold_key(2048, 3, PARTIES)
    key = dealt.public_key
    assert key.n.bit_length() == 2048
    messages = [random.randrange(key.n) for _ in range(4)]
    cts = _encrypt(dealt, messages)
    partials = [partial_decrypt(key, s, cts) for s in dealt.shares[2:]]
    assert combine_partial_decryptions(key, cts, partials) == messages
