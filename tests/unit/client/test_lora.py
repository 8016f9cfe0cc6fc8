"""LoRA clients on base models the tests build and save locally (no network, no hub)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedlora.client import make_trainer
from fedlora.client._lora import TabularNet
from fedlora.config import load_client_config
from fedlora.errors import ConfigError

# FEDLORA_TEST_DEVICE=cuda runs these on a GPU (bfloat16 autocast); CI has none, so cpu by default.
DEVICE = os.environ.get("FEDLORA_TEST_DEVICE", "cpu")
WORDS = [
    "fraud",
    "normal",
    "chest",
    "pain",
    "cough",
    "fever",
    "healthy",
    "transfer",
    "card",
    "refund",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with its own WordPiece vocabulary, saved in Hugging Face format."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tabular_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tabular")
    torch.manual_seed(0)
    TabularNet(4, 16, 2, mean=[0.0] * 4, std=[1.0] * 4).save_pretrained(folder)
    return folder


def _config(
    tmp_path: Path,
    kind: str,
    base: Path,
    data: Path,
    *,
    aggregation: str = "ffa",
    targets=None,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    doc = {
        "id": "bank-a",
        "role": "bank",
        "federation_id": "f",
        "state_dir": str(tmp_path / "state"),
        "coordinator": {"address": "127.0.0.1:1", "insecure": True},
        "keys": {k: "x" for k in ("signing_key", "x25519_key", "key_share", "threshold_public_key")}
        | {"coordinator_signing_public_key": "a" * 64},
        "peers": [
            {"id": "bank-a", "signing_public_key": "a" * 64},
            {"id": "bank-b", "signing_public_key": "b" * 64},
        ],
        "data": {"path": str(data)},
        "model": {
            "kind": kind,
            "base_model": str(base),
            "max_length": 16,
            "lora": {
                "rank": 2,
                "alpha": 4,
                "targets": targets or (["query", "value"] if kind == "text" else ["fc1", "fc2"]),
                "aggregation": aggregation,
                "seed": 7,
            },
        },
        "training": {"batch_size": 16, "learning_rate": 0.05, "device": DEVICE, "seed": seed},
    }
    path = tmp_path / f"{kind}-{aggregation}-{seed}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_client_config(path)


@pytest.fixture()
def text_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["text,label"]
    for _ in range(64):
        y = int(rng.integers(0, 2))
        words = rng.choice(WORDS[:5] if y else WORDS[5:], 4)
        rows.append(f"{' '.join(words)},{y}")
    path = tmp_path / "text.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def tabular_data(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    path = tmp_path / "tab.csv"
    path.write_text(
        "a,b,c,d,label\n" + "\n".join(",".join([*map(str, r), str(v)]) for r, v in zip(x, y)) + "\n"
    )
    return path


def _lora_deltas(trainer) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """ΔW = scaling·B·A of every adapted layer, as the model actually applies it."""
    from peft.tuners.lora import LoraLayer

    return {
        n: m.get_delta_weight("default").detach().clone()
        for n, m in trainer.model.named_modules()
        if isinstance(m, LoraLayer)
    }


def test_text_model_loads_from_a_local_folder_and_shares_only_the_adapter(
    tmp_path, tiny_bert, text_data
) -> None:
    trainer = make_trainer(_config(tmp_path, "text", tiny_bert, text_data))
    names = [n for n, _ in trainer.shared]
    assert names and all("lora_B" in n or "modules_to_save" in n for n in names)
    base = sum(
        p.numel()
        for n, p in trainer.model.named_parameters()
        if "lora_" not in n and "modules_to_save" not in n
    )
    assert trainer.num_parameters < base / 10
    assert not np.any(trainer.vector())  # version 0 is the seeded initial adapter


def test_training_learns_and_the_same_seed_gives_the_same_start(
    tmp_path, tabular_model, tabular_data
) -> None:
    a = make_trainer(_config(tmp_path, "tabular", tabular_model, tabular_data))
    b = make_trainer(_config(tmp_path, "tabular", tabular_model, tabular_data, seed=1))
    assert np.array_equal(
        a.init, b.init
    )  # the federation seed fixes A and the head, not the data seed
    zero = np.zeros(a.num_parameters, dtype=np.float32)
    before = a.evaluate(zero)
    trained = a.train(zero, 150)
    assert a.evaluate(trained) > max(before, 0.85)


def _two_clients_and_their_average(tmp_path, model, data, aggregation):  # type: ignore[no-untyped-def]
    """Two clients train from the same global adapter on different batches; returns each one's
    applied weight updates and those of the averaged shared vector (what the encrypted sum decodes to)."""
    c1, c2 = (
        make_trainer(_config(tmp_path, "tabular", model, data, aggregation=aggregation, seed=s))
        for s in (1, 2)
    )
    zero = np.zeros(c1.num_parameters, dtype=np.float32)
    v1, v2 = c1.train(zero, 20), c2.train(zero, 20)
    c1.load_vector(v1)
    d1 = _lora_deltas(c1)
    c2.load_vector(v2)
    d2 = _lora_deltas(c2)
    c1.load_vector((v1.astype(np.float64) + v2) / 2)
    return c1, d1, d2, _lora_deltas(c1)


def test_ffa_average_of_adapters_is_exactly_fedavg_of_weight_updates(
    tmp_path, tabular_model, tabular_data
) -> None:
    _, d1, d2, averaged = _two_clients_and_their_average(
        tmp_path, tabular_model, tabular_data, "ffa"
    )
    # With A frozen and shared, the average adapter applies exactly the average update.
    for name in averaged:
        assert torch.allclose(averaged[name], (d1[name] + d2[name]) / 2, atol=1e-6), name


def test_fedavg_ab_averages_a_and_b_separately_which_is_not_fedavg(
    tmp_path, tabular_model, tabular_data
) -> None:
    c1, d1, d2, averaged = _two_clients_and_their_average(
        tmp_path, tabular_model, tabular_data, "fedavg_ab"
    )
    assert any("lora_A" in n for n, _ in c1.shared)
    assert any(not torch.allclose(averaged[n], (d1[n] + d2[n]) / 2, atol=1e-6) for n in averaged)


def test_the_global_adapter_round_trips_through_peft_format(tmp_path, tiny_bert, text_data) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trainer = make_trainer(_config(tmp_path, "text", tiny_bert, text_data))
    vector = trainer.train(np.zeros(trainer.num_parameters, dtype=np.float32), 10)
    trainer.save_adapter(vector, tmp_path / "adapter")
    expected = trainer.predict_proba(vector)
    # A fresh process would do exactly this: base model from disk + PeftModel.from_pretrained.
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=2, local_files_only=True
    )
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    texts = text_data.read_text().splitlines()[1:]
    enc = tok(
        [t.rsplit(",", 1)[0] for t in texts],
        padding=True,
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    with torch.no_grad():
        got = torch.softmax(model(**enc).logits, dim=1).numpy()
    # bfloat16 autocast on a GPU rounds activations; on the CPU both paths are float32.
    assert np.allclose(got, expected, atol=1e-5 if DEVICE == "cpu" else 2e-2)


def test_bad_model_settings_are_named(tmp_path, tabular_model, tabular_data) -> None:
    with pytest.raises(
        ConfigError, match=r"model\.lora\.targets: \['query'\] are not linear layers"
    ):
        make_trainer(_config(tmp_path, "tabular", tabular_model, tabular_data, targets=["query"]))
    with pytest.raises(ConfigError, match=r"model\.base_model"):
        make_trainer(_config(tmp_path, "tabular", tmp_path / "nowhere", tabular_data))
    with pytest.raises(ConfigError, match="is not a fedlora-tabular-mlp model"):
        (tmp_path / "fake").mkdir()
        (tmp_path / "fake" / "config.json").write_text('{"model_type": "bert"}')
        make_trainer(_config(tmp_path, "tabular", tmp_path / "fake", tabular_data))
