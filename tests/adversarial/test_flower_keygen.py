"""Key generation without a dealer on Flower: the ServerApp relays the holders' rounds through
Flower messages, each holder's node keeps its run sealed between messages, and every member
accepts the key only with a quorum of holders' signatures. The grid is in-process
(tests/adversarial/flower_grid.py); the mods, the engine, the cryptography and the disk are real.
The attacker: a ServerApp (or SuperLink) that alters a sealed message in transit, and one that
hands the members another key than the holders generated. And a re-key over Flower: a holder
revoked, the others generate a new key before the next round, only when the operator accepts the
change."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from flwr.app import Array

from fedlora.ceremony._generate import check_logged_keys
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.crypto import ThresholdPublicKey, generate_threshold_key
from fedlora.errors import ConfigError
from fedlora.flower import _wire as w
from tests.adversarial import flower_grid as g


def _keys(layout):  # type: ignore[no-untyped-def]
    """Every member's key file (None where it has none)."""
    out = {}
    for pid, path in layout.client_configs.items():
        key = load_client_config(path).keys.threshold_public_key
        out[pid] = ThresholdPublicKey.from_json(key.read_bytes()) if key.exists() else None
    return out


def test_the_holders_generate_the_key_over_flower_then_rounds_close(tmp_path) -> None:
    # Arrange: four banks, no key anywhere.
    layout = g.federation(tmp_path, generate_key=True)
    config = load_coordinator_config(layout.coordinator_config)
    assert not config.keys.threshold_public_key.exists()
    grid = g.Grid(layout.root)
    # Act: the ServerApp's usual start.
    g.strategy(layout).start(grid, g.initial_arrays(), num_rounds=2)
    # Assert: one generated key everywhere; the rounds closed under it; the log proves it.
    key = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert key.theta is not None and set(_keys(layout).values()) == {key}
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    events = g.events(layout)
    kinds = [e["event"] for e in events]
    assert kinds.index("key_generated") < kinds.index("federation_started")
    assert len(check_logged_keys(events, config.federation_id)) == 1
    for path in layout.client_configs.values():  # no run state left behind on a node
        assert not (load_client_config(path).state_dir / "keygen-run.sealed").exists()


def test_a_server_altering_a_sealed_message_is_blamed_and_no_key_is_kept(tmp_path) -> None:
    # Arrange: the relay flips a byte of what bank-00 sends bank-01, in every attempt.
    layout = g.federation(tmp_path, generate_key=True)
    grid = g.Grid(layout.root)

    def tamper(node, message):  # type: ignore[no-untyped-def]
        content = message.content
        if node == g.FIRST_ID + 1 and w.scalar(content, "phase") == "round":
            blobs = content.array_records[w.BLOBS]
            data = bytearray(w.blob(content, "in.bank-00"))
            data[10] ^= 1
            blobs["in.bank-00"] = Array(np.frombuffer(bytes(data), dtype=np.uint8).copy())
        return message

    grid.tamper = tamper
    # Act / Assert: the run stops before round 1 with the reason; the relay is blamed each time.
    with pytest.raises(ConfigError, match="could not generate the key in 3 attempts"):
        g.strategy(layout).start(grid, g.initial_arrays(), num_rounds=2)
    aborted = [e for e in g.events(layout) if e["event"] == "keygen_aborted"]
    assert len(aborted) == 3
    assert all(e["party"] == "relay" and e["reported_by"] == "bank-01" for e in aborted)
    kinds = [e["event"] for e in g.events(layout)]
    assert "key_generated" not in kinds and "federation_started" not in kinds
    config = load_coordinator_config(layout.coordinator_config)
    assert not config.keys.threshold_public_key.exists()
    assert set(_keys(layout).values()) == {None}


def test_members_refuse_a_key_the_holders_did_not_sign(tmp_path) -> None:
    # Arrange: the server hands every member a key of its own in place of the generated one.
    layout = g.federation(tmp_path, generate_key=True)
    grid = g.Grid(layout.root)
    forged = generate_threshold_key(512, 2, [f"bank-{i:02d}" for i in range(4)]).public_key

    def tamper(node, message):  # type: ignore[no-untyped-def]
        if w.scalar(message.content, "phase") == "outcome":
            blobs = message.content.array_records[w.BLOBS]
            blobs["key"] = Array(np.frombuffer(forged.to_json(), dtype=np.uint8).copy())
        return message

    grid.tamper = tamper
    # Act: the server goes on (it has the genuine key); the members do not take the forgery.
    g.strategy(layout).start(grid, g.initial_arrays(), num_rounds=1)
    # Assert: no member wrote a key (the holders' signatures are not over the forgery), so
    # none joined.
    assert set(_keys(layout).values()) == {None}
    refusals = [r for n in grid.ids for r in grid.refusals(n)]
    assert sum("carries 0 valid holder signatures, 3 are required" in r for r in refusals) == 4
    assert ("round_closed", 1) not in g.outcomes(layout)


