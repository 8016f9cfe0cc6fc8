"""The federation over real gRPC, mTLS and encryption: full rounds and every rejection."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedlora.audit import read_log_files, verify_log
from fedlora.certs import create_ca, issue_certificate
from fedlora.config import load_coordinator_config
from fedlora.errors import FedLoraError, VerificationError
from fedlora.v1 import common_pb2, federation_pb2
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation

BITS = 512  # test keys only; production is 2048


def _events(state_dir):
    entries, _, _ = read_log_files(state_dir)
    return [json.loads(line) for line in entries.rstrip(b"\n").split(b"\n")]


@pytest.fixture()
def federation(tmp_path):
    """A coordinator that keeps round 1 open: all five must contribute, long deadline."""
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=2,
        aggregation_frequency=5,
        participant_threshold=5,
        round_timeout_s=300,
    )
    running = h.serve(layout)
    yield layout, running
    running.stop(grace=1)


@pytest.mark.parametrize(
    ("encryption", "chunk"), [("homomorphic", None), ("homomorphic", 2), ("none", None)]
)
def test_a_full_federation_over_mtls(tmp_path, monkeypatch, encryption, chunk) -> None:
    # Arrange (chunk: partial decryptions released in chunks of that many ciphertexts, each
    # its own SubmitPartialDecryption stream)
    if chunk is not None:
        from fedlora.protocol import _decryptor

        monkeypatch.setattr(_decryptor, "PARTIAL_CHUNK", chunk)
    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=2,
        aggregation_frequency=10,
        encryption_type=encryption,
        save_plaintext_deltas=True,  # so the test can recompute the mean the hard way
    )
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        # Act
        results = h.run_clients(layout)
        receipt = tmp_path / "clients" / "hospital-c" / "receipts" / "round-00002.json"
        # The client proves its receipt against the live coordinator's signed checkpoint (Audit RPC).
        from fedlora.cli import audit as _audit_cli

        assert _audit_cli.run_prove(receipt, None, layout.client_configs["hospital-c"]) == 0
    finally:
        running.stop(grace=1)
    # Assert
    assert results == {pid: 0 for pid in layout.client_configs}
    summary = verify_log(
        *read_log_files(config.state_dir)[:2], bytes.fromhex(layout.coordinator_public_key)
    )
    kinds = [e["event"] for e in summary.events]
    assert kinds.count("round_closed") == 2 and kinds[-1] == "federation_finished"
    assert all(len(e["participants"]) == 5 for e in summary.events if e["event"] == "round_closed")
    if chunk is not None:
        firsts = {e["first_record"] for e in summary.events if e["event"] == "partial_accepted"}
        assert len(firsts) >= 2 and firsts == set(range(0, chunk * len(firsts), chunk))
    receipts = sorted((tmp_path / "clients" / "bank-a" / "receipts").glob("*.json"))
    assert len(receipts) == 2
    # Each published global minus the previous one is the weighted mean of the clients' clipped
    # deltas, within one quantization step (plus float32 storage rounding).
    clip, bits = config.codec.clip, config.codec.value_bits
    step = 2 * clip / ((1 << bits) - 1) if encryption == "homomorphic" else 0.0
    for number in (1, 2):
        globals_ = config.state_dir / "globals"
        previous = np.fromfile(globals_ / f"v{number - 1:05d}.f32", dtype="<f4").astype(np.float64)
        current = np.fromfile(globals_ / f"v{number:05d}.f32", dtype="<f4").astype(np.float64)
        deltas, weights = [], []
        for pid in layout.client_configs:
            folder = tmp_path / "clients" / pid / "deltas"
            deltas.append(np.clip(np.load(folder / f"round-{number:05d}.npy"), -clip, clip))
            weights.append(json.loads((folder / f"round-{number:05d}.json").read_text())["weight"])
        expected = sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
        tolerance = step + 4 * np.finfo(np.float32).eps * (np.abs(current).max() + 1)
        assert np.max(np.abs((current - previous) - expected)) <= tolerance
        assert np.max(np.abs(expected)) > 10 * tolerance  # the check is not vacuous


def test_health_and_reflection_answer_standard_tools(federation) -> None:
    layout, running = federation
    join = h.stub(layout, "bank-a").Join(h.join_request(layout, "bank-a"))
    assert (
        join.max_weight == running.engine.config.codec.max_weight > 1
    )  # clients need not derive it
    health = health_pb2_grpc.HealthStub(h.channel(layout, "bank-a"))
    for service in ("", "fedlora.v1.Federation", "fedlora.v1.Audit"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(h.channel(layout, "bank-a"))
    answer = next(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"fedlora.v1.Federation", "fedlora.v1.Audit", "grpc.health.v1.Health"} <= names


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_every_bad_contribution_is_rejected_precisely_and_audited(federation) -> None:
    layout, running = federation
    key = h.threshold_key(layout)
    header, data = h.contribution(layout, "bank-a", 1)

    cases = {
        "wrong round": (
            lambda: h.upload(layout, "bank-a", *h.contribution(layout, "bank-a", 2)),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        "replayed from another round": (
            lambda: h.upload(
                layout, "bank-a", *h.contribution(layout, "bank-a", 1, signed_round=7)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "wrongly signed": (
            lambda: h.upload(
                layout,
                "bank-a",
                *h.contribution(layout, "bank-a", 1, signer=Ed25519PrivateKey.generate()),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "signed by another party": (
            lambda: h.upload(
                layout,
                "bank-a",
                *h.contribution(layout, "bank-a", 1, signer=h.signing_key(layout, "bank-b")),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "malformed (data before header)": (
            lambda: h.upload(layout, "bank-a", header, data, header_first=False),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "oversized": (
            lambda: h.upload(layout, "bank-a", header, data + data),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "truncated": (
            lambda: h.upload(layout, "bank-a", header, data[:-1]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "out of range (zero)": (
            lambda: h.upload(
                layout, "bank-a", *h.contribution(layout, "bank-a", 1, ciphertexts=[0])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "out of range (shares a factor with n)": (
            lambda: h.upload(
                layout, "bank-a", *h.contribution(layout, "bank-a", 1, ciphertexts=[key.n])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "weight above max_weight": (
            lambda: h.upload(
                layout,
                "bank-a",
                *h.contribution(
                    layout, "bank-a", 1, weight=running.engine.config.codec.max_weight + 1
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    for name, (call, expected) in cases.items():
        assert _code(call) == expected, name
    # A good one is acknowledged with a signed receipt; the same again is idempotent...
    receipt = h.upload(layout, "bank-a", header, data)
    again = h.upload(layout, "bank-a", header, data)
    assert not receipt.duplicate and again.duplicate and again.log_index == receipt.log_index
    # ...and a different second contribution to the same round is refused.
    assert (
        _code(lambda: h.upload(layout, "bank-a", *h.contribution(layout, "bank-a", 1)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    rejected = [
        e for e in _events(running.engine.config.state_dir) if e["event"] == "contribution_rejected"
    ]
    # Each distinct refusal is written once; identical ones are counted (written at round end).
    assert len({e["reason"] for e in rejected}) == len(rejected)
    assert len(rejected) + running.engine.admission.limits.repeated() == len(cases) + 1
    assert any("oversized" in e["reason"] for e in rejected)


def test_a_late_contribution_is_refused(federation) -> None:
    layout, running = federation
    for pid in layout.client_configs:  # all five contribute: the round moves on to its ticket
        h.upload(layout, pid, *h.contribution(layout, pid, 1))
    deadline = time.monotonic() + 20
    while running.engine.stage.value != "ticketing" and time.monotonic() < deadline:
        time.sleep(0.05)
    status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
    assert status.stage == common_pb2.ROUND_STAGE_TICKETING
    late = h.contribution(layout, "bank-a", 1)
    assert _code(lambda: h.upload(layout, "bank-a", *late)) == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_revoked_and_foreign_identities_are_refused(tmp_path) -> None:
    layout = prepare_federation(tmp_path / "fed", bits=BITS, rounds=1, participant_threshold=3)
    text = layout.coordinator_config.read_text().replace(
        "role: bank\n", "role: bank\n  revoked: true\n", 1
    )
    layout.coordinator_config.write_text(text)  # bank-a is revoked
    running = h.serve(layout)
    try:
        issue_certificate(
            layout.root / "ca", "mallory", layout.root / "certs"
        )  # same CA, not enrolled
        create_ca(tmp_path / "other-ca")
        issue_certificate(
            tmp_path / "other-ca", "bank-b", tmp_path / "other-certs"
        )  # enrolled name, foreign CA
        join = federation_pb2.JoinRequest()
        assert (
            _code(lambda: h.stub(layout, "mallory").Join(join)) == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            _code(lambda: h.stub(layout, "bank-a").Join(join)) == grpc.StatusCode.PERMISSION_DENIED
        )
        foreign = h.stub(layout, "bank-b", cert_dir=tmp_path / "other-certs")
        assert (
            _code(lambda: foreign.Join(join, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        )  # TLS handshake refused
        joined = h.stub(layout, "bank-b").Join(h.join_request(layout, "bank-b"))
        assert joined.federation_id == "fedlora-demo"
        denied = [
            e for e in _events(running.engine.config.state_dir) if e["event"] == "access_denied"
        ]
        assert {(e["identity"], e["reason"]) for e in denied} == {
            ("mallory", "not enrolled"),
            ("bank-a", "revoked"),
        }
    finally:
        running.stop(grace=1)


def test_a_round_below_threshold_fails_cleanly_and_the_next_opens(tmp_path) -> None:
    layout = prepare_federation(
        tmp_path, bits=BITS, rounds=2, participant_threshold=4, round_timeout_s=2
    )
    running = h.serve(layout)
    try:
        h.upload(layout, "bank-a", *h.contribution(layout, "bank-a", 1))
        deadline = time.monotonic() + 20
        while (running.engine.round.number == 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        events = _events(running.engine.config.state_dir)
    finally:
        running.stop(grace=1)
    failed = next(e for e in events if e["event"] == "round_failed")
    assert failed["round"] == 1 and "below participant_threshold 4" in failed["reason"]
    assert not any(
        e["event"] in ("aggregated", "decrypted") and e.get("round") == 1 for e in events
    )
    assert any(e["event"] == "round_opened" and e["round"] == 2 for e in events)


def test_a_20_mb_contribution_streams_in_chunks(tmp_path) -> None:
    # Arrange: a plaintext-baseline federation with a 5M-parameter model (20 MB of float32), so
    # the test exercises streaming rather than encryption time; the upload path is the same.
    import numpy as np

    from fedlora.crypto import contribution_digest, records_hasher, sign_digest

    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=1,
        participant_threshold=5,
        encryption_type="none",
        model_kind="linear",
    )
    text = layout.coordinator_config.read_text().replace(
        "num_parameters: 18", "num_parameters: 5000000"
    )
    layout.coordinator_config.write_text(
        text.replace("chunk_bytes: 262144", "chunk_bytes: 1048576")
    )
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        join = h.stub(layout, "bank-a").Join(h.join_request(layout, "bank-a"))
        status = h.stub(layout, "bank-a").GetRound(federation_pb2.RoundQuery())
        data = np.random.default_rng(0).normal(0, 0.01, 5_000_000).astype("<f4").tobytes()
        hasher = records_hasher(5_000_000, 4)
        hasher.update(data)
        digest = hasher.digest()
        signed = contribution_digest(
            federation_id="fedlora-demo",
            round_number=1,
            client_id="bank-a",
            codec_digest=h.codec_of(join).digest(),
            key_fingerprint=b"\x00" * 32,
            weight=1,
            ciphertexts_digest=digest,
            value_count=5_000_000,
            global_version=status.global_version,
            global_digest=status.global_digest,
        )
        header = federation_pb2.ContributionHeader(
            round=1,
            weight=1,
            value_count=5_000_000,
            record_count=5_000_000,
            ciphertexts_digest=digest,
            key_fingerprint=b"\x00" * 32,
            codec_digest=h.codec_of(join).digest(),
            signature=sign_digest(h.signing_key(layout, "bank-a"), signed),
            global_version=status.global_version,
            global_digest=status.global_digest,
        )
        # Act
        receipt = h.upload(layout, "bank-a", header, data, chunk=join.chunk_bytes)
    finally:
        running.stop(grace=1)
    # Assert
    assert join.chunk_bytes == 1 << 20 and len(data) == 20_000_000
    assert receipt.client_id == "bank-a" and not receipt.duplicate
    assert (
        config.state_dir / "rounds" / "00001" / "contributions" / "bank-a.bin"
    ).stat().st_size == len(data)


def test_clients_keep_every_global_adapter_and_export_it_offline_after_the_end(tmp_path) -> None:
    # Arrange: a LoRA (FFA, tabular) federation runs two encrypted rounds.
    import numpy as np
    import torch
    from peft import PeftModel

    from fedlora.cli import model as _model_cli
    from fedlora.client import TabularNet, make_trainer  # public names only
    from fedlora.config import load_client_config

    layout = prepare_federation(tmp_path, bits=BITS, rounds=2, aggregation_frequency=10)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    try:
        assert h.run_clients(layout) == {pid: 0 for pid in layout.client_configs}
    finally:
        running.stop(grace=1)
    # Act: with the coordinator gone, export the final global adapter from what bank-b kept.
    bank = layout.client_configs["bank-b"]
    assert _model_cli.export(bank, tmp_path / "export-adapter", None, False) == 0
    assert _model_cli.export(bank, tmp_path / "export-merged", None, True) == 0
    # Assert: every client kept versions 1 and 2, and version 2 is marked final.
    for pid, path in layout.client_configs.items():
        models = load_client_config(path).state_dir / "models"
        assert sorted(p.name for p in models.iterdir()) == ["v00001", "v00002"], pid
        assert (models / "v00002" / "final.json").exists()
        assert not (models / "v00001" / "final.json").exists()
        assert (models / "v00002" / "adapter" / "adapter_config.json").exists()
    # The coordinator's own peft-format version 2 loads with peft and predicts exactly as the
    # client does from the raw vector; the exports agree with it.
    events = _events(config.state_dir)
    published = [e for e in events if e["event"] == "global_published"]
    assert [e["version"] for e in published] == [0, 1, 2] and all(
        "adapter_digest" in e for e in published
    )
    trainer = make_trainer(load_client_config(bank))
    vector = np.fromfile(config.state_dir / "globals" / "v00002.f32", dtype="<f4")
    expected = trainer.predict_proba(vector)
    x = torch.as_tensor(np.asarray(trainer.features, dtype=np.float32))
    for adapter in (config.state_dir / "globals" / "v00002.adapter", tmp_path / "export-adapter"):
        model = PeftModel.from_pretrained(
            TabularNet.from_pretrained(tmp_path / "models" / "base"), str(adapter)
        ).eval()
        with torch.no_grad():
            assert np.allclose(torch.softmax(model(x), 1).numpy(), expected, atol=1e-5), adapter
    merged = TabularNet.from_pretrained(tmp_path / "export-merged").eval()
    with torch.no_grad():
        assert np.allclose(torch.softmax(merged(x), 1).numpy(), expected, atol=1e-5)
    # Version 1 is not final: refused unless asked for.
    with pytest.raises(FedLoraError, match="not the federation's final model"):
        _model_cli.export(bank, tmp_path / "v1", 1, False)
    assert _model_cli.export(bank, tmp_path / "v1", 1, False, allow_not_final=True) == 0
    # A kept file altered on disk is refused, naming it.
    kept = load_client_config(bank).state_dir / "models" / "v00002"
    data = bytearray((kept / "global.f32").read_bytes())
    data[0] ^= 1
    (kept / "global.f32").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"global\.f32 does not match"):
        _model_cli.export(bank, tmp_path / "tampered", None, False)


def test_over_mtls_each_global_moves_by_the_weighted_mean_of_the_clipped_deltas(tmp_path) -> None:
    # Arrange: five real clients over gRPC and mTLS whose "training" adds a known delta (some
    # values beyond the codec's clip), weighted 3, 5, 7, 11 and 13 by their example counts.
    from fedlora.inprocess import GivenDelta

    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=2,
        aggregation_frequency=1,
        participant_threshold=5,
        model_kind="linear",
    )
    config = load_coordinator_config(layout.coordinator_config)
    n = config.model.num_parameters
    rng = np.random.default_rng(7)
    weights = dict(zip(layout.client_configs, (3, 5, 7, 11, 13)))
    deltas = {pid: rng.normal(0, 0.8, n).astype(np.float32) for pid in weights}
    trainers = {pid: GivenDelta(n, weights[pid], deltas[pid]) for pid in weights}
    running = h.serve(layout, config)
    try:
        # Act
        results = h.run_clients(layout, trainers=trainers, timeout=120)
    finally:
        running.stop(grace=1)
    # Assert: global v(r) − v(r−1) is Σ wᵢ·clip(Δᵢ) / Σ wᵢ within one quantization step.
    assert results == {pid: 0 for pid in weights}
    total = sum(weights.values())
    expected = (
        sum(weights[p] * np.clip(deltas[p].astype(np.float64), -1, 1) for p in weights) / total
    )
    store, codec = running.engine.store, running.engine.codec
    for version in (1, 2):
        moved = store.load_global(version).astype(np.float64) - store.load_global(version - 1)
        assert np.max(np.abs(moved - expected)) <= codec.step + 1e-6


def test_a_client_whose_model_differs_is_refused_at_join_naming_the_setting(tmp_path) -> None:
    # Arrange: a tabular LoRA federation; its template folder holds the federation spec.
    import dataclasses
    import shutil

    from fedlora.client import Client
    from fedlora.client._spec import federation_spec
    from fedlora.client._training import make_trainer
    from fedlora.config import load_client_config
    from fedlora.protocol import canonical_spec

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, aggregation_frequency=2)
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    bank = load_client_config(layout.client_configs["bank-a"])  # now naming the bound port
    try:
        # Act 1: bank-a set another LoRA seed (its frozen A matrices would differ).
        seeded = dataclasses.replace(
            bank,
            model=dataclasses.replace(
                bank.model, lora=dataclasses.replace(bank.model.lora, seed=7)
            ),
        )
        # Assert 1: refused at join, naming the setting.
        with pytest.raises(FedLoraError, match=r"model\.lora\.seed is 7 here, 0 in the federation"):
            Client(seeded).join()
        # Act 2: another base model (one byte of its config differs).
        other = tmp_path / "other-base"
        shutil.copytree(bank.model.base_model, other)
        text = (other / "config.json").read_text().replace('"hidden": 32', '"hidden": 32 ')
        (other / "config.json").write_text(text)
        based = dataclasses.replace(bank, model=dataclasses.replace(bank.model, base_model=other))
        with pytest.raises(FedLoraError, match=r"model\.base_model is [0-9a-f]{12}… here"):
            Client(based).join()
        # Act 3: a client that skips its own check (or lies about it) meets the coordinator's:
        # the join is refused, the setting named and the refusal audited.
        spec = federation_spec(seeded, make_trainer(seeded))
        with pytest.raises(grpc.RpcError) as refused:
            h.stub(layout, "bank-a").Join(
                federation_pb2.JoinRequest(client_id="bank-a", spec_json=canonical_spec(spec))
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model.lora.seed is 7 here, 0 in the federation" in refused.value.details()
        # A client that sends no spec at all is refused too (it cannot be compared).
        with pytest.raises(grpc.RpcError) as refused:
            h.stub(layout, "bank-b").Join(federation_pb2.JoinRequest(client_id="bank-b"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sent no model spec" in refused.value.details()
        # The same model joins.
        Client(bank).join()
    finally:
        running.stop(grace=1)
    refusals = [e["reason"] for e in _events(config.state_dir) if e["event"] == "join_refused"]
    assert any("model.lora.seed" in r for r in refusals)
    assert any("model.base_model" in r for r in refusals)


def test_csv_columns_load_by_name_and_unknown_columns_are_refused(tmp_path) -> None:
    # Arrange: bank-a's CSV with its columns reversed, and one with a column renamed.
    import csv

    from fedlora.client._training import make_trainer
    from fedlora.config import load_client_config
    from fedlora.errors import ConfigError

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    bank = load_client_config(layout.client_configs["bank-a"])
    rows = list(csv.reader(bank.data.path.read_text().splitlines()))
    reversed_csv = tmp_path / "reversed.csv"
    reversed_csv.write_text("\n".join(",".join(r[::-1]) for r in rows) + "\n")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("\n".join(",".join(r) for r in [["g0", *rows[0][1:]], *rows[1:]]) + "\n")
    import dataclasses

    def trainer(path):  # type: ignore[no-untyped-def]
        return make_trainer(
            dataclasses.replace(bank, data=dataclasses.replace(bank.data, path=path))
        )

    # Act / Assert: reordered columns load to the same features; a renamed one is refused.
    assert np.array_equal(trainer(reversed_csv).features, trainer(bank.data.path).features)
    with pytest.raises(ConfigError, match=r"missing \['f0'\]; not in the base model \['g0'\]"):
        trainer(renamed)


def test_tls_failures_are_diagnosed_on_the_client_naming_cause_and_fix(tmp_path) -> None:
    # Arrange: a live mTLS coordinator; client configs that each get one thing wrong.
    import dataclasses
    import datetime as dt

    from fedlora.client._diagnose import diagnose
    from fedlora.client._grpc import GrpcTransport
    from fedlora.config import RetryConfig, load_client_config
    from fedlora.errors import ConfigError, TransportError

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    other_ca = create_ca(tmp_path / "other-ca")
    issue_certificate(tmp_path / "other-ca", "bank-a", tmp_path / "other-certs")
    config = load_coordinator_config(layout.coordinator_config)
    running = h.serve(layout, config)
    bank = load_client_config(layout.client_configs["bank-a"])
    tls = bank.coordinator.tls
    assert tls is not None
    fast = RetryConfig(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)

    def join(**changes):  # type: ignore[no-untyped-def]
        endpoint = dataclasses.replace(bank.coordinator, **changes)
        cfg = dataclasses.replace(bank, coordinator=endpoint, retry=fast)
        with pytest.raises(TransportError) as caught:
            GrpcTransport(cfg).join()
        return str(caught.value)

    other_client = dataclasses.replace(
        tls,
        cert=tmp_path / "other-certs" / "bank-a.pem",
        key=tmp_path / "other-certs" / "bank-a.key",
    )
    try:
        # Act / Assert: a client of another CA meets the federation's coordinator: the
        # coordinator's certificate is from an unknown CA.
        assert "not signed by the CA in coordinator.tls.ca" in join(
            tls=dataclasses.replace(other_client, ca=other_ca.cert)
        )
        # A server name the certificate does not hold: it says which names it does hold.
        message = join(server_name="coordinator.example")
        assert "is for localhost, 127.0.0.1, not 'coordinator.example'" in message
        # A certificate this client's own CA file does not vouch for is refused before any call.
        with pytest.raises(
            ConfigError, match=r"coordinator\.tls\.cert: .* is not signed by the CA"
        ):
            join(tls=other_client)
        # Past that check (a CA bundle, say), the coordinator refuses it, and the diagnosis says so.
        endpoint = dataclasses.replace(bank.coordinator, tls=other_client)
        found = diagnose(endpoint)
        assert "refused this client's certificate" in found.message
    finally:
        running.stop(grace=1)
    # Nothing listening: named, and retried (the coordinator may be starting).
    assert f"nothing is listening on {bank.coordinator.address} (connection refused)" in join()
    # An expired coordinator certificate (fedlora's coordinator refuses to start with one, so a
    # bare gRPC server stands in for a misconfigured endpoint).
    from concurrent import futures

    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    expired = issue_certificate(
        layout.root / "ca",
        "coordinator",
        tmp_path / "expired",
        server_hosts=["localhost", "127.0.0.1"],
        valid_days=1,
        valid_from=start,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_secure_port(
        bank.coordinator.address,
        grpc.ssl_server_credentials(
            [(expired.key.read_bytes(), expired.cert.read_bytes())],
            root_certificates=(layout.root / "ca" / "ca.pem").read_bytes(),
            require_client_auth=True,
        ),
    )
    server.start()
    try:
        assert f"expired on {(start + dt.timedelta(days=1)).date()}" in join()
    finally:
        server.stop(None)
    # And fedlora's coordinator refuses to serve with that certificate, in one line.
    server_tls = dataclasses.replace(config.server.tls, cert=expired.cert, key=expired.key)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, tls=server_tls))
    with pytest.raises(FedLoraError, match=r"server\.tls\.cert: .* expired on"):
        h.serve(layout, config)


def test_a_ca_signed_revocation_is_reloaded_and_cannot_be_forged_or_undone(tmp_path) -> None:
    # Arrange: a live coordinator that watches a revocation list file (none yet).
    import dataclasses

    from fedlora.revocation import sign_revocations

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    revocations = tmp_path / "revocations.json"
    server = dataclasses.replace(config.server, revocations=revocations)
    config = dataclasses.replace(config, server=server)
    running = h.serve(layout, config)
    fed_id = config.federation_id

    def join(pid: str) -> grpc.StatusCode:
        try:
            h.stub(layout, pid).Join(h.join_request(layout, pid))
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    try:
        assert join("bank-b") == grpc.StatusCode.OK
        # Act 1: the CA revokes bank-b; the file is replaced while the coordinator runs.
        revocations.write_bytes(sign_revocations(layout.root / "ca", fed_id, ["bank-b"], 1))
        # Assert 1: bank-b's next call is refused; others are not.
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        assert join("bank-a") == grpc.StatusCode.OK
        # Act 2: a list from another CA "un-revoking" bank-b, then a CA-signed one that tries.
        other = create_ca(tmp_path / "other-ca")
        assert other.key.exists()
        revocations.write_bytes(sign_revocations(tmp_path / "other-ca", fed_id, [], 2))
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        revocations.write_bytes(sign_revocations(layout.root / "ca", fed_id, [], 3))
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        # An edited list (bank-b removed by hand) breaks the signature.
        doc = json.loads(sign_revocations(layout.root / "ca", fed_id, ["bank-b", "bank-e"], 4))
        doc["revoked"] = ["bank-e"]
        revocations.write_text(json.dumps(doc))
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        assert join("bank-e") == grpc.StatusCode.OK  # the forged list was not loaded at all
    finally:
        running.stop(grace=1)
    events = _events(config.state_dir)
    assert [e["party"] for e in events if e["event"] == "party_revoked"] == ["bank-b"]
    assert any(
        e["event"] == "access_denied" and e["identity"] == "bank-b" and e["reason"] == "revoked"
        for e in events
    )


def test_a_restart_cannot_undo_a_revocation(tmp_path) -> None:
    """The attacker restarts the coordinator with an older list the CA really signed, with the
    file deleted, with no list configured, or with a newer CA-signed list that leaves a party
    out: every such start is refused in one line, before anything is written."""
    import dataclasses

    from fedlora.revocation import sign_revocations

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    revocations = tmp_path / "revocations.json"
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, revocations=revocations)
    )
    ca, fed_id = layout.root / "ca", config.federation_id

    def join(pid: str) -> grpc.StatusCode:
        try:
            h.stub(layout, pid).Join(h.join_request(layout, pid))
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    first = sign_revocations(ca, fed_id, ["bank-b"], 1)
    second = sign_revocations(ca, fed_id, ["bank-b", "hospital-c"], 2)
    running = h.serve(layout, config)
    try:
        revocations.write_bytes(first)
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        revocations.write_bytes(second)
        assert join("hospital-c") == grpc.StatusCode.PERMISSION_DENIED
    finally:
        running.stop(grace=1)
    log_before = _events(config.state_dir)

    def refused(match: str, cfg=config) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(FedLoraError, match=match):
            h.serve(layout, cfg).stop(grace=0)
        assert _events(config.state_dir) == log_before  # nothing written

    revocations.unlink()
    refused(r"revocations\.json is missing, but the audit log records revocation list serial 2")
    revocations.write_bytes(first)  # older, but really signed by the CA
    refused(r"serial 1, older than serial 2 already in force")
    revocations.write_bytes(sign_revocations(ca, fed_id, ["hospital-c"], 3))
    refused(r"reinstates \['bank-b'\]; revocation is final")
    unset = dataclasses.replace(config, server=dataclasses.replace(config.server, revocations=None))
    refused(
        r"server\.revocations is not set, but the audit log records revocation list serial 2", unset
    )
    # The list in force starts, and the revoked parties stay refused.
    revocations.write_bytes(second)
    running = h.serve(layout, config)
    try:
        assert join("bank-b") == grpc.StatusCode.PERMISSION_DENIED
        assert join("hospital-c") == grpc.StatusCode.PERMISSION_DENIED
        assert join("bank-a") == grpc.StatusCode.OK
    finally:
        running.stop(grace=1)
    events = _events(config.state_dir)
    loaded = [(e["serial"], e["revoked"]) for e in events if e["event"] == "revocations_loaded"]
    assert loaded == [(1, ["bank-b"]), (2, ["bank-b", "hospital-c"])]  # not again at restart


def test_revoking_share_holders_past_the_quorum_is_said_at_once(tmp_path, caplog) -> None:
    """Five holders, t = 3, ticket quorum 4: two revoked holders leave three, and no round can
    be decrypted; the coordinator says so in one line when the list loads and at start-up."""
    import dataclasses
    import logging

    from fedlora.revocation import sign_revocations

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    config = load_coordinator_config(layout.coordinator_config)
    revocations = tmp_path / "revocations.json"
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, revocations=revocations)
    )
    revocations.write_bytes(
        sign_revocations(layout.root / "ca", config.federation_id, ["bank-b"], 1)
    )
    caplog.set_level(logging.ERROR, logger="fedlora.coordinator")
    running = h.serve(layout, config)
    try:
        assert running.engine.admission.blocked is None  # 4 holders left: the quorum holds
        revocations.write_bytes(
            sign_revocations(layout.root / "ca", config.federation_id, ["bank-b", "hospital-c"], 2)
        )
        h.stub(layout, "bank-a").Join(h.join_request(layout, "bank-a"))  # any call reloads
        blocked = running.engine.admission.blocked
    finally:
        running.stop(grace=1)
    assert blocked == (
        "decryption cannot succeed until the federation re-keys: 2 of 5 share holders "
        "are revoked (bank-b, hospital-c), 3 remain and every round needs 4 (ticket quorum 4, "
        "threshold 3); see docs/operations.md#re-keying"
    )
    assert [r.getMessage() for r in caplog.records].count(blocked) == 1
    caplog.clear()
    h.serve(layout, config).stop(grace=0)  # a restart says it again
    assert [r.getMessage() for r in caplog.records].count(blocked) == 1


def test_a_holder_revocation_that_stops_decryption_is_refused_then_shown(tmp_path) -> None:
    """`provision revoke` refuses to revoke share holders past the ticket quorum unless forced;
    then `config check` (exit 1), the coordinator's offline `status` and a member's live `status`
    each say in one line that no round can be decrypted until the federation re-keys."""
    import subprocess
    import sys

    import yaml

    layout = prepare_federation(tmp_path, bits=BITS, rounds=1)
    project = tmp_path / "project.yaml"
    project.write_text(
        yaml.safe_dump(
            {
                "federation_id": load_coordinator_config(layout.coordinator_config).federation_id,
                "coordinator": {"address": "localhost:1"},
                "parties": [{"id": p, "role": "bank"} for p in layout.client_configs],
                "model": {"kind": "tabular", "base_model": "base-model"},
                "training": {"num_classes": 2},
                "federated_learning": {"participant_threshold": 3, "decryption_threshold": 3},
            }
        )
    )
    listed = tmp_path / "revocations.json"

    def fedlora(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedlora", *args], capture_output=True, text=True, timeout=120
        )

    revoke = ("provision", "revoke", "--project", str(project), "--ca", str(layout.root / "ca"))
    two = ("--party", "bank-b", "--party", "hospital-c", "--out", str(listed))
    refused = fedlora(*revoke, *two)
    assert refused.returncode != 0 and not listed.exists()
    assert "refused: decryption cannot succeed until the federation re-keys" in (refused.stderr)
    assert "Traceback" not in refused.stderr
    forced = fedlora(*revoke, *two, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning: decryption cannot succeed" in " ".join((forced.stdout + forced.stderr).split())
    text = layout.coordinator_config.read_text()
    layout.coordinator_config.write_text(
        text.replace("server:\n", f"server:\n  revocations: {listed}\n", 1)
    )
    assert load_coordinator_config(layout.coordinator_config).server.revocations == listed
    blocked = (
        "decryption cannot succeed until the federation re-keys: 2 of 5 share holders "
        "are revoked (bank-b, hospital-c)"
    )
    check = fedlora("config", "check", str(layout.coordinator_config))
    assert check.returncode == 1, check.stdout + check.stderr
    assert blocked in " ".join((check.stdout + check.stderr).split())
    offline = fedlora("status", "--config", str(layout.coordinator_config), "--json")
    assert json.loads(offline.stdout)["warning"].startswith(blocked)
    running = h.serve(layout)
    try:
        live = fedlora("status", "--config", str(layout.client_configs["bank-a"]))
    finally:
        running.stop(grace=1)
    assert live.returncode == 0, live.stderr
    said = " ".join(live.stdout.split())
    assert f"warning: {blocked}" in said
