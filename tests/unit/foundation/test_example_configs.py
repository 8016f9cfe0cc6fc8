"""The documented examples in configs/ are valid configurations."""

from __future__ import annotations

from pathlib import Path

from fedlora.config import (
    ClientConfig,
    CoordinatorConfig,
    load_client_config,
    load_coordinator_config,
    parse_config,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_coordinator_example_parses() -> None:
    cfg = load_coordinator_config(CONFIGS / "coordinator.yaml")
    assert cfg.federated_learning.participant_threshold == 3
    assert [p.role for p in cfg.parties] == ["bank", "bank", "hospital"]
    # The safe defaults are documented but left unset: quorum from the key, no small keys.
    assert cfg.federated_learning.ticket_quorum is None
    assert cfg.testing.insecure_small_keys is False


def test_client_examples_parse() -> None:
    bank = load_client_config(CONFIGS / "bank.yaml")
    hospital = load_client_config(CONFIGS / "hospital.yaml")
    assert (bank.role, hospital.role) == ("bank", "hospital")
    # Pinned to the coordinator example's participant_threshold, not learned at join.
    assert bank.policy.min_participants == hospital.policy.min_participants == 3
    assert bank.policy.ticket_quorum is None and hospital.policy.ticket_quorum is None
    assert not bank.testing.insecure_small_keys and not hospital.testing.insecure_small_keys


def test_the_commented_out_options_are_valid_when_uncommented() -> None:
    # Arrange: every documented but commented-out key of the new safety settings, switched on.
    texts = {
        name: (CONFIGS / f"{name}.yaml")
        .read_text()
        .replace("# ticket_quorum:", "ticket_quorum:")
        .replace("# testing:\n#   insecure_small_keys", "testing:\n  insecure_small_keys")
        for name in ("coordinator", "bank")
    }
    # Act
    coordinator = parse_config(CoordinatorConfig, texts["coordinator"], base=CONFIGS)
    bank = parse_config(ClientConfig, texts["bank"], base=CONFIGS)
    # Assert
    assert coordinator.federated_learning.ticket_quorum == bank.policy.ticket_quorum == 3
    assert coordinator.testing.insecure_small_keys and bank.testing.insecure_small_keys


def test_the_hospital_example_uses_the_packaged_minilm() -> None:
    hospital = load_client_config(CONFIGS / "hospital.yaml")
    assert hospital.model.kind == "text"
    assert hospital.model.base_model is not None
    assert (hospital.model.base_model / "config.json").exists()
    assert (hospital.model.base_model / "model.safetensors").exists()
