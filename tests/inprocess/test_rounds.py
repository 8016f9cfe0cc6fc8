"""The real engine and real clients in one process (no sockets), driven through an injected clock.

Deadlines move because the test moves the clock, never because it sleeps; every client is a real
:class:`fedlora.client.Client` with its ledger and checks, talking through the in-process transport.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedlora._setup import prepare_federation
from fedlora.crypto import CodecParams
from fedlora.events import parse_event
from fedlora.inprocess import GivenDelta, InProcessFederation
from fedlora.protocol import Stage

BITS = 512  # test keys only
N = 2 * 8 + 2  # the linear model's parameters (classes × features + classes)
WEIGHTS = {"bank-a": 3, "bank-b": 5, "hospital-c": 7, "hospital-d": 11, "bank-e": 13}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _deltas(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Some values beyond the codec's clip (1.0), so clipping is part of what is checked.
    return {pid: rng.normal(0, 0.8, N).astype(np.float32) for pid in WEIGHTS}


def _federation(
    tmp_path, clock, *, encryption_type="homomorphic", participant_threshold=5, rounds=2
):  # type: ignore[no-untyped-def]
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=rounds,
        aggregation_frequency=1,
        participant_threshold=participant_threshold,
        decryption_threshold=3,
        round_timeout_s=60,
        insecure=True,
        encryption_type=encryption_type,
        model_kind="linear",
    )
    trainers = {pid: GivenDelta(N, num_examples=w) for pid, w in WEIGHTS.items()}
    fed = InProcessFederation.from_configs(
        layout.coordinator_config, layout.client_configs, trainers=trainers, clock=clock
    )
    return layout, fed, trainers


def _events(layout) -> list[dict]:  # type: ignore[no-untyped-def]
    log = layout.root / "coordinator-state" / "audit" / "entries.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def _expected_mean(deltas: dict[str, np.ndarray], clip: float) -> np.ndarray:
    total = sum(WEIGHTS.values())
    return (
        sum(WEIGHTS[p] * np.clip(d.astype(np.float64), -clip, clip) for p, d in deltas.items())
        / total
    )


@pytest.mark.parametrize("encryption_type", ["homomorphic", "none"])
def test_each_published_global_moves_by_the_weighted_mean_of_the_clipped_deltas(
    tmp_path, encryption_type
) -> None:
    clock = Clock()
    layout, fed, trainers = _federation(tmp_path, clock, encryption_type=encryption_type)
    codec: CodecParams = fed.engine.codec
    for number in (1, 2):
        deltas = _deltas(number)
        for pid, t in trainers.items():
            t.delta = deltas[pid]
        before = fed.global_vector().astype(np.float64)
        assert fed.run_round() == number
        moved = fed.global_vector().astype(np.float64) - before
        error = np.max(np.abs(moved - _expected_mean(deltas, codec.clip)))
        # Encrypted: stochastic rounding to the codec's grid (float32 storage adds ~1e-7);
        # plaintext: clipped nowhere, so compare with the unclipped mean and float32 precision.
        if encryption_type == "homomorphic":
            assert error <= codec.step + 1e-6
        else:
            total = sum(WEIGHTS.values())
            plain = sum(WEIGHTS[p] * d.astype(np.float64) for p, d in deltas.items()) / total
            assert np.max(np.abs(moved - plain)) < 1e-5
    assert fed.engine.finished
    kinds = [e["event"] for e in _events(layout)]
    assert kinds.count("round_closed") == 2 and "round_failed" not in kinds
    assert all(parse_event(e) is not None for e in _events(layout))  # every line is typed


def test_a_round_below_the_participant_threshold_fails_at_its_deadline_not_before(
    tmp_path,
) -> None:
    clock = Clock()
    layout, fed, trainers = _federation(tmp_path, clock, participant_threshold=3)
    for pid, t in trainers.items():
        t.delta = _deltas(1)[pid]
    fed.step(["bank-a", "bank-b"])  # two of the three needed
    clock.advance(59)
    fed.engine.tick()
    assert fed.engine.stage is Stage.COLLECTING and fed.round_number == 1
    clock.advance(2)  # past round_timeout_s (60)
    fed.engine.tick()
    assert fed.round_number == 2 and fed.engine.stage is Stage.COLLECTING
    failed = [e for e in _events(layout) if e["event"] == "round_failed"]
    assert len(failed) == 1 and failed[0]["round"] == 1
    assert "below participant_threshold 3" in failed[0]["reason"]


def test_at_the_deadline_a_round_with_enough_contributions_is_aggregated_without_the_rest(
    tmp_path,
) -> None:
    clock = Clock()
    layout, fed, trainers = _federation(tmp_path, clock, participant_threshold=3)
    deltas = _deltas(1)
    for pid, t in trainers.items():
        t.delta = deltas[pid]
    contributors = ["bank-a", "bank-b", "hospital-c"]
    fed.step(contributors)
    assert fed.engine.stage is Stage.COLLECTING  # waits for the others until the deadline
    clock.advance(61)
    fed.engine.tick()
    assert fed.engine.stage is Stage.TICKETING
    before = fed.global_vector().astype(np.float64)
    fed.run_round()
    assert fed.round_number == 2
    total = sum(WEIGHTS[p] for p in contributors)
    expected = (
        sum(WEIGHTS[p] * np.clip(deltas[p].astype(np.float64), -1, 1) for p in contributors) / total
    )
    assert np.max(np.abs(fed.global_vector() - before - expected)) <= fed.engine.codec.step + 1e-6
    closed = [e for e in _events(layout) if e["event"] == "round_closed"]
    assert closed[0]["participants"] == contributors


def test_a_round_whose_holders_never_sign_fails_at_the_decryption_deadline(tmp_path) -> None:
    clock = Clock()
    layout, fed, trainers = _federation(tmp_path, clock)
    for pid, t in trainers.items():
        t.delta = _deltas(1)[pid]
    for pid in WEIGHTS:  # everyone contributes; no holder is ever asked to decrypt
        client = fed.clients[pid]
        client.contribute(fed.feds[pid], client.transport.round_status())
    fed.engine.tick()
    assert fed.engine.stage is Stage.TICKETING
    clock.advance(59)
    fed.engine.tick()
    assert fed.engine.stage is Stage.TICKETING
    clock.advance(2)  # past decryption_timeout_s (60)
    fed.engine.tick()
    assert fed.round_number == 2
    failed = [e for e in _events(layout) if e["event"] == "round_failed"]
    assert "0 ticket signatures, below the quorum" in failed[0]["reason"]
    assert not any(e["event"] == "decrypted" for e in _events(layout))


class CountingBackend:
    """The default backend, counting what each kind of exponentiation is asked for."""

    def __init__(self) -> None:
        from fedlora.crypto import ThreadsBackend

        self.inner = ThreadsBackend(1)
        self.name = "counting"
        self.calls: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def powmod_bases(self, bases, exponent, modulus):  # type: ignore[no-untyped-def]
        self._count("public")
        return self.inner.powmod_bases(bases, exponent, modulus)

    def powmod_exponents(self, base, exponents, modulus):  # type: ignore[no-untyped-def]
        self._count("exponents")
        return self.inner.powmod_exponents(base, exponents, modulus)

    def powmod_bases_secret(self, bases, exponent, modulus):  # type: ignore[no-untyped-def]
        self._count("secret")
        return self.inner.powmod_bases_secret(bases, exponent, modulus)

    def multi_powmods(self, jobs, modulus):  # type: ignore[no-untyped-def]
        self._count("multi")
        return self.inner.multi_powmods(jobs, modulus)


def test_the_backend_chosen_outside_crypto_does_the_exponentiation(tmp_path) -> None:
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=1,
        aggregation_frequency=1,
        participant_threshold=5,
        insecure=True,
        model_kind="linear",
    )
    backend = CountingBackend()
    trainers = {pid: GivenDelta(N, w, _deltas(1)[pid]) for pid, w in WEIGHTS.items()}
    fed = InProcessFederation.from_configs(
        layout.coordinator_config, layout.client_configs, trainers=trainers, backend=backend
    )
    fed.run_round()
    assert fed.engine.finished
    # Partial decryption (by the key share) and the obfuscators' rⁿ are secret exponents.
    assert backend.calls.get("secret", 0) >= 3
    # The proof checks' multi-exponentiations (intake, holders, decryption proofs) too.
    assert backend.calls.get("multi", 0) >= 3


def test_an_upload_that_cannot_be_delivered_is_retried_at_the_next_step_not_fatal(
    tmp_path,
) -> None:
    from fedlora.errors import TransportError

    clock = Clock()
    _, fed, trainers = _federation(tmp_path, clock)
    for pid, t in trainers.items():
        t.delta = _deltas(1)[pid]
    client = fed.clients["bank-a"]
    real = client.transport.upload_contribution
    calls = []

    def flaky(header, records, on_progress=None):  # type: ignore[no-untyped-def]
        calls.append(header.round_number)
        if len(calls) == 1:
            raise TransportError("upload: coordinator 127.0.0.1:0 unavailable: connection reset")
        return real(header, records, on_progress)

    client.transport.upload_contribution = flaky  # type: ignore[method-assign]
    fed.step(["bank-a"])  # the first try is lost in transit: no exception escapes the client
    assert not client.transport.round_status().contributed
    fed.step(["bank-a"])  # the next step contributes again
    assert client.transport.round_status().contributed and calls == [1, 1]


@pytest.mark.parametrize(("max_weight", "warned"), [(1, False), (3, True)])
def test_the_weight_cap_warning_only_when_a_cap_is_really_applied(
    tmp_path, max_weight, warned
) -> None:
    from rich.console import Console

    from fedlora.config import CodecConfig

    layout = prepare_federation(
        tmp_path, bits=BITS, rounds=1, aggregation_frequency=1, insecure=True, model_kind="linear"
    )
    console = Console(record=True, width=200)
    InProcessFederation.from_configs(
        layout.coordinator_config,
        {"bank-a": layout.client_configs["bank-a"]},
        trainers={"bank-a": GivenDelta(N, num_examples=5)},
        codec=CodecConfig(clip=1.0, value_bits=16, max_weight=max_weight),
        console=console,
    )
    text = console.export_text()
    assert "joined 'fedlora-demo'" in text  # the console did record the join
    assert ("caps a contribution's weight at 3" in text) is warned


# --- the pipelined release: partial decryptions chunk by chunk ------------------------------------

CHUNKED = 200  # parameters: several ciphertexts at 512 bits, released in chunks of 3


def _chunked(tmp_path, monkeypatch, clock):  # type: ignore[no-untyped-def]
    from fedlora.protocol import _decryptor

    monkeypatch.setattr(_decryptor, "PARTIAL_CHUNK", 3)
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=1,
        aggregation_frequency=1,
        participant_threshold=5,
        decryption_threshold=3,
        round_timeout_s=60,
        insecure=True,
        model_kind="linear",
    )
    rng = np.random.default_rng(5)
    deltas = {pid: rng.normal(0, 0.5, CHUNKED).astype(np.float32) for pid in WEIGHTS}
    trainers = {
        pid: GivenDelta(CHUNKED, num_examples=w, delta=deltas[pid]) for pid, w in WEIGHTS.items()
    }
    fed = InProcessFederation.from_configs(
        layout.coordinator_config,
        layout.client_configs,
        trainers=trainers,
        clock=clock,
        num_parameters=CHUNKED,
    )
    return layout, fed, deltas


def _contribute_and_sign(fed) -> None:  # type: ignore[no-untyped-def]
    for pid in WEIGHTS:
        client = fed.clients[pid]
        client.contribute(fed.feds[pid], client.transport.round_status())
    fed.engine.tick()
    assert fed.engine.stage is Stage.TICKETING
    # Four holders verify the aggregate and sign the ticket (the quorum): the fourth sees the
    # quorum and releases its partial decryption at once.
    for pid in ("bank-a", "bank-b", "hospital-c", "hospital-d"):
        fed.clients[pid].holder.decrypt(1)
    fed.engine.tick()
    assert fed.engine.stage is Stage.DECRYPTING


def _starts(fed) -> list[int]:  # type: ignore[no-untyped-def]
    from fedlora.protocol import chunk_ranges

    starts = [first for first, _ in chunk_ranges(fed.engine.record_count)]
    assert len(starts) >= 3  # the tests are about several chunks
    return starts


def test_holders_release_chunk_by_chunk_and_the_coordinator_combines_each_as_it_completes(
    tmp_path, monkeypatch
) -> None:
    clock = Clock()
    layout, fed, deltas = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    starts = _starts(fed)
    # Act: two more holders release; each chunk is combined as its third partial arrives,
    # before the engine's combining step.
    for pid in ("bank-a", "bank-b"):
        assert fed.clients[pid].holder.decrypt(1)
    r = fed.engine.round
    assert (
        r is not None
        and sorted(f for n, f in fed.engine.opening.combined if n == r.number) == starts
    )
    fed.engine.tick()
    # Assert: the weighted mean of the clipped deltas, every chunk proven and logged.
    assert fed.engine.finished
    moved = fed.global_vector().astype(np.float64)
    total = sum(WEIGHTS.values())
    expected = sum(WEIGHTS[p] * np.clip(d.astype(np.float64), -1, 1) for p, d in deltas.items())
    assert np.max(np.abs(moved - expected / total)) <= fed.engine.codec.step + 1e-6
    decryptors = ["bank-a", "bank-b", "hospital-d"]
    accepted = [
        (e["party"], e["first_record"]) for e in _events(layout) if e["event"] == "partial_accepted"
    ]
    assert sorted(accepted) == sorted((p, f) for p in decryptors for f in starts)
    decrypted = next(e for e in _events(layout) if e["event"] == "decrypted")
    assert decrypted["decryptors"] == decryptors


def test_a_holder_that_sends_a_wrong_chunk_is_refused_for_it_and_the_round_closes(
    tmp_path, monkeypatch
) -> None:
    """A malicious holder: a chunk with altered values (signed by it), a chunk that claims to
    answer another chunk, one that starts where no chunk does; each is refused and logged, and
    the honest holders' chunks still decrypt the round."""
    import dataclasses

    from fedlora.crypto import ciphertext_vector_digest, sign_digest
    from fedlora.errors import RemoteError
    from fedlora.protocol import partial_statement, unpack_records
    from fedlora.protocol._records import pack_records

    clock = Clock()
    layout, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    starts = _starts(fed)
    liar = fed.clients["bank-e"]
    honest = liar.transport.submit_partial
    sent = []
    liar.transport.submit_partial = lambda h, v: sent.append((h, v))  # type: ignore[method-assign]
    assert liar.holder.decrypt(1)  # it computes every chunk; none reaches the coordinator yet
    width, key = fed.engine.width, liar.holder.policy.key  # type: ignore[union-attr]

    def signed(header, values):  # type: ignore[no-untyped-def]
        digest = ciphertext_vector_digest(key.paillier, unpack_records(values, width))
        statement = partial_statement(liar.config.federation_id, "bank-e", header, digest)
        return dataclasses.replace(
            header, statement_signature=sign_digest(liar.member.signing_key, statement)
        )

    (h0, v0), (h1, v1) = sent[0], sent[1]
    altered = list(unpack_records(v1, width))
    altered[0] = altered[0] * 4 % key.nsquare  # another value: only the proof can tell
    altered[0] = min(altered[0], key.nsquare - altered[0])  # (in canonical form)
    bad = pack_records(altered, width)
    attacks = [
        (signed(h1, bad), bad, "failed its proof of correct decryption"),
        (signed(dataclasses.replace(h0, first_record=starts[1]), v0), v0, "different aggregate"),
        (signed(dataclasses.replace(h0, first_record=1), v0), v0, "no chunk of the aggregate"),
    ]
    # Act / Assert
    for header, values, why in attacks:
        with pytest.raises(RemoteError, match=why):
            honest(header, values)
    rejected = [e for e in _events(layout) if e["event"] == "partial_rejected"]
    assert len(rejected) == 3 and all(e["party"] == "bank-e" for e in rejected)
    assert fed.engine.round.partials.get("bank-e", {}) == {}  # type: ignore[union-attr]
    for pid in ("bank-a", "bank-b"):
        assert fed.clients[pid].holder.decrypt(1)
    fed.engine.tick()
    assert fed.engine.finished
    decrypted = next(e for e in _events(layout) if e["event"] == "decrypted")
    assert "bank-e" not in decrypted["decryptors"]


