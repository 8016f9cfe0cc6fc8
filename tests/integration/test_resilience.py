"""Crashes, restarts, signals, bad configs and hostile manifests — real processes and files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from fedlora.audit import read_log_files, verify_log
from fedlora.client import Client
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.crypto import encrypt_batch
from fedlora.errors import ProtocolError, VerificationError
from fedlora.protocol import ALLOWED, Message, Stage, check_message, check_task
from fedlora.v1 import common_pb2, federation_pb2
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation

BITS = 512


def _coordinator_command(layout) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        sys.executable,
        "-m",
        "fedlora",
        "coordinator",
        "--config",
        str(layout.coordinator_config),
    ]


def _start(layout, log):  # type: ignore[no-untyped-def]
    """Start the coordinator as its own process; learn the port it bound from its log (the
    first start binds port 0 and the configs are then pointed at it; restarts reuse it)."""
    path = Path(log.name)
    seen = path.stat().st_size  # a restart appends to the same log: read only its own lines
    proc = subprocess.Popen(
        _coordinator_command(layout),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bound = re.findall(r"on port (\d+) \(", path.read_bytes()[seen:].decode(errors="replace"))
        if bound and int(bound[-1]) and (layout.port in (0, int(bound[-1]))):
            if layout.port == 0:
                layout.use_port(int(bound[-1]))
            return proc
        assert proc.poll() is None, "coordinator exited during start-up"
        time.sleep(0.1)
    raise AssertionError("coordinator did not start")


def test_kill_9_mid_round_then_restart_keeps_every_acknowledged_contribution(tmp_path) -> None:
    # Arrange: round 1 needs all five; two contribute and get receipts.
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=1,
        participant_threshold=5,
        aggregation_frequency=5,
        min_clients=1,
    )
    state = load_coordinator_config(layout.coordinator_config).state_dir
    with open(tmp_path / "coordinator.log", "ab") as log:
        proc = _start(layout, log)
        receipts = {
            pid: h.upload(layout, pid, *h.contribution(layout, pid, 1))
            for pid in ("bank-a", "hospital-c")
        }
        # Act: kill -9, no chance to clean up; restart on the same state folder.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = _start(layout, log)
        try:
            status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
            assert status.round == 1 and status.contributions == 2 and status.contributed
            results = h.run_clients(layout)  # the other three contribute; all five decrypt
            # The federation's end is an event, not an exit: the coordinator still serves.
            time.sleep(1.0)
            assert proc.poll() is None
            final = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
            assert final.stage == common_pb2.ROUND_STAGE_FINISHED and final.global_version == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    # Assert: the round closed with the two early contributions in it, and the log verifies.
    assert results == {pid: 0 for pid in layout.client_configs}
    summary = verify_log(*read_log_files(state)[:2], bytes.fromhex(layout.coordinator_public_key))
    closed = next(e for e in summary.events if e["event"] == "round_closed")
    assert {"bank-a", "hospital-c"} <= set(closed["participants"]) and len(
        closed["participants"]
    ) == 5
    accepted = {
        e["client"]: e["index"] for e in summary.events if e["event"] == "contribution_accepted"
    }
    assert all(accepted[pid] == r.log_index for pid, r in receipts.items())
    assert any(
        e["event"] == "coordinator_restarted" and e["contributions"] == ["bank-a", "hospital-c"]
        for e in summary.events
    )


def test_sigterm_shuts_down_gracefully(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    with open(tmp_path / "coordinator.log", "ab") as log:
        proc = _start(layout, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "shutting down" in (tmp_path / "coordinator.log").read_text()


def test_a_bad_config_exits_non_zero_before_binding(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    text = layout.coordinator_config.read_text().replace("rounds: 1", "rounds: 0")
    layout.coordinator_config.write_text(text)
    out = subprocess.run(
        _coordinator_command(layout),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "federated_learning.rounds: must be between 1" in out.stderr
    assert "on port" not in out.stderr + out.stdout  # it never bound a port


def test_a_port_in_use_is_one_line_and_nothing_is_written(tmp_path) -> None:
    # Arrange: another process holds the port the config names.
    import socket

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    layout.use_port(port)
    state = load_coordinator_config(layout.coordinator_config).state_dir
    try:
        # Act
        out = subprocess.run(
            _coordinator_command(layout), capture_output=True, text=True, timeout=60
        )
    finally:
        holder.close()
    # Assert: one line naming the address and the fix; no audit entry, no round opened.
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"fedlora: error: server.listen: 127.0.0.1:{port} is in use by another process "
        "(another coordinator?); stop it or choose another port"
    ]
    assert not (state / "audit" / "entries.log").exists()


def test_a_second_coordinator_on_one_state_folder_is_refused(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    with open(tmp_path / "coordinator.log", "ab") as log:
        proc = _start(layout, log)
        try:
            config = load_coordinator_config(layout.coordinator_config)
            entries = (config.state_dir / "audit" / "entries.log").read_bytes()
            other = tmp_path / "other.yaml"  # same state folder, another port
            other.write_text(layout.coordinator_config.read_text().replace(f":{layout.port}", ":0"))
            out = subprocess.run(
                [*_coordinator_command(layout)[:-1], str(other)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 2
            assert f"another coordinator (pid {proc.pid}) is using the state folder" in out.stderr
            assert "Traceback" not in out.stderr
            assert (config.state_dir / "audit" / "entries.log").read_bytes() == entries
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_private_keys_readable_by_others_are_refused_with_the_fix(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    key = tmp_path / "keys" / "coordinator.ed25519"
    key.chmod(0o644)
    out = subprocess.run(_coordinator_command(layout), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"run: chmod 600 {key}" in out.stderr and "mode 644" in out.stderr


def test_a_client_refuses_to_decrypt_anything_but_a_verified_aggregate(tmp_path) -> None:
    # Arrange: a live federation in round 1, three real contributions.
    layout = prepare_federation(
        tmp_path, bits=BITS, rounds=1, participant_threshold=3, round_timeout_s=300
    )
    running = h.serve(layout)
    try:
        client = Client(
            load_client_config(layout.client_configs["bank-a"]), console=Console(quiet=True)
        )
        client.join()
        key = h.threshold_key(layout)
        width = (key.nsquare.bit_length() + 7) // 8
        parts = {
            pid: h.contribution(layout, pid, 1) for pid in ("bank-b", "hospital-c", "hospital-d")
        }
        cts = {
            pid: [int.from_bytes(d[i : i + width], "big") for i in range(0, len(d), width)]
            for pid, (_, d) in parts.items()
        }
        product = [1] * len(next(iter(cts.values())))
        for v in cts.values():
            product = [a * b % key.nsquare for a, b in zip(product, v)]

        def task(pids, aggregate_cts, data):  # type: ignore[no-untyped-def]
            from fedlora.crypto import ciphertext_vector_digest
            from fedlora.protocol import DecryptionManifest, DecryptionTask, ManifestEntry

            entries = tuple(
                ManifestEntry(
                    client_id=p,
                    weight=parts[p][0].weight,
                    record_count=parts[p][0].record_count,
                    ciphertexts_digest=parts[p][0].ciphertexts_digest,
                    signature=parts[p][0].signature,
                    knowledge_proof=parts[p][0].knowledge_proof,
                )
                for p in pids
            )
            checkpoint = client.transport.checkpoint()
            manifest = DecryptionManifest(
                federation_id="fedlora-demo",
                round_number=1,
                value_count=parts[pids[0]][0].value_count,
                codec=client.fed.codec,
                key_fingerprint=key.fingerprint,
                aggregate_digest=ciphertext_vector_digest(key.paillier, aggregate_cts),
                record_count=len(aggregate_cts),
                global_version=status.global_version,
                global_digest=status.global_digest,
                entries=entries,
                ticket_signatures=(),
                checkpoint=checkpoint,
                aggregated_index=checkpoint.tree_size - 1,  # where the attacker would log it
            )
            return DecryptionTask(
                manifest, {p: bytes(d) for p, d in data.items()}, blob(aggregate_cts)
            )

        data = {p: d for p, (_, d) in parts.items()}
        blob = lambda v: b"".join(c.to_bytes(width, "big") for c in v)  # noqa: E731
        assert client.holder is not None
        # Act / Assert: the honest aggregate of three verified contributions is accepted...
        status = client.transport.round_status()
        checked = check_task(client.holder.policy, task(list(parts), product, data), 1)
        assert checked.ciphertexts == product and len(checked.ticket) == 32
        # ...a single contribution passed off as an aggregate is not (policy.min_participants)...
        single = {"bank-b": data["bank-b"]}
        with pytest.raises(VerificationError, match=r"policy\.min_participants requires"):
            check_task(client.holder.policy, task(["bank-b"], cts["bank-b"], single), 1)
        # ...nor an "aggregate" that is not the product of the listed contributions...
        other = encrypt_batch(key.paillier, [5] * len(product))
        with pytest.raises(VerificationError, match="not the product"):
            check_task(client.holder.policy, task(list(parts), other, data), 1)
        # ...nor one with a contribution whose ciphertexts differ from what its owner signed.
        forged = dict(data, **{"hospital-d": blob(other)})
        with pytest.raises(VerificationError, match="not signed by that peer's key"):
            check_task(client.holder.policy, task(list(parts), product, forged), 1)
    finally:
        running.stop(grace=1)


def test_every_stage_message_pair_is_checked() -> None:
    for stage in Stage:
        for message in Message:
            if message in ALLOWED[stage]:
                check_message(stage, message, 1)
            else:
                with pytest.raises(ProtocolError, match=f"round 1 is {stage.value}"):
                    check_message(stage, message, 1)
    assert Message.CONTRIBUTION in ALLOWED[Stage.COLLECTING]
    assert Message.CONTRIBUTION not in ALLOWED[Stage.DECRYPTING]
    assert Message.PARTIAL_DECRYPTION not in ALLOWED[Stage.COLLECTING]


def test_audit_verify_command_names_a_tampered_entry(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, aggregation_frequency=5)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        h.run_clients(layout)
    finally:
        running.stop(grace=1)
    key = layout.coordinator_public_key
    entries = config.state_dir / "audit" / "entries.log"

    def verify():  # type: ignore[no-untyped-def]
        command = [
            sys.executable,
            "-m",
            "fedlora",
            "audit",
            "verify",
            str(config.state_dir),
            "--public-key",
            key,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    ok = verify()
    assert ok.returncode == 0 and "audit log OK" in ok.stdout
    lines = entries.read_bytes().split(b"\n")
    doc = json.loads(lines[4])
    flipped = bytearray(lines[4])
    flipped[-2] ^= 0x01  # one bit of one byte inside entry 4
    lines[4] = bytes(flipped)
    entries.write_bytes(b"\n".join(lines))
    bad = verify()
    assert bad.returncode == 1
    assert "INVALID" in bad.stdout and "audit entry 4" in bad.stdout, (doc, bad.stdout)
