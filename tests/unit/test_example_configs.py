"""The documented examples in configs/ are valid configurations."""

from __future__ import annotations

from pathlib import Path

from fedlora.config import load_client_config, load_coordinator_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_coordinator_example_parses() -> None:
    cfg = load_coordinator_config(CONFIGS / "coordinator.yaml")
    assert cfg.federated_learning.participant_threshold == 3
    assert [p.role for p in cfg.parties] == ["bank", "bank", "hospital"]


def test_client_examples_parse() -> None:
    bank = load_client_config(CONFIGS / "bank.yaml")
    hospital = load_client_config(CONFIGS / "hospital.yaml")
    assert (bank.role, hospital.role) == ("bank", "hospital")
    assert bank.policy.min_participants == 3


def test_the_hospital_example_uses_the_packaged_minilm() -> None:
    hospital = load_client_config(CONFIGS / "hospital.yaml")
    assert hospital.model.kind == "text"
    assert hospital.model.base_model is not None
    assert (hospital.model.base_model / "config.json").exists()
    assert (hospital.model.base_model / "model.safetensors").exists()
