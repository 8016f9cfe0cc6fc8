"""Attacks on key generation without a dealer, over the coordinator's real gRPC service (mTLS).

512-bit keys, holders bank-a, bank-b and hospital-c, decryption threshold 2 (quorum 3); nothing
of gRPC, the cryptography or the disk is mocked. The attacker, test by test:

* a lying coordinator flips a byte of one sealed message it relays (bank-a → bank-b, round 1),
  in every attempt: bank-b blames the relay each time, and no key is kept anywhere;
* a lying coordinator hands a member that holds no share (hospital-d, in a 4-party federation)
  an outcome no quorum of holders signed: another key under the holders' signatures, one
  signature, a signature it made itself, a non-holder's signature, a key with another
  threshold; the member refuses each, writes nothing, and accepts the genuine outcome;
* a holder says hello and then never posts: the coordinator's round timeout ends the attempt
  blaming it, and the other holders stop with an error naming it;
* parties that hold no share (an enrolled non-holder, and a certificate the federation's CA
  issued to someone never enrolled) call the holders' methods: each is refused, nothing recorded;
* a holder signs its messages with another key than the one the others pin: they name it;
* a holder commits to wrong biprimality answers, throwing every candidate away: the batch is
  opened and the first biprime it threw away names it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console

from fedlora._setup import Layout
from fedlora.audit import read_log_files
from fedlora.ceremony._exchange import RELAY, CeremonyAborted
from fedlora.ceremony._generate import KeygenOutcome, KeygenStart, accept_outcome
from fedlora.ceremony._generate import generate_as_holder as _generate_as_holder
from fedlora.ceremony._statement import KeyStatement
from fedlora.certs import issue_certificate
from fedlora.client._grpc import GrpcKeygen, GrpcTransport
from fedlora.client._keygen import ATTEMPTS, STATEMENT_FILE
from fedlora.client._keygen import generated_key as _generated_key
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig, load_client_config, load_coordinator_config
from fedlora.coordinator import Running, _server
from fedlora.coordinator._keygen import KeygenService, keygen_service
from fedlora.crypto import ThresholdPublicKey, deal_threshold_key
from fedlora.errors import ProtocolError, RemoteError, VerificationError
from fedlora.v1 import keygen_pb2, keygen_pb2_grpc
from tests.integration import helpers as h

THREE = (("bank-a", "bank"), ("bank-b", "bank"), ("hospital-c", "hospital"))
FOUR = (*THREE, ("hospital-d", "hospital"))
HOLDERS = tuple(pid for pid, _ in THREE)
THRESHOLD = 2  # quorum ⌈(3 + 2)/2⌉ = 3: every holder's signature


# -- set-up ------------------------------------------------------------------------------------
def _federation(
    root: Path, *, parties: tuple[tuple[str, str], ...] = THREE, round_timeout_s: float = 120
) -> Layout:
    """A federation whose key HOLDERS generate (every other party is a member only)."""
    layout = h.prepare_federation(
        root,
        bits=512,
        parties=parties,
        decryption_threshold=THRESHOLD,
        participant_threshold=2,
        rounds=1,
        generate_key=True,
    )
    doc = yaml.safe_load(layout.coordinator_config.read_text())
    doc["keys"]["generation"].update(holders=list(HOLDERS), round_timeout_s=round_timeout_s)
    layout.coordinator_config.write_text(yaml.safe_dump(doc, sort_keys=False))
    for path in layout.client_configs.values():
        doc = yaml.safe_load(path.read_text())
        gen = doc["keys"]["generation"]
        gen["holders"] = [x for x in gen["holders"] if x["id"] in HOLDERS]
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return layout


def _serve(layout: Layout, liar: type[KeygenService] = KeygenService) -> tuple[Running, Any]:
    """The real coordinator, its Keygen service turned into ``liar`` (same state, other code)."""
    made = []

    def lying_keygen_service(config, **kw):  # type: ignore[no-untyped-def]
        service = keygen_service(config, **kw)
        assert service is not None
        service.__class__ = liar
        made.append(service)
        return service

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_server, "keygen_service", lying_keygen_service)
        running = h.serve(layout)
    return running, made[0]


def _x25519(layout: Layout, pid: str) -> X25519PrivateKey:
    key = load_pem_private_key((layout.root / "keys" / f"{pid}.x25519").read_bytes(), None)
    assert isinstance(key, X25519PrivateKey)
    return key


def _config(layout: Layout, pid: str, **overrides: Any) -> ClientConfig:
    return load_client_config(layout.client_configs[pid], overrides or None)


def _check(config: ClientConfig) -> dict[str, Any]:
    """What a member checks an outcome against: its own configuration and pinned keys."""
    gen = config.keys.generation
    assert gen is not None
    holders = tuple(x.id for x in gen.holders)
    pinned = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
    return {
        "federation_id": config.federation_id,
        "holders": holders,
        "threshold": gen.threshold,
        "signing_keys": {x: pinned[x] for x in holders},
    }


def _over_grpc(config: ClientConfig, act: Callable[[GrpcKeygen], Any]) -> Any:
    transport = GrpcTransport(config)
    try:
        return act(transport.keygen())
    finally:
        transport.close()


def _member(layout: Layout, pid: str, **overrides: Any) -> ThresholdPublicKey:
    """The real member side: take part (a holder) or wait for the result, check, write."""
    config = _config(layout, pid, **overrides)
    ui = Reporter(Console(quiet=True))
    key = (h.signing_key(layout, pid), _x25519(layout, pid))
    return _over_grpc(config, lambda relay: _generated_key(config, relay, ui, *key))


def _holder_once(
    layout: Layout, pid: str, signing_key: Ed25519PrivateKey | None = None
) -> tuple[KeygenOutcome, Any]:
    """One attempt of holder ``pid`` (signing its messages with ``signing_key`` if given)."""
    config = _config(layout, pid)
    gen = config.keys.generation
    assert gen is not None
    return _over_grpc(
        config,
        lambda relay: _generate_as_holder(
            relay,
            me=pid,
            bits=gen.bits,
            signing_key=signing_key or h.signing_key(layout, pid),
            x25519_key=_x25519(layout, pid),
            x25519_keys={x.id: bytes.fromhex(x.x25519_public_key) for x in gen.holders},
            **_check(config),
        ),
    )


def _in_threads(calls: dict[str, Callable[[], Any]], timeout: float = 60) -> dict[str, Any]:
    """Run each call in its own thread; returns what each returned or raised."""
    results: dict[str, Any] = {}

    def run(pid: str) -> None:
        try:
            results[pid] = calls[pid]()
        except Exception as exc:
            results[pid] = exc

    threads = [threading.Thread(target=run, args=(pid,), daemon=True) for pid in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert sorted(results) == sorted(calls), f"still running after {timeout}s: {results}"
    return results


def _events(layout: Layout, kind: str | None = None) -> list[dict[str, Any]]:
    config = load_coordinator_config(layout.coordinator_config)
    entries, _, _ = read_log_files(config.state_dir / "audit")
    events = [json.loads(line) for line in entries.splitlines() if line]
    return [e for e in events if kind is None or e["event"] == kind]


def _assert_no_key_anywhere(layout: Layout) -> None:
    assert not load_coordinator_config(layout.coordinator_config).keys.threshold_public_key.exists()
    for pid in layout.client_configs:
        config = _config(layout, pid)
        for path in (
            config.keys.threshold_public_key,
            config.keys.key_share,
            config.state_dir / STATEMENT_FILE,
        ):
            assert not path.exists(), path
    assert not _events(layout, "key_generated")


# -- a relay that alters a message -------------------------------------------------------------
class AltersOneMessage(KeygenService):
    """Flips one bit of bank-a's round-1 message to bank-b, in every attempt."""

    target = (1, "bank-a", "bank-b")  # (round, sender, recipient)

    def collect(
        self, holder: str, session: bytes, number: int, sender: str, offset: int
    ) -> tuple[int, bytes]:
        total, data = super().collect(holder, session, number, sender, offset)
        if (number, sender, holder) == self.target and offset == 0 and data:
            data = bytes([data[0] ^ 1]) + data[1:]
            self.altered = getattr(self, "altered", 0) + 1
        return total, data


