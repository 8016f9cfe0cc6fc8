"""Key generation without a dealer: the arithmetic every holder runs (fedlora.crypto._keygen).

All parties run in this process on real numbers; no step is mocked. A generated key must pass
what a dealt key passes (proven partial decryptions, any t combine, t − 1 do not), and each
step's guarantee is checked against a party that lies in it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from typing import Any

import gmpy2
import numpy as np
import pytest

from fedlora.crypto import (
    KeyShare,
    ThresholdPublicKey,
    combine_partial_decryptions,
    encrypt_batch,
    partial_decrypt,
    select_backend,
    verify_partial_decryption,
)
from fedlora.crypto._keygen import (
    KeygenParams,
    KeygenParty,
    _passes,
    generate_in_process,
    interpolate_field,
    small_primes,
    theta_from_residues,
)
from fedlora.crypto._threshold import _combine
from fedlora.errors import CryptoError, VerificationError

PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e")


@pytest.fixture(scope="module")
def generated():  # type: ignore[no-untyped-def]
    return generate_in_process(
        KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=256, session=b"test")
    )


def _sieved(params: KeygenParams) -> dict[int, KeygenParty]:
    parties = {i: KeygenParty(params, i) for i in range(1, params.ell + 1)}
    out = {i: parties[i].sieve_start() for i in parties}
    for j in parties:
        parties[j].sieve_received({i: out[i][j] for i in parties})
    while (sent := {i: parties[i].sieve_multiply() for i in parties})[1] is not None:
        for j in parties:
            parties[j].sieve_reduced({i: sent[i][j] for i in parties})  # type: ignore[index]
    for party in parties.values():
        party.sieve_finish()
    return parties


def test_a_generated_key_decrypts_with_any_t_shares_and_not_with_fewer(generated) -> None:
    key = generated.public_key
    assert key.n.bit_length() == 512 and key.theta != 1 and key.threshold == 3
    assert not gmpy2.is_prime(key.n)  # nobody here knows its factors; it is not prime
    values = [0, 1, 987654321, key.n - 1]
    cts = encrypt_batch(key.paillier, values)
    partials = [partial_decrypt(key, s, cts) for s in generated.shares]
    for p in partials:
        verify_partial_decryption(key, cts, p)  # each proof checks against its vᵢ
    for subset in itertools.combinations(partials, 3):
        assert combine_partial_decryptions(key, cts, list(subset)) == values
    with pytest.raises(CryptoError, match="the shares disagree"):
        _combine(key, partials[:2], select_backend("gmpy2")[0])


def test_a_wrong_partial_from_a_generated_share_is_blamed(generated) -> None:
    key = generated.public_key
    cts = encrypt_batch(key.paillier, [42])
    honest = partial_decrypt(key, generated.shares[1], cts)
    value = honest.values[0] * 4 % key.nsquare
    forged = dataclasses.replace(honest, values=(min(value, key.nsquare - value),))
    with pytest.raises(VerificationError, match="'bank-b' failed its proof") as exc:
        verify_partial_decryption(key, cts, forged)
    assert exc.value.party == "bank-b"


def test_generated_shares_and_keys_round_trip_and_theta_is_bound_by_the_fingerprint(
    generated,
) -> None:
    key = generated.public_key
    assert ThresholdPublicKey.from_json(key.to_json()) == key
    for share in generated.shares:  # negative shares included
        assert KeyShare.from_bytes(share.to_bytes()) == share
        assert abs(share.secret).bit_length() <= key.share_bound_bits
    tampered = key.to_json().replace(
        f'"theta": "{key.theta:x}"'.encode(), f'"theta": "{key.theta + 1:x}"'.encode()
    )
    assert tampered != key.to_json()
    with pytest.raises(CryptoError, match="fingerprint does not match"):
        ThresholdPublicKey.from_json(tampered)


def test_sieved_candidates_have_no_small_factor_and_the_residues_the_test_needs() -> None:
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=64, session=b"sieve")
    parties = _sieved(params)
    for k in range(params.batch):
        for which in ("p", "q"):
            value = sum(getattr(parties[i]._candidates, which)[k] for i in parties)
            assert value % 4 == 3 and 3 << 254 <= value < 1 << 256
            assert all(value % r for r in params.sieve_primes)
    # Each party's own share is uniform-looking: it does not carry the sieved residues itself.
    own = [parties[2]._candidates.p[k] % params.sieve_primes[-1] for k in range(params.batch)]
    assert 0 in own or len(set(own)) > params.batch // 4


def test_the_opened_modulus_is_the_product_and_a_lying_share_changes_it() -> None:
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=4, session=b"n")
    parties = _sieved(params)
    shares = {i: parties[i].modulus_shares() for i in parties}
    products = {j: parties[j].modulus_products({i: shares[i][j] for i in parties}) for j in parties}
    p = sum(parties[i]._candidates.p[0] for i in parties)
    q = sum(parties[i]._candidates.q[0] for i in parties)
    points = {j: products[j][0] for j in parties}
    assert interpolate_field(points, params.field_prime) == p * q
    # With 2t − 1 = ℓ every point is needed; a lying party's point gives another (wrong) N,
    # which then fails the biprimality test against the honest additive shares.
    points[3] = (points[3] + 1) % params.field_prime
    assert interpolate_field(points, params.field_prime) != p * q


def test_biprimality_accepts_p_times_q_and_refuses_a_wrong_answer_or_a_non_biprime() -> None:
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=1, session=b"b")
    parties = {i: KeygenParty(params, i) for i in range(1, 6)}
    p, q = _prime_3_mod_4(256, 11), _prime_3_mod_4(256, 23)
    _give_shares(parties, p, q)
    n = p * q
    answers = [parties[i].biprimality_answers(0, n, range(16)) for i in parties]
    assert _passes(n, answers)
    lying = [list(a) for a in answers]
    lying[2][5] = lying[2][5] * 2 % n  # one party's answer in one round
    assert not _passes(n, lying)
    # Three primes, shared as if two: N = p·(q·r) with "q" = q·r ≡ 3 (mod 4) (r ≡ 1 mod 4).
    r = int(gmpy2.next_prime(1 << 63))
    while r % 4 != 1:
        r = int(gmpy2.next_prime(r))
    fake = q * r
    _give_shares(parties, p, fake)
    bad = p * fake
    answers = [
        parties[i].biprimality_answers(0, bad, range(params.biprimality_rounds)) for i in parties
    ]
    assert not _passes(bad, answers)


def test_the_key_residues_must_agree_and_the_bound_on_holders_is_enforced(generated) -> None:
    with pytest.raises(CryptoError, match=r"needs 2 ≤ t and ℓ ≥ 2t − 1 \(here 2t − 1 = 5\)"):
        KeygenParams(parties=PARTIES[:4], threshold=3, bits=512)
    residues = {1: 5, 2: 7, 3: 11, 4: 19, 5: 2}  # no 4 of them on one quadratic
    with pytest.raises(CryptoError, match="residues do not agree"):
        theta_from_residues(residues, generated.public_key.n, 3, PARTIES)
    assert small_primes(5, 30) == [7, 11, 13, 17, 19, 23, 29]
    assert math.prod(small_primes(1, 10)) == 210


def _prime_3_mod_4(bits: int, seed: int) -> int:
    x = gmpy2.next_prime((1 << (bits - 1)) + seed * 1_000_003)
    while x % 4 != 3:
        x = gmpy2.next_prime(x)
    return int(x)


def _give_shares(parties: dict[int, KeygenParty], p: int, q: int) -> None:
    """Additive shares with the residues mod 4 the test needs (party 1 ≡ 3, others ≡ 0)."""
    from fedlora.crypto._keygen import _Candidates

    rest_p = [4 * (k + 1) * 1009 for k in range(len(parties) - 1)]
    rest_q = [4 * (k + 1) * 2003 for k in range(len(parties) - 1)]
    firsts = (p - sum(rest_p), q - sum(rest_q))
    for i, party in parties.items():
        if i == 1:
            party._candidates = _Candidates([firsts[0]], [firsts[1]])
        else:
            party._candidates = _Candidates([rest_p[i - 2]], [rest_q[i - 2]])


def test_a_holder_that_fails_or_lies_about_its_residue_leaves_no_key(monkeypatch) -> None:
    """The whole generation through run_party's rounds (threads passing the messages): a holder
    that stops ends it for everyone, and one that publishes a wrong share residue makes every
    holder refuse θ — no key, nothing partial, in either case."""
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"abort")
    real_finish = KeygenParty.key_finish

    def lying_finish(self, received):  # type: ignore[no-untyped-def]
        residue = real_finish(self, received)
        return residue + 1 if self.index == 4 else residue

    monkeypatch.setattr(KeygenParty, "key_finish", lying_finish)
    with pytest.raises(CryptoError, match="'hospital-d' published a key residue off") as exc:
        generate_in_process(params)
    # where it shows, not whom to blame: a holder fed a wrong reshare would look the same
    assert exc.value.party is None
    monkeypatch.setattr(KeygenParty, "key_finish", real_finish)

    def stalled(self):  # type: ignore[no-untyped-def]
        raise CryptoError(f"holder {self.index} stopped")

    monkeypatch.setattr(KeygenParty, "modulus_shares", stalled)
    with pytest.raises(CryptoError, match=r"holder \d stopped"):
        generate_in_process(params)


def test_a_holder_that_changes_its_committed_answer_is_named_and_a_wrong_share_is_found(
    monkeypatch,
) -> None:
    """Biprimality answers are committed before they are revealed: a holder that reveals
    another answer (the way to force a product of ±1 after seeing the others') is named. And
    before the key is accepted every 3-of-5 subset must decrypt a session-derived probe: a
    holder whose share does not match its verification key is found there (and not blamed:
    a holder sent a wrong reshare would look the same)."""
    import fedlora.crypto._keygen as kg

    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"commit")
    real_opening = kg.PartyRun._opening

    def lying_opening(self):  # type: ignore[no-untyped-def]
        value, nonce = real_opening(self)
        if self.index != 2:
            return value, nonce
        # bank-b committed to its answers, then reveals others (as if it had seen the rest).
        if isinstance(value, dict):
            return {k: [a + 1 for a in v] for k, v in value.items()}, nonce
        return [a + 1 for a in value], nonce

    monkeypatch.setattr(kg.PartyRun, "_opening", lying_opening)
    with pytest.raises(CryptoError, match="'bank-b' revealed biprimality answers other") as exc:
        _named_threads(params)
    assert exc.value.party == "bank-b"
    monkeypatch.setattr(kg.PartyRun, "_opening", real_opening)

    real_finish = KeygenParty.key_finish

    def wrong_share(self, received):  # type: ignore[no-untyped-def]
        residue = real_finish(self, received)
        if self.index == 5:  # keeps its published residue, but holds another share
            self.key_share += self.modulus
        return residue

    monkeypatch.setattr(KeygenParty, "key_finish", wrong_share)
    with pytest.raises(CryptoError, match="holder 'bank-e''s share or verification key") as exc:
        generate_in_process(params)
    assert exc.value.party is None


def _named_threads(params: KeygenParams):  # type: ignore[no-untyped-def]
    """generate_in_process, with each holder's thread named holder-<index>."""
    from fedlora.crypto._keygen import ThreadExchange, run_party

    hub = ThreadExchange(params.ell)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            run_party(params, index, hub.for_party(index))
        except BaseException as exc:
            errors.append(exc)
            hub.abort()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"holder-{i}")
        for i in range(1, params.ell + 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    named = [e for e in errors if isinstance(e, CryptoError)]
    if named:
        raise named[0]


@pytest.mark.parametrize("fault", ["range", "shape"])
def test_a_holder_sending_malformed_sieve_shares_is_named(monkeypatch, fault) -> None:
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=64, session=b"shape")
    real_start = KeygenParty.sieve_start

    def hostile(self):  # type: ignore[no-untyped-def]
        out = real_start(self)
        if self.index == 3:
            bad = out[1].copy()
            if fault == "range":
                bad[0, 0, 0] = 0xFFFF  # not a residue of any sieving prime
            else:
                bad = bad[:, :-1]
            out = {j: bad for j in out}
        return out

    monkeypatch.setattr(KeygenParty, "sieve_start", hostile)
    with pytest.raises(CryptoError, match="'hospital-c' sent sieve shares") as exc:
        generate_in_process(params)
    assert exc.value.party == "hospital-c"


