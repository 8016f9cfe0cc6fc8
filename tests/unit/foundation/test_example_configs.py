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


def test_the_examples_describe_one_federation() -> None:
    # Every client of a federation trains the same model; the coordinator enrolls them all.
    bank = load_client_config(CONFIGS / "bank.yaml")
    hospital = load_client_config(CONFIGS / "hospital.yaml")
    coordinator = load_coordinator_config(CONFIGS / "coordinator.yaml")
    assert bank.model == hospital.model and bank.federation_id == hospital.federation_id
    assert coordinator.federation_id == bank.federation_id
    assert {p.id for p in coordinator.parties} == {p.id for p in bank.peers}


def test_the_commented_text_model_is_the_packaged_minilm() -> None:
    # The hospital example documents a text federation in a comment; uncommented, it loads.
    text = (CONFIGS / "hospital.yaml").read_text()
    block = text[text.index("  #   kind: text") :].splitlines()[:4]
    import yaml

    from fedlora.config import ModelSpec

    doc = yaml.safe_load("\n".join(line.strip().lstrip("#").strip() for line in block))
    spec = parse_config(ModelSpec, yaml.safe_dump(doc), base=CONFIGS)
    assert spec.kind == "text" and spec.base_model is not None
    assert (spec.base_model / "config.json").exists()
    assert (spec.base_model / "model.safetensors").exists()