def test_a_coordinator_restarted_mid_release_combines_the_chunks_it_holds_on_disk(
    tmp_path, monkeypatch
) -> None:
    import dataclasses

    from fedlora.config import load_coordinator_config
    from fedlora.coordinator import build_engine

    clock = Clock()
    layout, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    for pid in ("bank-a", "bank-b"):
        assert fed.clients[pid].holder.decrypt(1)
    # Act: the coordinator restarts before its combining step (what it combined was in memory).
    config = load_coordinator_config(layout.coordinator_config)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, num_parameters=CHUNKED)
    )
    engine = build_engine(config, clock=clock)
    assert engine.stage is Stage.DECRYPTING and engine.round is not None
    assert engine.opening.combined == {} and len(engine.round.partials) == 3
    engine.tick()
    # Assert
    assert engine.finished
    assert [e["event"] for e in _events(layout)].count("round_closed") == 1


def test_a_chunk_whose_early_combination_fails_is_combined_at_the_combining_step(
    tmp_path, monkeypatch
) -> None:
    """Whatever goes wrong combining a chunk early is not the holder's fault: its release goes
    on, and the engine's combining step combines the chunk again."""
    from fedlora.coordinator import _opening

    clock = Clock()
    _, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    real, failures = _opening.combine_verified_partials, []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise ValueError("a fault while combining")
        return real(*args, **kwargs)

    monkeypatch.setattr(_opening, "combine_verified_partials", flaky)
    # Act
    for pid in ("bank-a", "bank-b"):
        assert fed.clients[pid].holder.decrypt(1)
    r = fed.engine.round
    assert failures and r is not None and len(fed.engine.opening.combined) == len(_starts(fed)) - 1
    assert fed.engine.complete_partials() == {"bank-a", "bank-b", "hospital-d"}
    fed.engine.tick()
    # Assert
    assert fed.engine.finished and not fed.engine.opening._combining