def test_a_holders_run_survives_being_stored_between_every_round() -> None:
    """A holder whose transport lasts one message (a Flower ClientApp) keeps its run between
    messages: every holder's machine pickled and restored after every round still yields one
    key that decrypts — the machine's state is plain data."""
    import pickle

    from fedlora.crypto._keygen import PartyRun

    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"stored")
    runs = {i: PartyRun(params, i) for i in range(1, 6)}
    outgoing: dict[int, Any] = {i: run.start() for i, run in runs.items()}
    rounds = 0
    while any(out is not None for out in outgoing.values()):
        rounds += 1
        incoming = {
            i: {j: out[i] for j, out in outgoing.items() if out is not None and i in out}
            for i in runs
        }
        for i in runs:
            runs[i] = pickle.loads(pickle.dumps(runs[i]))  # stored on the node, read back
            outgoing[i] = runs[i].step(incoming[i])
    results = [runs[i].result for i in runs]
    assert all(r is not None for r in results)
    key = results[0].public_key  # type: ignore[union-attr]
    assert all(r.public_key == key for r in results)  # type: ignore[union-attr]
    cts = encrypt_batch(key.paillier, [42])
    shares = [r.share for r in results[:3]]  # type: ignore[union-attr]
    partials = [partial_decrypt(key, s, cts) for s in shares]
    assert combine_partial_decryptions(key, cts, partials) == [42]
    assert rounds > 10


