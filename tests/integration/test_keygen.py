"""Key generation without a dealer over the coordinator's real gRPC service (mTLS, nothing mocked):
three holders generate a 2-of-3 key through the coordinator, every member accepts it only with a
quorum of holders' signatures, and the federation then runs its rounds under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fedlora._setup import Layout
from fedlora.audit import read_log_files, verify_log
from fedlora.ceremony._generate import check_logged_keys
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.coordinator import create_server
from fedlora.crypto import ThresholdPublicKey, open_key_share
from fedlora.errors import ConfigError, VerificationError
from fedlora.events import KeyGenerated, KeygenStarted, parse_event
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation


def _events(config_path):
    config = load_coordinator_config(config_path)
    entries, _, _ = read_log_files(config.state_dir / "audit")
    return [json.loads(line) for line in entries.splitlines() if line]


def test_holders_generate_the_key_through_the_coordinator_then_rounds_close(tmp_path) -> None:
    # Arrange: no key anywhere; every party holds a share of the key they will generate.
    layout = prepare_federation(
        tmp_path,
        bits=512,
        decryption_threshold=2,
        participant_threshold=2,
        rounds=2,
        min_clients=3,
        generate_key=True,
    )
    config = load_coordinator_config(layout.coordinator_config)
    assert not config.keys.threshold_public_key.exists()
    running = h.serve(layout)
    try:
        assert not running.ready.is_set()  # serving Keygen only, until the key exists
        # Act: the clients start as they would for a dealt key.
        results = h.run_clients(layout, timeout=300)
        assert results == {pid: 0 for pid in layout.client_configs}, results
    finally:
        running.stop(grace=1)
    # Assert: one key, the same in the coordinator's file and every member's; each share opens.
    key_bytes = config.keys.threshold_public_key.read_bytes()
    key = ThresholdPublicKey.from_json(key_bytes)
    assert key.theta is not None and key.party_ids == tuple(layout.client_configs)
    for pid, path in layout.client_configs.items():
        member = load_client_config(path)
        assert ThresholdPublicKey.from_json(member.keys.threshold_public_key.read_bytes()) == key
        x25519 = load_pem_private_key(
            (layout.root / "keys" / f"{pid}.x25519").read_bytes(), password=None
        )
        share = open_key_share(
            member.keys.key_share.read_bytes(), x25519, party_id=pid, public_key=key
        )
        assert share.index == key.party_ids.index(pid) + 1
    # The log: the attempt, the key with its transcript digest and every holder's signature,
    # before federation_started (which names the same key), and the rounds closed under it.
    events = _events(layout.coordinator_config)
    kinds = [e["event"] for e in events]
    started = parse_event(events[kinds.index("keygen_started")])
    generated = parse_event(events[kinds.index("key_generated")])
    assert isinstance(started, KeygenStarted) and started.holders == list(key.party_ids)
    assert isinstance(generated, KeyGenerated)
    assert generated.key_fingerprint == key.fingerprint.hex()
    assert sorted(generated.signatures) == sorted(key.party_ids)
    assert kinds.index("key_generated") < kinds.index("federation_started")
    fed = events[kinds.index("federation_started")]
    assert fed["key_fingerprint"] == key.fingerprint.hex()
    assert kinds.count("round_closed") == 2
    entries, checkpoints, _ = read_log_files(config.state_dir / "audit")
    verify_log(entries, checkpoints, bytes.fromhex(layout.coordinator_public_key))


def test_keys_generate_runs_the_members_side_on_its_own(tmp_path) -> None:
    # Arrange: a federation whose three holders have no key yet, and its coordinator serving.
    layout = prepare_federation(
        tmp_path, bits=512, decryption_threshold=2, participant_threshold=2, generate_key=True
    )
    running = h.serve(layout)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        # Act: each holder runs the command, as its operator would, at the same time.
        procs = {
            pid: subprocess.Popen(
                ["fedlora", "keys", "generate", "--config", str(path)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for pid, path in layout.client_configs.items()
        }
        outputs = {pid: p.communicate(timeout=300)[0] for pid, p in procs.items()}
        engine = running.wait_ready(30)
        again = subprocess.run(
            ["fedlora", "keys", "generate", "--config", str(layout.client_configs["bank-a"])],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        running.stop(grace=1)
    # Assert: one line each saying what was accepted; the coordinator started under that key.
    for pid, out in outputs.items():
        assert procs[pid].returncode == 0, out
        assert "accepted; " + pid + " holds a share" in out, out
        assert "Traceback" not in out
    assert engine.key is not None
    fingerprint = engine.key.fingerprint.hex()[:16]
    assert all(fingerprint in out for out in outputs.values())
    assert again.returncode == 0 and "exists already" in again.stderr + again.stdout


def _four_banks(root: Path) -> tuple[list[tuple[str, str]], Layout]:
    """Four banks whose holders generate a 2-of-n key (all four unless a test edits the
    holders), one round, every bank needed to open it."""
    parties = [("bank-a", "bank"), ("bank-b", "bank"), ("bank-c", "bank"), ("bank-d", "bank")]
    layout = prepare_federation(
        root,
        bits=512,
        parties=parties,
        decryption_threshold=2,
        participant_threshold=2,
        rounds=1,
        min_clients=4,
        generate_key=True,
    )
    return parties, layout


def _last_round(running, layout: Layout, **kw) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The members (all, or ``parties``) run against ``running`` until the federation finishes;
    their exit codes. The coordinator is stopped whatever happens."""
    try:
        codes = h.run_clients(layout, timeout=300, **kw)
        engine = running.wait_ready(10)
        assert engine.finished
    finally:
        running.stop(grace=1)
    return codes


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_revoking_a_holder_then_rekeying_lets_the_next_round_close(tmp_path) -> None:
    # Arrange: four holders of a generated 2-of-4 key; round 1 closes under it.
    parties, layout = _four_banks(tmp_path)
    running = h.serve(layout)
    try:
        first = h.run_clients(layout, timeout=300)
    finally:
        running.stop(grace=1)
    assert first == {pid: 0 for pid, _ in parties}, first
    config = load_coordinator_config(layout.coordinator_config)
    old_key = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    before = _events(layout.coordinator_config)
    # Act: bank-d is revoked and leaves the holders (coordinator and the three others say so);
    # one more round. The coordinator restarts with the change accepted; the three re-key.
    remaining = ["bank-a", "bank-b", "bank-c"]

    def coordinator(doc):  # type: ignore[no-untyped-def]
        doc["keys"]["generation"]["holders"] = remaining
        doc["federated_learning"]["rounds"] = 2
        next(p for p in doc["parties"] if p["id"] == "bank-d")["revoked"] = True

    def member(doc):  # type: ignore[no-untyped-def]
        gen = doc["keys"]["generation"]
        gen["holders"] = [x for x in gen["holders"] if x["id"] in remaining]

    _edit(layout.coordinator_config, coordinator)
    for pid in remaining:
        _edit(layout.client_configs[pid], member)
    # Without the operator's acceptance the coordinator does not start: no attempt is made.
    with pytest.raises(ConfigError, match="start with --accept-config-change to re-key"):
        create_server(load_coordinator_config(layout.coordinator_config), port=layout.port)
    assert _events(layout.coordinator_config) == before
    running = create_server(
        load_coordinator_config(layout.coordinator_config),
        port=layout.port,
        accept_config_change=True,
    )
    assert not running.ready.is_set()  # the new key first
    second = _last_round(running, layout, parties=remaining)
    # Assert: round 2 closed under a new 2-of-3 key held by the three; the log records the
    # re-key (signed by the three, naming the key it replaces) and the accepted change; round
    # 1's entries are untouched and the whole log verifies; the old key is kept beside the new.
    assert second == {pid: 0 for pid in remaining}, second
    new_key = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert new_key.party_ids == tuple(remaining) and new_key.fingerprint != old_key.fingerprint
    kept = config.keys.threshold_public_key.with_name(
        f"threshold-key.{old_key.fingerprint.hex()[:16]}.json"
    )
    assert ThresholdPublicKey.from_json(kept.read_bytes()) == old_key
    events = _events(layout.coordinator_config)
    assert events[: len(before)] == before
    rekey = [e for e in events if e["event"] == "key_generated"][-1]
    assert rekey["replaces"] == old_key.fingerprint.hex()
    assert rekey["key_fingerprint"] == new_key.fingerprint.hex()
    assert sorted(rekey["signatures"]) == remaining
    change = next(e for e in events if e["event"] == "config_changed")
    assert change["changes"]["keys.threshold_public_key"] == [
        old_key.fingerprint.hex(),
        new_key.fingerprint.hex(),
    ]
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == [1, 2]
    assert "bank-d" not in closed[1]["participants"]
    for pid in remaining:
        member_config = load_client_config(layout.client_configs[pid])
        assert (
            ThresholdPublicKey.from_json(member_config.keys.threshold_public_key.read_bytes())
            == new_key
        )
    entries, checkpoints, _ = read_log_files(config.state_dir / "audit")
    verify_log(entries, checkpoints, bytes.fromhex(layout.coordinator_public_key))
    # An auditor checks every key in the log: each signed by a quorum of its holders (the
    # re-key by a quorum of the old key's too); a log that drops signatures or names another
    # key is refused, naming the entry (the Merkle tree alone would not: the coordinator signs it).
    lines = check_logged_keys(events, "fedlora-demo")
    assert len(lines) == 2 and "replacing " + old_key.fingerprint.hex()[:16] in lines[1]
    index = events.index(rekey)
    thin = [dict(e) for e in events]
    thin[index]["signatures"] = {"bank-a": rekey["signatures"]["bank-a"]}
    with pytest.raises(VerificationError, match=f"audit entry {index} \\(key_generated\\)"):
        check_logged_keys(thin, "fedlora-demo")
    swapped = [dict(e) for e in events]
    started = kinds_index(swapped, "federation_started")
    swapped[started]["key_fingerprint"] = "00" * 32
    with pytest.raises(VerificationError, match="names a key the log did not generate"):
        check_logged_keys(swapped, "fedlora-demo")