def test_a_partial_that_passed_its_proof_but_does_not_combine_is_named_and_routed_around(
    tmp_path, monkeypatch
) -> None:
    """Without safe primes (a generated key) a proof cannot see a deviation by an element of
    small order; such a partial never decrypts to a wrong value, it only fails to combine. The
    coordinator then combines the chunk from another set of holders, names the one in every
    failing set, and the round closes with the right mean. (Played here by changing bank-a's
    accepted partial on the coordinator's disk: past its proof, as such a deviation would be.)"""
    from fedlora.crypto import pack_records, unpack_records

    clock = Clock()
    layout, fed, deltas = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)  # hospital-d released
    first = _starts(fed)[0]
    assert fed.clients["bank-a"].holder.decrypt(1)
    e = fed.engine
    path = e.store.partial_path(1, "bank-a", first)
    values = unpack_records(path.read_bytes(), e.width)
    values[0] = values[0] * 4 % e.key.nsquare  # not a multiple of N away: a failed combination
    path.write_bytes(pack_records(values, e.width))
    # Act: two more holders release; the chunk's early combinations fail, the engine combines.
    for pid in ("bank-b", "hospital-c"):
        assert fed.clients[pid].holder.decrypt(1)
    assert (1, first) not in e.opening.combined
    e.tick()
    # Assert: the round closed with the weighted mean; bank-a is named for that chunk.
    assert e.finished
    moved = fed.global_vector().astype(np.float64)
    total = sum(WEIGHTS.values())
    expected = sum(WEIGHTS[p] * np.clip(d.astype(np.float64), -1, 1) for p, d in deltas.items())
    assert np.max(np.abs(moved - expected / total)) <= e.codec.step + 1e-6
    rejected = [x for x in _events(layout) if x["event"] == "partial_rejected"]
    assert [x["party"] for x in rejected] == ["bank-a"]
    assert f"chunk from record {first} does not combine" in rejected[0]["reason"]