def test_a_relay_that_alters_a_message_is_blamed_and_no_key_is_kept(tmp_path) -> None:
    # Arrange: the coordinator alters bank-a → bank-b in round 1 of every attempt.
    layout = _federation(tmp_path)
    running, relay = _serve(layout, AltersOneMessage)
    try:
        # Act: every holder runs the real member side (it starts over after an abort).
        results = _in_threads({pid: functools.partial(_member, layout, pid) for pid in HOLDERS})
        assert not running.ready.is_set()  # no key: the federation never starts
    finally:
        running.stop(grace=1)
    # Assert: bank-b found the altered message each time and blamed the relay; the others
    # stopped because the attempt ended.
    victim = results["bank-b"]
    assert isinstance(victim, CeremonyAborted), results
    assert victim.party == RELAY and "altered" in str(victim)
    assert relay.altered == ATTEMPTS
    for pid in ("bank-a", "hospital-c"):
        assert isinstance(results[pid], RemoteError), results
        assert results[pid].reason is ProtocolError
    started, aborted = _events(layout, "keygen_started"), _events(layout, "keygen_aborted")
    assert len(started) == len(aborted) == ATTEMPTS
    assert {(e.get("party"), e.get("reported_by")) for e in aborted} == {(RELAY, "bank-b")}
    _assert_no_key_anywhere(layout)