def kinds_index(events, kind):  # type: ignore[no-untyped-def]
    return next(i for i, e in enumerate(events) if e["event"] == kind)


def test_a_member_that_holds_no_share_then_joins_the_holders_by_a_rekey(tmp_path) -> None:
    # Arrange: four members, three of them holders of a generated 2-of-3 key; bank-d holds no
    # share, so it only waits for the key and checks the holders' signatures.
    parties, layout = _four_banks(tmp_path)
    ids = [pid for pid, _ in parties]
    full = {
        pid: yaml.safe_load(layout.client_configs[pid].read_text())["keys"]["generation"]["holders"]
        for pid in ids
    }

    def holders(keep):  # type: ignore[no-untyped-def]
        def coordinator(doc):  # type: ignore[no-untyped-def]
            doc["keys"]["generation"]["holders"] = keep

        def member(pid):  # type: ignore[no-untyped-def]
            def change(doc):  # type: ignore[no-untyped-def]
                doc["keys"]["generation"]["holders"] = [h for h in full[pid] if h["id"] in keep]

            return change

        _edit(layout.coordinator_config, coordinator)
        for pid in ids:
            _edit(layout.client_configs[pid], member(pid))

    holders(["bank-a", "bank-b", "bank-c"])
    running = h.serve(layout)
    try:
        first = h.run_clients(layout, timeout=300)
    finally:
        running.stop(grace=1)
    assert first == {pid: 0 for pid in ids}, first
    config = load_coordinator_config(layout.coordinator_config)
    old_key = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert old_key.party_ids == ("bank-a", "bank-b", "bank-c")
    d = load_client_config(layout.client_configs["bank-d"])
    assert ThresholdPublicKey.from_json(d.keys.threshold_public_key.read_bytes()) == old_key
    assert not d.keys.key_share.exists()  # bank-d accepted the key, and holds no share of it
    # Act: bank-d becomes a holder (every configuration says so; one more round); the
    # coordinator restarts with the change accepted and the four re-key.
    holders(ids)

    def one_more_round(doc):  # type: ignore[no-untyped-def]
        doc["federated_learning"]["rounds"] = 2

    _edit(layout.coordinator_config, one_more_round)
    running = create_server(
        load_coordinator_config(layout.coordinator_config),
        port=layout.port,
        accept_config_change=True,
    )
    second = _last_round(running, layout)
    # Assert: round 2 closed under a 2-of-4 key whose shares bank-d holds too; the re-key is
    # signed by the four and replaces the old key, which every member keeps; the log verifies.
    assert second == {pid: 0 for pid in ids}, second
    new_key = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert new_key.party_ids == tuple(ids) and new_key.fingerprint != old_key.fingerprint
    x25519 = load_pem_private_key((layout.root / "keys" / "bank-d.x25519").read_bytes(), None)
    share = open_key_share(
        d.keys.key_share.read_bytes(), x25519, party_id="bank-d", public_key=new_key
    )
    assert share.index == 4
    for pid in ids:
        member = load_client_config(layout.client_configs[pid])
        assert (
            ThresholdPublicKey.from_json(member.keys.threshold_public_key.read_bytes()) == new_key
        )
        kept = member.keys.threshold_public_key.with_name(
            f"threshold-key.{old_key.fingerprint.hex()[:16]}.json"
        )
        assert ThresholdPublicKey.from_json(kept.read_bytes()) == old_key
    events = _events(layout.coordinator_config)
    rekey = [e for e in events if e["event"] == "key_generated"][-1]
    assert rekey["replaces"] == old_key.fingerprint.hex()
    assert sorted(rekey["signatures"]) == ids
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == [1, 2]
    assert sorted(closed[1]["participants"]) == ids
    entries, checkpoints, _ = read_log_files(config.state_dir / "audit")
    verify_log(entries, checkpoints, bytes.fromhex(layout.coordinator_public_key))
    assert len(check_logged_keys(events, "fedlora-demo")) == 2