def test_a_release_cut_short_by_the_network_sends_only_the_missing_chunks_next_time(
    tmp_path, monkeypatch
) -> None:
    from fedlora.errors import TransportError

    clock = Clock()
    _, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    client = fed.clients["bank-a"]
    honest, sent = client.transport.submit_partial, []

    def flaky(header, values):  # type: ignore[no-untyped-def]
        sent.append(header.first_record)
        if len(sent) == 2:
            raise TransportError("the connection dropped")
        honest(header, values)

    client.transport.submit_partial = flaky  # type: ignore[method-assign]
    starts = _starts(fed)
    status = client.transport.round_status()
    assert status.stage is Stage.DECRYPTING and not status.partial_submitted
    # Act: the first try delivers one chunk; the next sends the rest, not that one again.
    assert not client.holder.decrypt(1)
    assert not client.transport.round_status().partial_submitted
    assert client.holder.decrypt(1)
    # Assert
    assert sent == [starts[0], starts[1], *starts[1:]]
    assert client.transport.round_status().partial_submitted
    assert fed.clients["bank-b"].holder.decrypt(1)
    fed.engine.tick()
    assert fed.engine.finished


def test_a_chunk_with_a_wrong_header_is_refused_before_its_records_are_read(
    tmp_path, monkeypatch
) -> None:
    import dataclasses

    from fedlora.errors import VerificationError

    clock = Clock()
    _, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    _contribute_and_sign(fed)
    status = fed.clients["bank-e"].transport.round_status()
    assert not status.partial_submitted
    header = dataclasses.replace(_some_header(fed), ticket_digest=b"\x00" * 32)
    party = fed.engine.config.party("bank-a")
    assert party is not None
    read = []

    def records():  # type: ignore[no-untyped-def]
        read.append(1)
        yield b""

    with pytest.raises(VerificationError, match="different ticket"):
        fed.engine.accept_partial(party, header, records())
    assert read == []