# -- a relay that hands members a key no quorum signed -----------------------------------------
class ForgesTheResult(KeygenService):
    """Answers Result (what members that hold no share wait for) with ``forge(outcome)``."""

    forge: Callable[[KeygenOutcome], KeygenOutcome] | None = None

    def result(self) -> KeygenOutcome | None:
        outcome = super().result()
        return outcome if outcome is None or self.forge is None else self.forge(outcome)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """Four parties, three holders: the holders generate the key through a coordinator whose
    Result lies when the test sets ``relay.forge``; hospital-d is a member only."""
    layout = _federation(tmp_path_factory.mktemp("generated"), parties=FOUR)
    running, relay = _serve(layout, ForgesTheResult)
    try:
        keys = _in_threads({pid: functools.partial(_member, layout, pid) for pid in HOLDERS})
        key = keys["bank-a"]
        assert isinstance(key, ThresholdPublicKey) and set(keys.values()) == {key}, keys
        yield SimpleNamespace(layout=layout, relay=relay, key=key, outcome=relay.outcome)
    finally:
        running.stop(grace=1)


def _statement(outcome: KeygenOutcome) -> KeyStatement:
    return KeyStatement(
        "fedlora-demo", outcome.session, outcome.public_key.fingerprint, HOLDERS, outcome.transcript
    )