@pytest.mark.parametrize("lie_in", ["first", "rest"])
def test_a_holder_whose_biprimality_answers_throw_away_a_biprime_is_named(
    monkeypatch, lie_in
) -> None:
    """The answers are committed before they are revealed, but a holder can still commit to a
    wrong answer and so throw away every candidate, pass after pass. A batch that yields no key
    is opened (each holder's shares, committed before any modulus was open): the first biprime
    it threw away names it — in the first round of the test, or in the rest."""
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"liar")
    real = KeygenParty.biprimality_answers

    def lying(self, candidate, n, rounds):  # type: ignore[no-untyped-def]
        answers = real(self, candidate, n, rounds)
        if self.index == 3 and (rounds.start == 0) == (lie_in == "first"):
            return [a * 2 % n for a in answers]  # the product is no longer ±1
        return answers

    monkeypatch.setattr(KeygenParty, "biprimality_answers", lying)
    with pytest.raises(CryptoError, match="'hospital-c' gave a wrong biprimality answer") as exc:
        generate_in_process(params)
    assert exc.value.party == "hospital-c"


def test_a_holder_that_opens_other_shares_than_it_committed_to_is_named(monkeypatch) -> None:
    import fedlora.crypto._keygen as kg

    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=64, session=b"open")
    real_discard = kg.PartyRun._next_candidate

    def fail_every_batch(self):  # type: ignore[no-untyped-def]
        self.waiting = []  # as if every candidate failed the test: the batch is opened
        out = real_discard(self)
        if self.index == 2 and self.state == "discarded":
            p, q, nonce, view = out[1]
            out = kg._broadcast(self.params, ([p[0] + 4, *p[1:]], q, nonce, view))
        return out

    monkeypatch.setattr(kg.PartyRun, "_next_candidate", fail_every_batch)
    with pytest.raises(CryptoError, match="'bank-b' opened shares of the discarded") as exc:
        generate_in_process(params)
    assert exc.value.party == "bank-b"


