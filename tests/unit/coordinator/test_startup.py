"""Where the coordinator finds the federation spec, and what it refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedlora.config import CoordinatorConfig, load_coordinator_config
from fedlora.coordinator import spec_source
from fedlora.coordinator._startup import load_spec
from fedlora.errors import ConfigError
from fedlora.protocol import SPEC_FILE
from tests.integration.helpers import prepare_federation


def _config(tmp_path: Path) -> CoordinatorConfig:
    layout = prepare_federation(
        tmp_path,
        bits=512,
        parties=[("bank-a", "bank"), ("bank-b", "bank"), ("bank-c", "bank")],
        rounds=1,
        participant_threshold=2,
        decryption_threshold=2,
        insecure=True,
        model_kind="linear",
    )
    return load_coordinator_config(layout.coordinator_config)


def _with(config: CoordinatorConfig, **model: object) -> CoordinatorConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model))


def test_a_template_folder_without_its_spec_is_refused_with_the_fix(tmp_path) -> None:
    config = _with(_config(tmp_path), spec=None, adapter_template=tmp_path / "template")
    (tmp_path / "template").mkdir()
    with pytest.raises(ConfigError, match=rf"has no {SPEC_FILE}.*fedlora model template"):
        load_spec(config)


def test_model_spec_wins_over_the_template_folder_and_its_size_is_checked(tmp_path) -> None:
    config = _config(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text('{"model.kind": "linear", "model.num_parameters": 7}')
    config = _with(config, spec=spec, adapter_template=tmp_path / "missing")
    assert spec_source(config) == (spec, "model.spec")
    with pytest.raises(ConfigError, match="describes a model of 7 parameters"):
        load_spec(config)
    assert spec_source(_with(config, spec=None, adapter_template=None)) is None