def _signed_by(outcome: KeygenOutcome, layout: Layout, **signers: str) -> KeygenOutcome:
    """The outcome with the statement signed under holder name → the key file ``signers`` names."""
    forged = dict(outcome.signatures)
    for holder, key_file in signers.items():
        key = load_pem_private_key((layout.root / "keys" / key_file).read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        forged[holder] = _statement(outcome).sign(key)
    return dataclasses.replace(outcome, signatures=forged)


FORGERIES: dict[str, tuple[Callable[..., KeygenOutcome], str]] = {
    "another key under the holders' signatures": (
        lambda o, layout, primes: dataclasses.replace(
            o, public_key=deal_threshold_key(*primes, THRESHOLD, HOLDERS).public_key
        ),
        r"carries 0 valid holder signatures, 3 are required; refused: .*'bank-a' \(signature does",
    ),
    "one holder's signature": (
        lambda o, layout, primes: dataclasses.replace(
            o, signatures={"bank-a": o.signatures["bank-a"]}
        ),
        r"carries 1 valid holder signatures, 3 are required$",
    ),
    "a signature the coordinator made": (
        lambda o, layout, primes: _signed_by(o, layout, **{"hospital-c": "coordinator.ed25519"}),
        r"2 valid holder signatures, 3 are required; refused: 'hospital-c' \(signature does not",
    ),
    "a member's signature in place of a holder's": (
        lambda o, layout, primes: _signed_by(
            dataclasses.replace(
                o, signatures={k: v for k, v in o.signatures.items() if k != "hospital-c"}
            ),
            layout,
            **{"hospital-d": "hospital-d.ed25519"},
        ),
        r"2 valid holder signatures, 3 are required; refused: 'hospital-d' \(not a holder",
    ),
    "a 3-of-3 key": (
        lambda o, layout, primes: dataclasses.replace(
            o, public_key=deal_threshold_key(*primes, 3, HOLDERS).public_key
        ),
        r"the generated key is a 3-of-3 key .* keys.generation expects 2-of-3",
    ),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_member_refuses_a_key_no_quorum_of_holders_signed(
    generated, safe_primes, forgery, tmp_path
) -> None:
    forge, refusal = FORGERIES[forgery]
    layout, relay = generated.layout, generated.relay
    own = {"state_dir": str(tmp_path / "state"), "keys.threshold_public_key": str(tmp_path / "k")}
    # Arrange: the coordinator answers Result with the forgery.
    relay.forge = functools.partial(forge, layout=layout, primes=safe_primes)
    try:
        # Act + Assert: hospital-d's real member side refuses it, naming why, and writes nothing.
        with pytest.raises(VerificationError, match=refusal):
            _member(layout, "hospital-d", **own)
        assert not list(tmp_path.iterdir())
        # ...and so does a holder's check of what the same Result says over gRPC.
        forged = _over_grpc(_config(layout, "bank-a"), lambda r: r.result())
        assert forged != generated.outcome
        with pytest.raises(VerificationError, match=refusal):
            accept_outcome(forged, **_check(_config(layout, "bank-a")))
    finally:
        relay.forge = None
    # The genuine outcome through the same relay and checks is accepted.
    assert _member(layout, "hospital-d", **own) == generated.key


# -- a holder that stops answering -------------------------------------------------------------
def test_a_holder_that_stops_answering_is_blamed_and_the_others_stop(tmp_path) -> None:
    # Arrange: a 2-second round timeout; bank-a says hello, then never posts anything.
    layout = _federation(tmp_path, round_timeout_s=2)
    running, _ = _serve(layout)
    silent = "bank-a"
    try:
        # Act: the other two holders try one attempt each.
        results = _in_threads(
            {
                silent: lambda: _over_grpc(
                    _config(layout, silent), lambda r: r.hello(secrets.token_bytes(32))
                ),
                "bank-b": functools.partial(_holder_once, layout, "bank-b"),
                "hospital-c": functools.partial(_holder_once, layout, "hospital-c"),
            }
        )
    finally:
        running.stop(grace=1)
    # Assert: the attempt started with bank-a in it, and ended blaming bank-a alone.
    assert isinstance(results[silent], KeygenStart), results
    for pid in ("bank-b", "hospital-c"):
        assert isinstance(results[pid], RemoteError), results
        assert f"{silent} stopped answering" in str(results[pid])
    (aborted,) = _events(layout, "keygen_aborted")
    assert aborted.get("party") == silent and aborted.get("reported_by") is None
    assert "no progress for 2s" in aborted["reason"]
    _assert_no_key_anywhere(layout)


# -- parties that hold no share ----------------------------------------------------------------
def test_parties_that_hold_no_share_cannot_take_part(generated, tmp_path) -> None:
    layout, session = generated.layout, generated.outcome.session
    issue_certificate(layout.root / "ca", "mallory", tmp_path / "certs")  # valid, not enrolled
    calls = {
        "Hello": keygen_pb2.KeygenHello(nonce=secrets.token_bytes(32)),
        "Post": keygen_pb2.KeygenPiece(
            session=session, round=1, peer="bank-a", offset=0, total=4, data=b"evil"
        ),
        "Collect": keygen_pb2.KeygenWant(session=session, round=1, sender="bank-a", offset=0),
        "Abort": keygen_pb2.KeygenStop(session=session, reason="stop", party="bank-a"),
        "Done": keygen_pb2.KeygenSigned(session=session, signature=bytes(64)),
        "Result": keygen_pb2.KeygenQuery(),  # an enrolled member's call: hospital-d may ask
    }
    before = len(_events(layout))
    for who, certs, names, refusal in (
        ("hospital-d", None, ["Hello", "Post", "Collect", "Abort"], "'hospital-d' holds no share"),
        ("mallory", tmp_path / "certs", list(calls), "'mallory' is not an enrolled"),
    ):
        stub = keygen_pb2_grpc.KeygenStub(h.channel(layout, who, cert_dir=certs))
        for name in names:
            with pytest.raises(grpc.RpcError) as refused:
                getattr(stub, name)(calls[name], timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (who, name)
            assert refusal in refused.value.details(), (who, name)
    # Nothing they sent was recorded or changed the outcome.
    assert len(_events(layout)) == before and not _events(layout, "keygen_aborted")
    assert _over_grpc(_config(layout, "bank-a"), lambda r: r.result()) == generated.outcome


def test_a_holder_signing_with_another_key_than_its_pinned_one_is_named(tmp_path) -> None:
    # Arrange: bank-b signs its messages with a fresh key nobody pins.
    layout = _federation(tmp_path)
    running, _ = _serve(layout)
    impostor = "bank-b"
    try:
        # Act: one attempt of every holder.
        results = _in_threads(
            {
                "bank-a": functools.partial(_holder_once, layout, "bank-a"),
                impostor: functools.partial(
                    _holder_once, layout, impostor, Ed25519PrivateKey.generate()
                ),
                "hospital-c": functools.partial(_holder_once, layout, "hospital-c"),
            }
        )
    finally:
        running.stop(grace=1)
    # Assert: an honest holder named bank-b; the relay recorded that blame, and no key.
    honest = {"bank-a", "hospital-c"}
    reporters = {pid for pid in honest if isinstance(results[pid], CeremonyAborted)}
    assert reporters, results
    for pid in reporters:
        assert results[pid].party == impostor
        assert "not signed by its pinned key" in str(results[pid])
    assert all(isinstance(results[pid], RemoteError) for pid in {impostor} | honest - reporters)
    (aborted,) = _events(layout, "keygen_aborted")
    assert aborted.get("party") == impostor and aborted.get("reported_by") in reporters
    _assert_no_key_anywhere(layout)


def test_a_holder_throwing_biprimes_away_with_wrong_answers_is_named(monkeypatch, tmp_path) -> None:
    # Arrange: hospital-c (index 3) commits to wrong biprimality answers: every candidate fails.
    from fedlora.crypto._keygen import KeygenParty

    real = KeygenParty.biprimality_answers

    def lying(self, candidate, n, rounds):  # type: ignore[no-untyped-def]
        answers = real(self, candidate, n, rounds)
        return [a * 2 % n for a in answers] if self.index == 3 else answers

    monkeypatch.setattr(KeygenParty, "biprimality_answers", lying)
    layout = _federation(tmp_path)
    running, _ = _serve(layout)
    try:
        # Act: one attempt of every holder.
        results = _in_threads(
            {pid: functools.partial(_holder_once, layout, pid) for pid in HOLDERS}, timeout=120
        )
    finally:
        running.stop(grace=1)
    # Assert: the first batch is opened, hospital-c is named, the log says so, and no key.
    named = [r for r in results.values() if isinstance(r, CeremonyAborted)]
    assert named, results
    for result in named:
        assert result.party == "hospital-c"
        assert "gave a wrong biprimality answer" in str(result)
    assert all(isinstance(r, (CeremonyAborted, RemoteError)) for r in results.values()), results
    (aborted,) = _events(layout, "keygen_aborted")
    assert aborted.get("party") == "hospital-c"
    assert "wrong biprimality answer" in aborted["reason"]
    _assert_no_key_anywhere(layout)