def test_shares_committed_other_than_shared_stop_the_attempt(monkeypatch) -> None:
    """A holder that commits to other shares than it used (so that its opened shares could not
    pin its answers) is caught: the opened shares do not multiply to the moduli. Nobody can be
    named from public values alone; the attempt stops with no key."""
    import fedlora.crypto._keygen as kg

    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=64, session=b"other")
    real_shares = KeygenParty.candidate_shares
    real_discard = kg.PartyRun._next_candidate

    def committed(self):  # type: ignore[no-untyped-def]
        p, q = real_shares(self)
        return ([x + 4 for x in p], q) if self.index == 4 else (p, q)

    def fail_every_batch(self):  # type: ignore[no-untyped-def]
        self.waiting = []
        return real_discard(self)

    monkeypatch.setattr(KeygenParty, "candidate_shares", committed)
    monkeypatch.setattr(kg.PartyRun, "_next_candidate", fail_every_batch)
    with pytest.raises(CryptoError, match="not the product of the holders' committed shares"):
        generate_in_process(params)


def test_malformed_answers_and_other_malformed_values_stop_the_attempt(
    monkeypatch,
) -> None:
    import fedlora.crypto._keygen as kg

    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=64, session=b"shape")
    real_commit = kg.PartyRun._commit

    def short(self, value, purpose):  # type: ignore[no-untyped-def]
        if self.index == 2 and purpose == "first" and value:
            value = dict(list(value.items())[1:])  # commits to answers for fewer moduli
        return real_commit(self, value, purpose)

    monkeypatch.setattr(kg.PartyRun, "_commit", short)
    with pytest.raises(CryptoError, match="answers from holder 'bank-b' do not fit") as exc:
        generate_in_process(params)
    assert exc.value.party is None  # its N may differ from ours: another holder's doing
    monkeypatch.setattr(kg.PartyRun, "_commit", real_commit)

    def wrong_type(self, received):  # type: ignore[no-untyped-def]
        return "not a residue" if self.index == 3 else real_finish(self, received)

    real_finish = KeygenParty.key_finish
    monkeypatch.setattr(KeygenParty, "key_finish", wrong_type)
    with pytest.raises(CryptoError, match="malformed message in the 'residues' step"):
        generate_in_process(params)


