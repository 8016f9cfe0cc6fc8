"""The ``fedlora`` command as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora._setup import free_port

PARTIES = ["bank-a", "bank-b", "hospital-c"]


def fedlora(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlora", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def deal(cwd: Path) -> subprocess.CompletedProcess[str]:
    """The dealing command for a 2-of-3 test key (512 bits: tests only, hence the flag)."""
    parties = [a for pid in PARTIES for a in ("--party", f"{pid}=parties/{pid}.x25519.pub")]
    return fedlora(
        "keys",
        "deal",
        "--threshold",
        "2",
        "--bits",
        "512",
        "--insecure-small-key",
        "--out",
        "federation",
        *parties,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def ceremony(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ceremony")
    for pid in PARTIES:
        assert fedlora("keys", "party", "--id", pid, "--out", "parties", cwd=root).returncode == 0
    out = deal(cwd=root)
    assert out.returncode == 0, out.stderr
    assert "WARNING: dealing an INSECURE 512-bit key" in out.stderr
    return root


def test_party_keys_are_private_to_their_owner(ceremony) -> None:
    private = ceremony / "parties" / "bank-a.x25519"
    assert private.stat().st_mode & 0o077 == 0
    assert (ceremony / "federation" / "shares" / "bank-a.share.json").stat().st_mode & 0o077 == 0


def test_each_party_opens_its_own_share(ceremony) -> None:
    for pid in PARTIES:
        out = fedlora(
            "keys",
            "check-share",
            "--id",
            pid,
            "--private",
            f"parties/{pid}.x25519",
            "--share",
            f"federation/shares/{pid}.share.json",
            "--public-key",
            "federation/threshold-key.json",
            cwd=ceremony,
        )
        assert out.returncode == 0, out.stderr
        assert "matches its verification key" in out.stderr


def test_a_share_opened_with_another_partys_key_fails_clearly(ceremony) -> None:
    out = fedlora(
        "keys",
        "check-share",
        "--id",
        "bank-a",
        "--private",
        "parties/bank-b.x25519",
        "--share",
        "federation/shares/bank-a.share.json",
        "--public-key",
        "federation/threshold-key.json",
        cwd=ceremony,
    )
    assert out.returncode == 2
    assert "encrypted to a different X25519 key" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_tampered_share_file_fails_clearly(ceremony, tmp_path) -> None:
    doc = json.loads((ceremony / "federation/shares/hospital-c.share.json").read_text())
    doc["ciphertext"] = ("A" if doc["ciphertext"][0] != "A" else "B") + doc["ciphertext"][1:]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    out = fedlora(
        "keys",
        "check-share",
        "--id",
        "hospital-c",
        "--private",
        str(ceremony / "parties/hospital-c.x25519"),
        "--share",
        str(bad),
        "--public-key",
        str(ceremony / "federation/threshold-key.json"),
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "failed authentication" in out.stderr


def test_dealing_again_never_overwrites_key_material(ceremony) -> None:
    before = (ceremony / "federation" / "threshold-key.json").read_bytes()
    out = deal(cwd=ceremony)
    assert out.returncode == 2
    assert "refusing to overwrite" in out.stderr
    assert (ceremony / "federation" / "threshold-key.json").read_bytes() == before


def test_missing_and_malformed_inputs_name_the_file(tmp_path) -> None:
    out = fedlora(
        "keys", "deal", "--threshold", "2", "--party", "a=nope.pub", "--out", "x", cwd=tmp_path
    )
    assert out.returncode == 2 and "nope.pub does not exist" in out.stderr
    (tmp_path / "junk.pub").write_text("zz")
    out = fedlora(
        "keys", "deal", "--threshold", "2", "--party", "a=junk.pub", "--out", "x", cwd=tmp_path
    )
    assert out.returncode == 2 and "not an X25519 public key" in out.stderr
    out = fedlora(
        "keys", "deal", "--threshold", "2", "--party", "junk.pub", "--out", "x", cwd=tmp_path
    )
    assert out.returncode == 2 and "ID=PUBFILE" in out.stderr


def test_dealing_a_one_of_n_key_is_refused(ceremony, tmp_path) -> None:
    # Arrange: valid parties, so only the threshold is wrong.
    parties = [a for pid in PARTIES for a in ("--party", f"{ceremony}/parties/{pid}.x25519.pub")]
    # Act
    out = fedlora("keys", "deal", "--threshold", "1", "--out", "x", *parties, cwd=tmp_path)
    # Assert: one line with the cause and the fix, the usage-error status, nothing written.
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "--threshold 1: " in out.stderr and "use --threshold 2 or more" in out.stderr
    assert not (tmp_path / "x").exists()


def test_dealing_a_small_key_needs_the_insecure_flag(ceremony, tmp_path) -> None:
    # Arrange
    parties = [a for pid in PARTIES for a in ("--party", f"{ceremony}/parties/{pid}.x25519.pub")]
    # Act
    out = fedlora(
        "keys", "deal", "--threshold", "2", "--bits", "1024", "--out", "x", *parties, cwd=tmp_path
    )
    # Assert
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "--bits 1024: fedlora refuses keys below 2048 bits" in out.stderr
    assert "--insecure-small-key" in out.stderr
    assert not (tmp_path / "x").exists()


def test_crypto_demo_succeeds(tmp_path) -> None:
    out = fedlora("crypto-demo", "--bits", "512", "--values", "3000", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: decrypted aggregate vs plaintext average" in out.stdout


@pytest.mark.parametrize("bad", ["../pwned", "", ".hidden", "a/b", "x" * 65])
def test_ids_that_would_escape_or_hide_a_file_are_refused(tmp_path, bad) -> None:
    # A hostile or mistyped id must not write outside --out (or create a hidden file there).
    out = tmp_path / "out"
    fedlora("certs", "init", "--out", str(tmp_path / "ca"), cwd=tmp_path)
    for args in (
        ("certs", "issue", "--ca", str(tmp_path / "ca"), "--name", bad, "--out", str(out)),
        ("keys", "party", "--id", bad, "--out", str(out)),
        ("keys", "signing", "--id", bad, "--out", str(out)),
    ):
        result = fedlora(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "is not a valid id" in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
    assert not out.exists() and not (tmp_path / "pwned.pem").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def test_version(tmp_path) -> None:
    import fedlora as package

    out = fedlora("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"fedlora {package.__version__}"


def test_config_check_status_and_debug_as_an_operator_runs_them(tmp_path) -> None:
    # Arrange: a prepared federation (512-bit test key), nothing running.
    from fedlora._setup import prepare_federation

    layout = prepare_federation(tmp_path, bits=512, rounds=1, port=free_port())
    coordinator, bank = str(layout.coordinator_config), str(layout.client_configs["bank-a"])
    # Act / Assert: both configurations check out, machine-readably.
    out = fedlora("config", "check", coordinator, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["kind"] == "coordinator"
    assert any(c.startswith("threshold key: 512-bit, 3-of-5") for c in doc["checks"])
    out = fedlora("config", "check", bank, cwd=tmp_path)
    assert out.returncode == 0 and "key share: opened" in out.stdout, out.stderr
    # The coordinator's status before it ever ran.
    out = fedlora("status", "--config", coordinator, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) | {"state_dir": ""} == json.loads(out.stdout) | {
        "state_dir": "",
        "stage": "not started",
        "coordinator_running": False,
    }
    # A member's status with no coordinator: one line naming the address and the cause.
    text = layout.client_configs["bank-a"].read_text()
    layout.client_configs["bank-a"].write_text(text.replace("max_attempts: 60", "max_attempts: 2"))
    out = fedlora("status", "--config", bank, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("fedlora: error: round status: coordinator 127.0.0.1:")
    assert "nothing is listening" in lines[-1] and "Traceback" not in out.stderr
    # A key share swapped for another party's: config check names the file and the cause.
    share = tmp_path / "federation" / "shares" / "bank-a.share.json"
    other = tmp_path / "federation" / "shares" / "bank-b.share.json"
    share.chmod(0o600)
    share.write_bytes(other.read_bytes())
    out = fedlora("config", "check", bank, cwd=tmp_path)
    assert out.returncode == 2
    assert "keys.key_share:" in out.stderr and "is for party 'bank-b'" in out.stderr
    assert "Traceback" not in out.stderr
    # --debug adds the traceback for the same failure.
    out = fedlora("--debug", "config", "check", bank, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_config_check_says_when_a_restart_would_be_refused(tmp_path) -> None:
    from fedlora._setup import prepare_federation
    from fedlora.config import load_coordinator_config
    from fedlora.coordinator import build_engine

    layout = prepare_federation(tmp_path, bits=512, rounds=1, port=free_port())
    build_engine(load_coordinator_config(layout.coordinator_config))  # the federation started
    path = layout.coordinator_config
    path.write_text(path.read_text().replace("clip: 1.0", "clip: 0.5"))
    out = fedlora("config", "check", str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert "codec.clip: 1.0 → 0.5" in out.stderr and "cannot change" in out.stderr


def test_flower_prepare_writes_the_shared_metrics_and_refuses_a_bad_name(tmp_path) -> None:
    from fedlora.config import load_client_config

    bad = fedlora(
        "flower", "prepare", "--out", "bad", "--clients", "3", "--bits", "512",
        "--share-metrics", "accuracy,num examples", cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--share-metrics: 'num examples' is not a metric name" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    ok = fedlora(
        "flower", "prepare", "--out", "fl", "--clients", "3", "--bits", "512",
        "--share-metrics", "accuracy, num-examples", cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    for i in range(3):
        member = load_client_config(tmp_path / "fl" / f"bank-{i}.yaml")
        assert member.flower.share_metrics == ("accuracy", "num-examples")


def test_a_causal_lm_federation_from_the_command_line(tmp_path) -> None:
    """The language-model commands as a user runs them: instruction data, a base-model folder,
    a federation of three banks (the demo, over gRPC), then evaluation, generation and export."""
    data = fedlora(
        "data", "fraud-cases", "--clients", "2", "--rows", "40", "--out", "data", cwd=tmp_path
    )
    assert data.returncode == 0, data.stderr
    first = (tmp_path / "data" / "client-1.jsonl").read_text().splitlines()[0]
    assert set(json.loads(first)) == {"prompt", "response"}
    base = fedlora(
        "model", "causal-base", "--tiny", "data/client-1.jsonl", "data/client-2.jsonl",
        "--out", "base", cwd=tmp_path,
    )  # fmt: skip
    assert base.returncode == 0 and "LlamaForCausalLM" in base.stderr, base.stderr
    again = fedlora(
        "model", "causal-base", "--tiny", "data/client-1.jsonl", "--out", "base", cwd=tmp_path
    )
    assert again.returncode == 2 and "is not an empty folder" in again.stderr
    demo = fedlora(
        "demo", "--workload", "fraud-cases", "--base-model", "base", "--bits", "512",
        "--rounds", "1", "--insecure", "--dir", "fed", cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "equal" in demo.stdout and "DIFFERENT" not in demo.stdout
    member = tmp_path / "fed" / "bank-a.yaml"
    scored = fedlora(
        "model", "eval", "--config", str(member), "--data", "fed/data/bank-b.jsonl",
        "--limit", "10", "--json", "--generate", "Is a €5 grocery purchase fraud? Answer yes or no.",
        cwd=tmp_path,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["model"].startswith("global version 1") and result["records"] == 10
    assert result["eval_loss"] > 0 and 0 <= result["f1"] <= 1
    assert isinstance(result["generated"][0]["answer"], str)  # a tiny model says little
    merged = fedlora("export", "--config", str(member), "--out", "merged", "--merge", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    # Routine mistakes: one line each, no traceback.
    for args, line in [
        (("model", "eval", "--config", str(member), "--data", "missing.jsonl"), "cannot read it"),
        (("demo", "--workload", "fraud-cases", "--base-model", "data"), "is not a model folder"),
        (("model", "causal-base", "--gguf", "data/client-1.jsonl", "--out", "x"), "client-1.jsonl"),
    ]:
        out = fedlora(*args, cwd=tmp_path)
        assert out.returncode == 2 and line in out.stderr and "Traceback" not in out.stderr, (
            out.stderr
        )
