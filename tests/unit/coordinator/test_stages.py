"""Every (stage, message) pair on a real engine: what a stage does not accept is refused before
any work, naming the stage, and changes nothing; what it accepts is not refused for its stage.

The engine is brought into each stage by real members (512-bit test key, on disk); AGGREGATING
and COMBINING, the coordinator's own work, are held open by making that work wait.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from fedlora._setup import prepare_federation
from fedlora.coordinator import Coordinator
from fedlora.errors import FedLoraError, ProtocolError
from fedlora.inprocess import GivenDelta, InProcessFederation
from fedlora.protocol import ALLOWED, ContributionHeader, Message, PartialHeader, Stage

BITS = 512
N = 2 * 8 + 2
PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e")


def _send(engine: Coordinator, message: Message) -> None:
    """``message`` from bank-a (a share holder), as its transport would send it."""
    party = engine.config.party("bank-a")
    assert party is not None
    number = engine.round.number if engine.round else 0
    match message:
        case Message.JOIN:
            engine.join_info(party, "")
        case Message.ROUND_STATUS:
            engine.status(party)
        case Message.DOWNLOAD_GLOBAL:
            _, chunks = engine.global_chunks(engine.global_version)
            b"".join(chunks)
        case Message.CONTRIBUTION:
            header = ContributionHeader(
                round_number=number,
                weight=1,
                value_count=N,
                record_count=1,
                ciphertexts_digest=b"\0" * 32,
                key_fingerprint=engine.fingerprint,
                codec_digest=engine.codec.digest(),
                signature=b"\0" * 64,
            )
            engine.accept_contribution(party, header, [b"\0" * 16])
        case Message.DECRYPTION_TASK:
            engine.decryption_task(party, number, manifest_only=True)
        case Message.TICKET:
            engine.accept_ticket(party, number, b"\0" * 32, b"\0" * 64)
        case Message.PARTIAL_DECRYPTION:
            header = PartialHeader(
                round_number=number,
                ciphertexts_digest=b"\0" * 32,
                challenge=1,
                response=1,
                record_count=1,
            )
            engine.accept_partial(party, header, [b"\0" * 16])


def _check_every_message(engine: Coordinator, stage: Stage) -> None:
    assert engine.stage is stage
    for message in Message:
        before = copy.deepcopy(engine.state)
        try:
            _send(engine, message)
            refused = None
        except FedLoraError as exc:
            refused = exc
        said = f"is {stage.value}: a {message.value.replace('_', ' ')} is not accepted now"
        if message in ALLOWED[stage]:
            assert refused is None or said not in str(refused), (stage, message, refused)
        else:
            assert isinstance(refused, ProtocolError) and said in str(refused), (stage, message)
            assert engine.state == before, (stage, message)  # refused before any work


def _layout(tmp_path):  # type: ignore[no-untyped-def]
    return prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=1,
        aggregation_frequency=1,
        participant_threshold=2,
        decryption_threshold=2,
        round_timeout_s=60,
        insecure=True,
        model_kind="linear",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def _held(
    engine: Coordinator, monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> Iterator[None]:
    """Hold the engine's own work open: ``owner.name`` waits until the block ends, while a
    tick runs in a thread; yields once the work reached it."""
    real = getattr(owner, name)
    reached, release = threading.Event(), threading.Event()

    def waiting(*args, **kwargs):  # type: ignore[no-untyped-def]
        reached.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, waiting)
    worker = threading.Thread(target=engine.tick)
    worker.start()
    try:
        assert reached.wait(60), f"the engine never reached {name}"
        yield
    finally:
        release.set()
        worker.join(60)
        monkeypatch.setattr(owner, name, real)


def test_a_waiting_federation_takes_joins_and_questions_only(tmp_path) -> None:
    fed = InProcessFederation.from_configs(_layout(tmp_path).coordinator_config, {})
    _check_every_message(fed.engine, Stage.WAITING)


def test_every_round_stage_takes_its_messages_and_refuses_the_rest(tmp_path, monkeypatch) -> None:
    from fedlora.coordinator import _opening

    layout = _layout(tmp_path)
    rng = np.random.default_rng(1)
    trainers = {pid: GivenDelta(N, delta=rng.normal(0, 0.5, N)) for pid in PARTIES}
    clock = Clock()
    fed = InProcessFederation.from_configs(
        layout.coordinator_config, layout.client_configs, trainers=trainers, clock=clock
    )
    engine = fed.engine
    _check_every_message(engine, Stage.COLLECTING)
    fed.step(["bank-b", "hospital-c"], tick=False)  # two contribute; the rest never do
    clock.now += 61  # past the round's deadline: aggregate what came
    with _held(engine, monkeypatch, engine.secure_sum, "add"):
        _check_every_message(engine, Stage.AGGREGATING)
    _check_every_message(engine, Stage.TICKETING)
    for pid in PARTIES:  # holders sign the ticket until the quorum
        if engine.stage is Stage.TICKETING:
            fed.step([pid], tick=False)
    _check_every_message(engine, Stage.DECRYPTING)
    while engine.stage is Stage.DECRYPTING and len(engine.complete_partials()) < 2:
        fed.step(list(PARTIES), tick=False)
    with _held(engine, monkeypatch, _opening, "decode"):
        _check_every_message(engine, Stage.COMBINING)
    _check_every_message(engine, Stage.FINISHED)
