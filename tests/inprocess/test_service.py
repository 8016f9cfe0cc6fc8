"""The coordinator as a service: it waits for parties, closes rounds early, refuses silent
configuration drift on restart, and clients keep every global version they helped build.

Real engine, real clients, real keys and files; the clock is injected, so deadlines move without
sleeping.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from rich.console import Console

from fedlora._setup import prepare_federation
from fedlora.client import Client
from fedlora.client._models import verify_kept
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.coordinator import build_engine
from fedlora.errors import ConfigError, VerificationError
from fedlora.inprocess import GivenDelta, InProcessFederation, InProcessTransport
from fedlora.protocol import Stage

BITS = 512  # test keys only
N = 2 * 8 + 2  # the linear model's parameters


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _layout(tmp_path, **kw):  # type: ignore[no-untyped-def]
    return prepare_federation(
        tmp_path,
        bits=BITS,
        aggregation_frequency=1,
        decryption_threshold=3,
        round_timeout_s=60,
        insecure=True,
        model_kind="linear",
        **{"rounds": 2, "participant_threshold": 3, **kw},
    )


def _given() -> GivenDelta:
    return GivenDelta(N, num_examples=1, delta=np.full(N, 0.01))


def _client(layout, engine, pid: str) -> Client:  # type: ignore[no-untyped-def]
    return Client(
        load_client_config(layout.client_configs[pid]),
        trainer=_given(),
        console=Console(quiet=True),
        transport=InProcessTransport(engine, pid),
    )


def _events(layout) -> list[dict]:  # type: ignore[no-untyped-def]
    log = layout.root / "coordinator-state" / "audit" / "entries.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_round_1_opens_only_when_min_clients_have_joined_and_its_deadline_starts_then(
    tmp_path,
) -> None:
    # Arrange: min_clients defaults to participant_threshold (3).
    layout = _layout(tmp_path)
    clock = Clock()
    engine = build_engine(load_coordinator_config(layout.coordinator_config), clock=clock)
    clients = {pid: _client(layout, engine, pid) for pid in ("bank-a", "bank-b", "hospital-c")}
    # Act: two join, and an hour passes (clients still starting elsewhere).
    clients["bank-a"].join()
    clients["bank-b"].join()
    clock.now += 3600
    engine.tick()
    # Assert: no round has opened, so none can have run out.
    status = clients["bank-a"].transport.round_status()
    assert status.stage is Stage.WAITING and status.round == 0
    assert status.joined == ("bank-a", "bank-b") and status.min_clients == 3
    assert "round_opened" not in [e["event"] for e in _events(layout)]
    # Act: the third joins.
    clients["hospital-c"].join()
    engine.tick()
    # Assert: round 1 opens now, with its full timeout ahead of it.
    status = clients["bank-a"].transport.round_status()
    assert status.stage is Stage.COLLECTING and status.round == 1
    assert status.deadline_unix_s == pytest.approx(clock.now + 60)


def test_a_round_closes_as_soon_as_every_joined_party_contributed(tmp_path) -> None:
    # Arrange: five enrolled, bank-e never starts; the four others join.
    layout = _layout(tmp_path)
    clock = Clock()
    configs = {p: c for p, c in layout.client_configs.items() if p != "bank-e"}
    trainers = {pid: _given() for pid in configs}
    fed = InProcessFederation.from_configs(
        layout.coordinator_config, configs, trainers=trainers, clock=clock
    )
    # Act: one round, with the clock standing still.
    fed.run_round()
    # Assert: closed without waiting for bank-e's deadline.
    events = _events(layout)
    closed = next(e for e in events if e["event"] == "round_closed")
    assert sorted(closed["participants"]) == sorted(configs)
    assert not any(e["event"] == "round_failed" for e in events)


def _finished_federation(tmp_path):  # type: ignore[no-untyped-def]
    layout = _layout(tmp_path, rounds=1)
    fed = InProcessFederation.from_configs(
        layout.coordinator_config,
        layout.client_configs,
        trainers={pid: _given() for pid in layout.client_configs},
        clock=Clock(),
    )
    fed.run_round()
    assert fed.engine.finished
    return layout, fed


def test_clients_keep_every_version_verified_and_mark_the_final_one(tmp_path) -> None:
    _, fed = _finished_federation(tmp_path)
    for pid, client in fed.clients.items():
        key = bytes.fromhex(client.config.keys.coordinator_signing_public_key)
        kept = verify_kept(client.state_dir, client.config.federation_id, key, 1)
        assert kept.final, pid
        assert np.array_equal(kept.vector(), fed.global_vector(1))
        assert "receipt" in json.loads((kept.folder / "provenance.json").read_text())


def test_a_kept_version_whose_proof_was_altered_is_refused_offline(tmp_path) -> None:
    _, fed = _finished_federation(tmp_path)
    client = fed.clients["bank-a"]
    key = bytes.fromhex(client.config.keys.coordinator_signing_public_key)
    provenance = client.state_dir / "models" / "v00001" / "provenance.json"
    doc = json.loads(provenance.read_text())
    entry = json.loads(doc["entry"])
    entry["global_digest"] = "00" * 32  # point the proof at another vector
    doc["entry"] = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    provenance.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="is not in the log of the signed checkpoint"):
        verify_kept(client.state_dir, client.config.federation_id, key, 1)
    # Another coordinator's key (a forged checkpoint) is refused as well.
    with pytest.raises(VerificationError, match="not signed by the coordinator's key"):
        verify_kept(client.state_dir, client.config.federation_id, b"\x01" * 32, 1)


def _restart(layout, accept=False, **changes):  # type: ignore[no-untyped-def]
    config = load_coordinator_config(layout.coordinator_config)
    for section, values in changes.items():
        config = dataclasses.replace(
            config, **{section: dataclasses.replace(getattr(config, section), **values)}
        )
    return build_engine(config, clock=Clock(), accept_config_change=accept)


def test_a_restart_with_another_configuration_is_refused_naming_the_keys(tmp_path) -> None:
    layout, _ = _finished_federation(tmp_path)
    before = len(_events(layout))
    with pytest.raises(
        ConfigError, match=r"federated_learning\.rounds: 1 → 3.*--accept-config-change"
    ):
        _restart(layout, federated_learning={"rounds": 3})
    with pytest.raises(ConfigError, match=r"codec\.clip: 1\.0 → 0\.5.*cannot change"):
        _restart(layout, accept=True, codec={"clip": 0.5})
    assert len(_events(layout)) == before  # a refused restart writes nothing


def test_an_accepted_change_is_audited_and_more_rounds_reopen_a_finished_federation(
    tmp_path,
) -> None:
    layout, _ = _finished_federation(tmp_path)
    engine = _restart(layout, accept=True, federated_learning={"rounds": 2})
    changed = [e for e in _events(layout) if e["event"] == "config_changed"]
    assert changed and changed[-1]["changes"] == {"federated_learning.rounds": [1, 2]}
    assert engine.stage is Stage.COLLECTING and engine.round is not None
    assert engine.round.number == 2
    # The next restart with the same (new) configuration is not a change.
    engine = _restart(layout, federated_learning={"rounds": 2})
    assert engine.round is not None and engine.round.number == 2


def test_a_second_client_on_one_state_folder_is_refused_before_it_joins(tmp_path) -> None:
    import os

    from fedlora._files import StateLock
    from fedlora.errors import FedLoraError

    layout = _layout(tmp_path)
    engine = build_engine(load_coordinator_config(layout.coordinator_config), clock=Clock())
    first = StateLock(load_client_config(layout.client_configs["bank-a"]).state_dir, "client")
    try:
        with pytest.raises(FedLoraError, match=rf"another fedlora client \(pid {os.getpid()}\)"):
            _client(layout, engine, "bank-a").run()
        assert "client_joined" not in [e["event"] for e in _events(layout)]
    finally:
        first.release()


def test_a_wrong_share_file_is_refused_before_the_coordinator_hears_of_the_client(
    tmp_path,
) -> None:
    from fedlora.errors import FedLoraError

    layout = _layout(tmp_path)
    engine = build_engine(load_coordinator_config(layout.coordinator_config), clock=Clock())
    bank = load_client_config(layout.client_configs["bank-a"])
    theirs = bank.keys.key_share.with_name("bank-b.share.json")  # another party's share
    wrong = dataclasses.replace(bank, keys=dataclasses.replace(bank.keys, key_share=theirs))
    client = Client(
        wrong,
        trainer=_given(),
        console=Console(quiet=True),
        transport=InProcessTransport(engine, "bank-a"),
    )
    with pytest.raises(
        FedLoraError,
        match=r"keys\.key_share: .*bank-b\.share\.json: share file is for party 'bank-b', not 'bank-a'",
    ):
        client.join()
    assert "client_joined" not in [e["event"] for e in _events(layout)]


def test_a_coordinator_serving_another_global_than_its_log_names_is_refused(tmp_path) -> None:
    # Arrange: round 1 closed; bank-a has not kept anything yet (a fresh keeper).
    from fedlora.client._models import ModelKeeper

    _, fed = _finished_federation(tmp_path)
    client = fed.clients["bank-a"]
    import shutil

    shutil.rmtree(client.state_dir / "models")
    (client.state_dir / "log-scan.json").unlink(missing_ok=True)  # what it had read
    client.member.models = ModelKeeper(
        client.state_dir, client.config.federation_id, client.member.coordinator_key
    )
    honest = fed.engine.global_chunks

    def lying(version):  # type: ignore[no-untyped-def]
        digest, chunks = honest(version)
        data = bytearray(b"".join(chunks))
        data[0] ^= 1  # another model, served under the logged digest
        return digest, iter([bytes(data)])

    fed.engine.global_chunks = lying  # type: ignore[method-assign]
    # Act / Assert: the download does not match the digest in the audit entry; nothing is kept.
    with pytest.raises(VerificationError, match="does not match the digest in audit entry"):
        client.keep_models(1)
    assert not (client.state_dir / "models" / "v00001").exists()


def _fresh_keeper(client: Client) -> None:
    import shutil

    from fedlora.client._models import ModelKeeper

    shutil.rmtree(client.state_dir / "models")
    (client.state_dir / "log-scan.json").unlink(missing_ok=True)  # what it had read
    client.member.models = ModelKeeper(
        client.state_dir, client.config.federation_id, client.member.coordinator_key
    )


def test_a_coordinator_that_hides_or_rewrites_log_entries_from_one_client_is_caught(
    tmp_path,
) -> None:
    # Arrange: round 1 closed; bank-a reads the log again from the start.
    _, fed = _finished_federation(tmp_path)
    client = fed.clients["bank-a"]
    _fresh_keeper(client)
    honest = client.transport.audit_entries

    def hiding(start, limit):  # type: ignore[no-untyped-def]
        lines = honest(start, limit)
        return [
            line
            for line in lines
            if b'"global_published"' not in line or b'"version":1' not in line
        ]

    def rewriting(start, limit):  # type: ignore[no-untyped-def]
        return [line.replace(b'"rounds":1', b'"rounds":9') for line in honest(start, limit)]

    # Act / Assert: the lines must be the checkpoint's log, line for line.
    for lie in (hiding, rewriting):
        client.transport.audit_entries = lie  # type: ignore[method-assign]
        with pytest.raises(
            VerificationError, match=r"(not the log of its signed|sent \d+ audit entries)"
        ):
            client.keep_models(1)
        assert not (client.state_dir / "models" / "v00001").exists()


def test_two_digests_for_one_version_or_a_malformed_entry_stop_the_client_cleanly(
    tmp_path,
) -> None:
    from fedlora import events as ev

    # Arrange: the coordinator signs a second, different publication of version 1.
    _, fed = _finished_federation(tmp_path)
    fed.engine.audit.record(ev.GlobalPublished(version=1, global_digest="00" * 32))
    client = fed.clients["bank-b"]
    # Act / Assert: the client that already kept v1 refuses the contradiction (and records it).
    with pytest.raises(VerificationError, match="two different global adapters as version 1"):
        client.keep_models(1)
    assert client.member.ledger.refusals()[-1]["what"] == "global adapter"
    # A malformed digest in a signed entry: a one-line refusal, not a crash.
    _, fed = _finished_federation(tmp_path / "again")
    fed.engine.audit.append("global_published", version=2, global_digest="zz")
    with pytest.raises(VerificationError, match="has no valid global digest"):
        fed.clients["bank-a"].keep_models(1)
    # A signed end of the federation that names no final digest: refused, nothing marked final.
    _, fed = _finished_federation(tmp_path / "unnamed")
    fed.engine.audit.append("federation_finished", rounds=1, global_version=1)
    client = fed.clients["bank-a"]
    with pytest.raises(VerificationError, match="has no valid global digest"):
        client.keep_models(1)


def test_only_the_newest_end_of_a_federation_is_final(tmp_path) -> None:
    # Arrange: a finished one-round federation, extended by an accepted change to two rounds.
    layout, _ = _finished_federation(tmp_path)
    engine = _restart(layout, accept=True, federated_learning={"rounds": 2})
    clients = {pid: _client(layout, engine, pid) for pid in layout.client_configs}
    for client in clients.values():
        client.trainer = _given()
    fed = InProcessFederation(engine, clients)
    # Act: round 2 runs; every client keeps v2.
    fed.run_round()
    assert engine.finished
    # Assert: v2 is final, v1 no longer is.
    for client in clients.values():
        key = client.member.coordinator_key
        assert verify_kept(client.state_dir, client.config.federation_id, key, 2).final
        assert not verify_kept(client.state_dir, client.config.federation_id, key, 1).final


def test_a_privacy_threshold_cannot_be_lowered_even_when_changes_are_accepted(tmp_path) -> None:
    layout, _ = _finished_federation(tmp_path)
    with pytest.raises(ConfigError, match="participant_threshold: 3 → 2 would lower a privacy"):
        _restart(
            layout,
            accept=True,
            federated_learning={"rounds": 2, "participant_threshold": 2},
        )


def test_a_setting_an_older_log_never_recorded_needs_an_explicit_acceptance() -> None:
    from fedlora.coordinator._settings import check_changes, differences

    recorded = {"federated_learning.rounds": 3, "codec.clip": 1.0}
    current = {**recorded, "codec.max_weight": 1}
    changes = differences(recorded, current)
    assert changes == {"codec.max_weight": [None, 1]}
    with pytest.raises(ConfigError, match="--accept-config-change"):
        check_changes(changes, accept=False, state_dir="s", round_number=1)
    check_changes(changes, accept=True, state_dir="s", round_number=1)  # recorded from now on


def test_a_restarted_client_reads_only_the_log_entries_it_has_not_read(tmp_path) -> None:
    # Arrange: a finished one-round federation, extended to two; bank-a restarts (a new keeper
    # from its files) and counts which entries it asks for.
    from fedlora.client._models import ModelKeeper

    layout, first = _finished_federation(tmp_path)
    read = first.clients["bank-a"].member.models.scanned
    assert read > 0
    engine = _restart(layout, accept=True, federated_learning={"rounds": 2})
    clients = {pid: _client(layout, engine, pid) for pid in layout.client_configs}
    client = clients["bank-a"]
    assert client.member.models.scanned == read  # kept in log-scan.json
    asked: list[int] = []
    honest = client.transport.audit_entries

    def counting(start, limit):  # type: ignore[no-untyped-def]
        asked.append(start)
        return honest(start, limit)

    client.transport.audit_entries = counting  # type: ignore[method-assign]
    # Act: it joins (and reads the log before anything is sent), then round 2 runs.
    fed = InProcessFederation(engine, clients)
    fed.run_round()
    # Assert: it read on from where it was, and kept v2 as final.
    assert asked and min(asked) == read
    assert verify_kept(
        client.state_dir, client.config.federation_id, client.member.coordinator_key, 2
    ).final
    # A scan file that is not this log's (here: a leaf altered) is forgotten and the log is read
    # again from its start; nothing is blamed on the coordinator.
    scan = client.state_dir / "log-scan.json"
    doc = json.loads(scan.read_text())
    plain = next(i for i in range(len(doc["leaves"]) // 64) if str(i) not in doc["entries"])
    leaves = bytearray(bytes.fromhex(doc["leaves"]))
    leaves[32 * plain : 32 * plain + 32] = b"\x00" * 32  # a leaf no kept entry vouches for
    doc["leaves"] = leaves.hex()
    scan.write_text(json.dumps(doc))
    client.member.models = ModelKeeper(
        client.state_dir, client.config.federation_id, client.member.coordinator_key
    )
    engine.audit.append("note", text="one more entry")  # something new to read
    asked.clear()
    client.keep_models(2)
    assert asked[0] > 0 and asked[-1] == 0
    assert json.loads(scan.read_text())["leaves"] != doc["leaves"]


def test_a_restart_from_other_initial_arrays_is_refused_before_anything_is_written(
    tmp_path,
) -> None:
    # Arrange: a federation whose version 0 is given (as on Flower), then stopped.
    layout = _layout(tmp_path)
    config = load_coordinator_config(layout.coordinator_config)
    start = np.linspace(-1, 1, N).astype(np.float32)
    engine = build_engine(config, clock=Clock(), initial=start)
    assert np.array_equal(engine.store.load_global(0), start)
    # Act / Assert: the same start restarts; another is refused, naming the cause, and the
    # refused restart wrote nothing.
    size = build_engine(config, clock=Clock(), initial=start).audit.size
    with pytest.raises(ConfigError, match="started from other initial arrays"):
        build_engine(config, clock=Clock(), initial=start + 1)
    assert build_engine(config, clock=Clock(), initial=start).audit.size == size + 1


def test_a_replayed_global_model_never_gets_the_same_delta_twice(tmp_path) -> None:
    """A coordinator that makes a client train again from the same global model (the same
    round served twice, across a restart of the client, or a failed round's successor) could
    difference aggregates of fixed deltas and solve for each client's. Every training run draws
    its own batches, so the same client, model and round give a different delta each time."""
    layout = _layout(tmp_path, save_plaintext_deltas=True)
    engine = build_engine(load_coordinator_config(layout.coordinator_config), clock=Clock())
    config = load_client_config(layout.client_configs["bank-a"])

    def train_round_1() -> np.ndarray:  # a fresh process each time: only the disk remembers
        client = Client(
            config, console=Console(quiet=True), transport=InProcessTransport(engine, "bank-a")
        )
        client.join()
        status = client.transport.round_status()
        assert status.round == 1 and status.global_version == 0
        client.seal(status)
        return np.load(config.state_dir / "deltas" / "round-00001.npy")

    for pid in ("bank-a", "bank-b", "hospital-c"):  # round 1 opens once three have joined
        Client(
            load_client_config(layout.client_configs[pid]),
            console=Console(quiet=True),
            transport=InProcessTransport(engine, pid),
        ).join()
    engine.tick()
    first, again = train_round_1(), train_round_1()
    assert np.abs(first).max() > 0
    # The attacker's differencing leaves a residue as large as a delta, not zero.
    assert np.linalg.norm(first - again) > 0.1 * np.linalg.norm(first)
    # The seeds differ by run; a fresh state folder reproduces the first run (benchmarks pair
    # their plaintext and encrypted federations on this).
    from fedlora.client._contributor import sampler_seed

    seeds = {sampler_seed(0, "f", "bank-a", 1, run) for run in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert sampler_seed(0, "f", "bank-a", 1, 0) == sampler_seed(0, "f", "bank-a", 1, 0)
    assert sampler_seed(0, "f", "bank-a", 1, 0) != sampler_seed(0, "f", "bank-b", 1, 0)


def test_a_receipt_issued_again_after_a_restart_signs_the_same_time(tmp_path) -> None:
    """One clock: the engine's. The audit log stamps entries with it, and a receipt re-issued by
    a restarted coordinator (rebuilt from the log) signs what the original signed."""
    layout = _layout(tmp_path)
    clock = Clock()
    config = load_coordinator_config(layout.coordinator_config)
    engine = build_engine(config, clock=clock)
    clients = {pid: _client(layout, engine, pid) for pid in ("bank-a", "bank-b", "hospital-c")}
    for c in clients.values():
        c.join()
    engine.tick()
    client = clients["bank-a"]
    sent = client.seal(client.transport.round_status())
    first = client.transport.upload_contribution(sent.header, sent.records, None)
    entry = json.loads(engine.audit.entries(first.log_index, 1)[0])
    assert entry["time_ms"] == int(clock.now * 1000) == first.received_at_ms
    clock.now += 30
    restarted = build_engine(config, clock=clock)
    again = InProcessTransport(restarted, "bank-a").upload_contribution(
        sent.header, sent.records, None
    )
    assert again.duplicate and again.received_at_ms == first.received_at_ms
    assert again.signature == first.signature and again.log_index == first.log_index