def _some_header(fed):  # type: ignore[no-untyped-def]
    from fedlora.protocol import PartialHeader

    r = fed.engine.round
    return PartialHeader(
        round_number=r.number,
        ciphertexts_digest=b"\x01" * 32,
        challenge=1,
        response=1,
        record_count=3,
        ticket_digest=r.ticket,
        statement_signature=b"\x00" * 64,
        first_record=0,
    )


def test_no_partial_is_submitted_before_the_round_has_an_aggregate(tmp_path, monkeypatch) -> None:
    clock = Clock()
    _, fed, _ = _chunked(tmp_path, monkeypatch, clock)
    status = fed.clients["bank-a"].transport.round_status()
    assert status.stage is Stage.COLLECTING and not status.partial_submitted


def _spy_takes(pool, taken: list[int]) -> None:  # type: ignore[no-untyped-def]
    real = pool.take_with_witness

    def take_with_witness(count: int):  # type: ignore[no-untyped-def]
        values, witness = real(count)
        taken.extend(values)
        return values, witness

    pool.take_with_witness = take_with_witness


def test_the_next_rounds_obfuscators_are_computed_between_rounds_and_used_once(tmp_path) -> None:
    """After sealing round 1 a member computes round 2's obfuscators in the background; round 2
    seals with exactly those, none is used twice, and after the last round none is computed."""
    clock = Clock()
    _layout, fed, trainers = _federation(tmp_path, clock, rounds=2)
    for pid, t in trainers.items():
        t.delta = _deltas(1)[pid]
    client = fed.clients["bank-a"]
    first: list[int] = []
    contributor = client.contributor
    real_pool = contributor.obfuscator_pool

    def spied():  # type: ignore[no-untyped-def]
        pool = real_pool()
        _spy_takes(pool, first if fed.round_number == 1 else [])
        return pool

    contributor.obfuscator_pool = spied
    fed.step(["bank-a"])
    contributor.obfuscator_pool = real_pool
    ahead = contributor._next_pool
    assert ahead is not None and ahead.public_key == client.member.key.paillier
    ahead.fill()  # what the background would finish while the round is decrypted
    ready = {v for _, v in ahead._ready}
    assert len(ready) == ahead.capacity == len(first) and not ready & set(first)
    second: list[int] = []
    _spy_takes(ahead, second)
    assert fed.run_round() == 1
    assert fed.run_round() == 2
    assert set(second) == ready and len(second) == len(ready)  # sealed warm, each value once
    assert len(ahead) == 0  # handed over and closed: nothing kept for reuse
    assert contributor._next_pool is None  # the last round: nothing computed ahead


def test_without_obfuscators_ahead_nothing_is_computed_between_rounds(tmp_path) -> None:
    clock = Clock()
    _layout, fed, trainers = _federation(tmp_path, clock, rounds=2)
    for pid, t in trainers.items():
        t.delta = _deltas(1)[pid]
    client = fed.clients["bank-a"]
    member = client.member
    member.config = replace(
        member.config, crypto=replace(member.config.crypto, obfuscators_ahead=False)
    )
    fed.step(["bank-a"])
    assert client.contributor._next_pool is None