# -- a holder that sends different values to different holders ---------------------------------
THREE = ("bank-a", "bank-b", "hospital-c")


def _every_verdict(params: KeygenParams, max_passes: int) -> dict[int, Any]:
    """Each holder in its own thread, none stopped by another's failure (a wait times out
    instead), so that every honest holder reaches its own verdict: its key, or its error."""
    from fedlora.crypto._keygen import ThreadExchange, run_party

    hub = ThreadExchange(params.ell)
    hub._barrier = threading.Barrier(params.ell, timeout=8)
    out: dict[int, Any] = {}

    def work(index: int) -> None:
        try:
            out[index] = run_party(params, index, hub.for_party(index), max_passes=max_passes)
        except BaseException as exc:
            out[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, params.ell + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def _equivocate(monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """hospital-c (index 3) deviates toward bank-b (index 2) only, or toward everyone."""
    import fedlora.crypto._keygen as kg

    if how in ("product", "rushing"):
        parties: dict[int, KeygenParty] = {}
        real_init = KeygenParty.__init__

        def init(self, params, index):  # type: ignore[no-untyped-def]
            real_init(self, params, index)
            parties[index] = self

        monkeypatch.setattr(KeygenParty, "__init__", init)
        real = kg.PartyRun._on_modulus_shares

        def shifted(self, incoming):  # type: ignore[no-untyped-def]
            out = real(self, incoming)
            if self.index != 3:
                return out
            prm, big = self.params, self.params.field_prime
            inv = pow(kg.field_lagrange_at_zero([1, 2, 3], big)[2], -1, big)
            if how == "product":  # bank-b opens N + 2: every modulus it sees is even
                return {**out, 2: [(v + 2 * inv) % big for v in out[2]]}
            # Rushing (it sees N first, as with a colluding relay): bank-b opens N − c, of the
            # same size and the same fate in trial division, in a batch that holds a biprime.
            ps = [sum(x._candidates.p[k] for x in parties.values()) for k in range(prm.batch)]
            qs = [sum(x._candidates.q[k] for x in parties.values()) for k in range(prm.batch)]
            if not any(gmpy2.is_prime(a) and gmpy2.is_prime(b) for a, b in zip(ps, qs)):
                return out
            trial = math.prod(small_primes(1, prm.trial_bound))
            new = []
            for k, v in enumerate(out[2]):
                n = ps[k] * qs[k]
                kept = n.bit_length() == prm.bits and gmpy2.gcd(n, trial) == 1
                c = 2
                while not (
                    (n - c).bit_length() == prm.bits and (gmpy2.gcd(n - c, trial) == 1) == kept
                ):
                    c += 2
                new.append((v - c * inv) % big)
            return {**out, 2: new}

        monkeypatch.setattr(kg.PartyRun, "_on_modulus_shares", shifted)
    elif how == "answers":  # honest first answers to bank-a, wrong ones to bank-b
        real_commit, real_committed = kg.PartyRun._commit, kg.PartyRun._on_committed

        def commit(self, value, purpose):  # type: ignore[no-untyped-def]
            out = real_commit(self, value, purpose)
            self._bad = None
            if self.index == 3 and purpose == "first":
                bad = {k: [a * 2 % self.moduli[k] for a in v] for k, v in value.items()}
                nonce = bytes(32)
                self._bad = (bad, nonce)
                out = {**out, 2: kg._commitment(nonce, bad)}
            return out

        def committed(self, commitments):  # type: ignore[no-untyped-def]
            out = real_committed(self, commitments)
            if self.index == 3 and getattr(self, "_bad", None):
                out = {**out, 2: self._bad}
            return out

        monkeypatch.setattr(kg.PartyRun, "_commit", commit)
        monkeypatch.setattr(kg.PartyRun, "_on_committed", committed)
    elif how == "zero":  # it feeds the sieve a zero for 3: every p and q is a multiple of 3

        def sieve_start(self):  # type: ignore[no-untyped-def]
            prm = self.params
            mine = np.random.default_rng().integers(
                1, self._gf.r, size=(2, prm.batch, len(self._gf.r)), dtype=np.int64
            )
            if self.index == 3:
                mine[..., 0] = 0
            shares = self._gf.share(
                np.stack([mine, np.zeros_like(mine)], axis=-1), prm.threshold - 1
            )
            return {j: self._gf.pack(shares[j - 1]) for j in range(1, prm.ell + 1)}

        monkeypatch.setattr(KeygenParty, "sieve_start", sieve_start)
    elif how == "huge reshare":  # bank-b's share off by a huge multiple of N: θ unchanged

        def reshare(self, received):  # type: ignore[no-untyped-def]
            out = real_reshare(self, received)
            if self.index == 3 and out is not None:
                bound = kg.share_bound_bits(self.params)
                out = {**out, 2: out[2] + (self.modulus << (bound + 600))}
            return out

        real_reshare = KeygenParty.key_reshare
        monkeypatch.setattr(KeygenParty, "key_reshare", reshare)
    elif how == "verification key":  # bank-b is told another verification key for it

        def residues(self, incoming):  # type: ignore[no-untyped-def]
            out = real_residues(self, incoming)
            if self.index == 3:
                n = self.party.modulus
                out = {**out, 2: out[2] * kg.square_from_transcript(n, self.params.session)}
                out[2] %= n * n
            return out

        real_residues = kg.PartyRun._on_residues
        monkeypatch.setattr(kg.PartyRun, "_on_residues", residues)
    elif how == "even, view lied about":  # "even", and a random view to escape being named
        _equivocate(monkeypatch, "even")
        real_view = kg.PartyRun._view

        def view(self):  # type: ignore[no-untyped-def]
            return bytes(32) if self.index == 3 else real_view(self)

        monkeypatch.setattr(kg.PartyRun, "_view", view)
    else:  # "even": its shares of p, committed and shared alike, are all odd: every N even
        real_finish = KeygenParty.sieve_finish

        def finish(self):  # type: ignore[no-untyped-def]
            real_finish(self)
            if self.index == 3:
                assert self._candidates is not None
                self._candidates.p = [x + 1 for x in self._candidates.p]

        monkeypatch.setattr(KeygenParty, "sieve_finish", finish)


@pytest.mark.parametrize(
    "how",
    [
        "product",
        "answers",
        "rushing",
        "even",
        "even, view lied about",
        "zero",
        "huge reshare",
        "verification key",
    ],
)
def test_a_holder_lying_to_some_holders_never_gets_an_honest_one_named(monkeypatch, how) -> None:
    """hospital-c deviates toward bank-b alone (the modulus bank-b opens, directly or after
    seeing N; its answers to bank-b; a reshare; the verification key it tells bank-b) or makes
    every modulus even (and lies about its view). No key comes out, no honest holder is ever
    named by an honest one, and a batch is never thrown away unseen: what might be another's
    doing stops the attempt unattributed; what its own signed values prove names it."""
    params = KeygenParams(parties=THREE, threshold=2, bits=512, batch=128, session=how.encode())
    _equivocate(monkeypatch, how)
    verdicts = _every_verdict(params, max_passes=64)  # the rushing one waits for a biprime
    honest = [verdicts[1], verdicts[2]]
    assert all(isinstance(v, BaseException) for v in honest), verdicts
    named = {getattr(v, "party", None) for v in honest}
    assert named <= {None, "hospital-c"}, verdicts
    crypto = [v for v in honest if isinstance(v, CryptoError)]
    assert crypto, verdicts  # an honest holder's own verdict, not only a wait that timed out
    assert not any("no biprime modulus" in str(v) for v in honest), verdicts
    if how.startswith("even"):  # its own signed values convict it, whatever view it claims
        assert named == {"hospital-c"}, verdicts
    if how == "zero":  # nobody can be named from the opened shares; the attempt stops
        assert all("a factor the sieve excludes" in str(v) for v in crypto), verdicts


def test_a_holder_sending_one_holder_a_wrong_reshare_gets_no_honest_holder_blamed(
    monkeypatch,
) -> None:
    """BGW without verifiable sharing: bank-a sends hospital-d a wrong reshare of its product,
    so hospital-d's key share (and residue) is off. The attempt stops with no key, and nobody
    is blamed — hospital-d's fault and bank-a's look the same from the published values."""
    params = KeygenParams(parties=PARTIES, threshold=3, bits=512, batch=128, session=b"frame")
    real = KeygenParty.key_reshare

    def framing(self, received):  # type: ignore[no-untyped-def]
        out = real(self, received)
        if self.index == 1 and out is not None:
            out = {**out, 4: out[4] + 1}
        return out

    monkeypatch.setattr(KeygenParty, "key_reshare", framing)
    with pytest.raises(CryptoError, match="'hospital-d' published a key residue off") as exc:
        generate_in_process(params)
    assert exc.value.party is None