REMAINING = ["bank-00", "bank-01", "bank-02"]


def _revoked(tmp_path):  # type: ignore[no-untyped-def]
    """The four generate a 2-of-4 key over Flower and close round 1 under it; then bank-03 is
    revoked and leaves the holders (the coordinator's YAML and the three others' say so), with
    one more round. Returns the layout, the grid and the old key."""
    layout = g.federation(tmp_path, rounds=1, generate_key=True)
    grid = g.Grid(layout.root)
    g.strategy(layout).start(grid, g.initial_arrays(), num_rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    old = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert g.outcomes(layout) == [("round_closed", 1)]
    remaining = REMAINING
    doc = yaml.safe_load(layout.coordinator_config.read_text())
    doc["keys"]["generation"]["holders"] = remaining
    doc["federated_learning"]["rounds"] = 2
    next(p for p in doc["parties"] if p["id"] == "bank-03")["revoked"] = True
    layout.coordinator_config.write_text(yaml.safe_dump(doc, sort_keys=False))

    def member(doc):  # type: ignore[no-untyped-def]
        gen = doc["keys"]["generation"]
        gen["holders"] = [x for x in gen["holders"] if x["id"] in remaining]

    for pid in remaining:
        g.edit_client(layout, pid, member)
    return layout, grid, old


def test_revoking_a_holder_rekeys_over_flower_and_the_next_round_closes(tmp_path) -> None:
    # Arrange: a 2-of-4 key over Flower, round 1 closed; bank-03 revoked and out of the holders.
    layout, grid, old = _revoked(tmp_path)
    config = load_coordinator_config(layout.coordinator_config)
    remaining = REMAINING
    # Without the operator's acceptance nothing starts: no attempt, the key unchanged.
    with pytest.raises(ConfigError, match="run config fedlora-accept-config-change=true"):
        g.strategy(layout).start(grid, g.initial_arrays(), num_rounds=1)
    assert [e for e in g.events(layout) if e["event"] == "keygen_started"][-1]["attempt"] == 1
    accepted = {"fedlora-accept-config-change": True}
    g.strategy(layout, run_config=accepted).start(grid, g.initial_arrays(), num_rounds=1)
    # Assert: round 2 closed under a new 2-of-3 key the three hold, which every one of them
    # accepted (signed by a quorum of the old key's holders too); the old key and shares are
    # kept beside the new ones; the log records the re-key and verifies key by key.
    assert g.outcomes(layout) == [("round_closed", 1), ("round_closed", 2)]
    new = ThresholdPublicKey.from_json(config.keys.threshold_public_key.read_bytes())
    assert new.party_ids == tuple(remaining) and new.fingerprint != old.fingerprint
    keys = _keys(layout)
    assert {keys[pid] for pid in remaining} == {new} and keys["bank-03"] == old
    prefix = old.fingerprint.hex()[:16]
    for pid in remaining:
        member_keys = load_client_config(layout.client_configs[pid]).keys
        for path in (member_keys.threshold_public_key, member_keys.key_share):
            assert path.with_name(f"{path.stem}.{prefix}{path.suffix}").exists(), path
    events = g.events(layout)
    rekey = [e for e in events if e["event"] == "key_generated"][-1]
    assert rekey["replaces"] == old.fingerprint.hex()
    assert sorted(rekey["signatures"]) == remaining
    assert len(check_logged_keys(events, config.federation_id)) == 2
    closed = [e for e in events if e["event"] == "round_closed"]
    assert "bank-03" not in closed[1]["participants"]


def test_members_refuse_a_rekey_without_a_quorum_of_the_old_keys_holders(tmp_path) -> None:
    # Arrange: as above; the server drops one holder's signature from the re-key's outcome, so
    # it lacks the 3 of the old key's 4 holders a re-key needs (and the new key's quorum).
    layout, grid, old = _revoked(tmp_path)

    def tamper(node, message):  # type: ignore[no-untyped-def]
        if w.scalar(message.content, "phase") == "outcome":
            del message.content.array_records[w.BLOBS]["sig.bank-02"]
        return message

    grid.tamper = tamper
    accepted = {"fedlora-accept-config-change": True}
    # Act: the ServerApp re-keys and hands the members the thinned outcome.
    g.strategy(layout, run_config=accepted).start(grid, g.initial_arrays(), num_rounds=1)
    # Assert: no member took the new key (each keeps the old one, and no round closes under a
    # key its members refused); each refusal names the missing signatures.
    assert set(_keys(layout).values()) == {old}
    refusals = [r for n in grid.ids for r in grid.refusals(n)]
    assert sum("valid holder signatures" in r for r in refusals) == len(REMAINING), refusals
    assert ("round_closed", 2) not in g.outcomes(layout)
