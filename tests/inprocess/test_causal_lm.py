"""A causal-LM federation in one process: the real coordinator engine and three real clients
fine-tuning a tiny Llama (LoRA on every linear layer, FFA) on the fraud-case instructions,
encrypted under a threshold key (512 bits: tests only)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fedlora._setup import prepare_federation
from fedlora.client import Client
from fedlora.config import load_client_config
from fedlora.errors import FedLoraError
from fedlora.inprocess import InProcessFederation, InProcessTransport

PARTIES = [("bank-a", "bank"), ("bank-b", "bank"), ("bank-c", "bank")]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("causal")
    layout = prepare_federation(
        root,
        bits=512,
        parties=PARTIES,
        participant_threshold=3,
        decryption_threshold=2,
        rounds=2,
        aggregation_frequency=3,
        insecure=True,
        workload="fraud-cases",
        rows=24,
        save_plaintext_deltas=True,
    )
    fed = InProcessFederation.from_configs(layout.coordinator_config, layout.client_configs)
    return layout, fed


def test_each_encrypted_round_publishes_the_weighted_mean_of_the_clipped_deltas(
    federation,
) -> None:
    layout, fed = federation
    codec = fed.engine.codec
    for number in (1, 2):
        before = fed.global_vector().astype(np.float64)
        assert fed.run_round() == number
        moved = fed.global_vector().astype(np.float64) - before
        # Each client kept its own plaintext delta (debug.save_plaintext_deltas) to check this.
        deltas, weights = [], []
        for pid, _ in PARTIES:
            folder = load_client_config(layout.client_configs[pid]).state_dir / "deltas"
            deltas.append(np.load(folder / f"round-{number:05d}.npy").astype(np.float64))
            weights.append(json.loads((folder / f"round-{number:05d}.json").read_text())["weight"])
        expected = sum(
            w * np.clip(d, -codec.clip, codec.clip) for w, d in zip(weights, deltas)
        ) / sum(weights)
        assert np.abs(expected).max() > 10 * codec.step  # the clients did learn something
        assert np.max(np.abs(moved - expected)) <= codec.step + 1e-6
    assert fed.engine.finished


def test_the_published_adapter_loads_with_peft_on_the_base_model(federation) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    layout, fed = federation
    if not fed.engine.finished:
        pytest.skip("needs the rounds of the test before")
    client = fed.clients["bank-a"]
    trainer = client.trainer
    version = fed.engine.global_version
    adapter = fed.engine.store.global_path(version).with_suffix(".adapter")
    batch = trainer._batch(trainer.examples[:2])  # type: ignore[attr-defined]
    trainer.load_vector(fed.global_vector())  # type: ignore[attr-defined]
    trainer.model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = trainer.model(input_ids=batch["input_ids"]).logits  # type: ignore[attr-defined]
    base_folder = load_client_config(layout.client_configs["bank-a"]).model.base_model
    base = AutoModelForCausalLM.from_pretrained(base_folder, local_files_only=True)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"]).logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rank": 4}, r"model\.lora\.rank is 4 here, 8 in the federation"),
        ({"targets": ("q_proj", "v_proj")}, r"model\.lora\.targets is .* here"),
    ],
)
def test_a_member_with_other_lora_targets_or_rank_is_refused_at_join_and_audited(
    federation, change, named
) -> None:
    layout, fed = federation
    config = load_client_config(layout.client_configs["bank-c"])
    lora = dataclasses.replace(config.model.lora, **change)
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=lora))
    client = Client(other, transport=InProcessTransport(fed.engine, "bank-c"))
    with pytest.raises(FedLoraError, match=named):
        client.join()
    log = (layout.root / "coordinator-state" / "audit" / "entries.log").read_text()
    refused = [json.loads(line) for line in log.splitlines() if '"join_refused"' in line]
    assert (
        refused[-1]["client"] == "bank-c"
        and named.split(" is")[0].replace("\\", "") in refused[-1]["reason"]
    )
