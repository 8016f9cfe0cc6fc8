"""Live state = replayed state, after every step of random message and tick sequences.

The engine changes its state only by appending an event and applying it; a restart folds the
same ``apply`` over the log. Hypothesis drives a real engine (512-bit test key, on disk) and real
clients in one process through random interleavings — members doing what their status asks,
clock jumps past deadlines, a push transport closing collection, hostile uploads, a driver
ending a decryption — and after each step the state rebuilt from the log must equal the live one.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fedlora._setup import prepare_federation
from fedlora.coordinator import build_engine
from fedlora.coordinator._state import FederationState, replay
from fedlora.errors import FedLoraError
from fedlora.inprocess import GivenDelta, InProcessFederation
from fedlora.protocol import ContributionHeader, Stage

BITS = 512
N = 2 * 8 + 2  # the linear model's parameters
PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e")
_RUNS = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _replayed(fed: InProcessFederation) -> FederationState:
    lines = fed.engine.audit.entries()
    return replay(json.loads(line) for line in lines)


def machine(layout):  # type: ignore[no-untyped-def]
    class Federation(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = Clock()
            rng = np.random.default_rng(0)
            trainers = {
                pid: GivenDelta(N, num_examples=i + 1, delta=rng.normal(0, 0.5, N))
                for i, pid in enumerate(PARTIES)
            }
            self.fed = InProcessFederation.from_configs(
                layout.coordinator_config,
                layout.client_configs,
                trainers=trainers,
                clock=self.clock,
                run_name=f"run-{next(_RUNS)}",
            )
            self.seen = {pid: set() for pid in PARTIES}  # type: ignore[var-annotated]

        @rule(pids=st.lists(st.sampled_from(PARTIES), min_size=1, max_size=12))
        def members_do_what_their_status_asks(self, pids: list[str]) -> None:
            for pid in pids:
                client = self.fed.clients[pid]
                try:
                    status = client.transport.round_status()
                    client.step(self.fed.feds[pid], status, self.seen[pid])
                except FedLoraError:
                    pass  # the round moved on, or a refusal: the state must still replay
                self.fed.engine.tick()

        @rule()
        def tick(self) -> None:
            self.fed.engine.tick()

        @rule(seconds=st.sampled_from([1, 1, 1, 30, 61, 601]))
        def time_passes(self, seconds: int) -> None:
            self.clock.now += seconds
            self.fed.engine.tick()

        @rule(note=st.sampled_from(["", "bank-e: timed out"]), now=st.booleans())
        def push_transport_closes_collection(self, note: str, now: bool) -> None:
            if now:  # half the time: a close drawn too often would starve the rounds
                self.fed.engine.close_collection(note)
                self.fed.engine.tick()

        @rule(now=st.booleans())
        def driver_ends_the_decryption(self, now: bool) -> None:
            if now:
                self.fed.engine.end_decryption("the holders refused")

        @rule(pid=st.sampled_from(PARTIES), shift=st.sampled_from([-1, 0, 1, 10**6]))
        def hostile_upload(self, pid: str, shift: int) -> None:
            """A contribution header for another round (or a garbage one for this round)."""
            engine = self.fed.engine
            party = engine.config.party(pid)
            assert party is not None
            number = engine.round.number if engine.round else 0
            header = ContributionHeader(
                round_number=number + shift,
                weight=1,
                value_count=N,
                record_count=1,
                ciphertexts_digest=b"\0" * 32,
                key_fingerprint=engine.fingerprint,
                codec_digest=engine.codec.digest(),
                signature=b"\0" * 64,
            )
            with pytest.raises(FedLoraError):
                engine.accept_contribution(party, header, [b"\0" * 16])

        @rule()
        def coordinator_restarts(self) -> None:
            """A new engine on the same state folder replays the log; the members go on with it."""
            old = self.fed.engine
            engine = build_engine(old.config, clock=self.clock)
            self.fed.engine = engine
            for client in self.fed.clients.values():
                client.transport.engine = engine

        @invariant()
        def live_state_is_the_replayed_state(self) -> None:
            live = self.fed.engine.state
            assert _replayed(self.fed) == live, (live.stage, live.round)

        @invariant()
        def a_settled_engine_is_never_in_its_own_work(self) -> None:
            assert self.fed.engine.stage not in (Stage.AGGREGATING, Stage.COMBINING)

    return Federation


def test_the_live_state_equals_the_state_replayed_from_the_log(tmp_path) -> None:
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=3,
        aggregation_frequency=1,
        participant_threshold=2,
        decryption_threshold=2,
        round_timeout_s=60,
        insecure=True,
        model_kind="linear",
        min_clients=2,
    )
    Federation = machine(layout)
    Federation.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    Federation.TestCase().runTest()
