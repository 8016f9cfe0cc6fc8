"""LoRA on a causal language model (``model.kind: causal-lm``), on a tiny Llama built here.

The model (two layers, a byte-level BPE tokenizer trained on the fraud-case workload, ChatML
chat template) is built in well under a second; every check runs on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlora import datasets
from fedlora.client._causal import (
    IGNORE,
    CausalLmTrainer,
    Instruction,
    answer_of,
    encode,
    load_instructions,
    write_tiny_llama,
    yes_no_scores,
)
from fedlora.config import LoraSpec, ModelSpec, TrainingConfig
from fedlora.errors import ConfigError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def cases() -> list[list[dict[str, str]]]:
    return datasets.fraud_cases(2, 60, seed=0)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, cases) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    write_tiny_llama(folder, [t for bank in cases for r in bank for t in r.values()])
    return folder


def _spec(base: Path, **kw) -> ModelSpec:  # type: ignore[no-untyped-def]
    lora = LoraSpec(**{"rank": 4, "alpha": 8, "targets": TARGETS, "seed": 0, **kw.pop("lora", {})})
    return ModelSpec(
        kind="causal-lm", base_model=base, max_length=kw.pop("max_length", 192), lora=lora, **kw
    )


def _trainer(base: Path, records, *, seed: int = 0, **kw) -> CausalLmTrainer:  # type: ignore[no-untyped-def]
    training = TrainingConfig(batch_size=4, learning_rate=1e-2, device="cpu", seed=seed)
    return CausalLmTrainer(_spec(base, **kw), training, [Instruction(**r) for r in records])


def test_instructions_with_a_missing_or_empty_field_are_refused_naming_file_line_and_field(
    tmp_path,
) -> None:
    path = tmp_path / "data.jsonl"
    for lines, message in [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "c"}'], r"line 2 lacks 'response'"),
        (['{"prompt": "a", "response": ""}'], r"line 1: 'response' is not a non-empty string"),
        (['{"prompt": 3, "response": "b"}'], r"line 1: 'prompt' is not a non-empty string"),
        (["not json"], r"line 1 is not JSON"),
        (["[1, 2]"], r"line 1 is not a JSON object"),
        ([""], r"has no records"),
    ]:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match=rf"data\.path: {path}.*{message}"):
            load_instructions(path, "prompt", "response")
    with pytest.raises(ConfigError, match="reads JSONL"):
        load_instructions(tmp_path / "data.csv", "prompt", "response")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_instructions(tmp_path / "missing.jsonl", "prompt", "response")


def test_the_loss_is_on_the_response_tokens_only(tiny_llama, cases) -> None:
    trainer = _trainer(tiny_llama, cases[0][:8])
    tokenizer = trainer.tokenizer
    for record, example in zip(cases[0][:8], trainer.examples):
        learned = [t for t in example.labels if t != IGNORE]
        # What is learned is exactly the response and the end of the sequence...
        assert tokenizer.decode(learned[:-1]) == record["response"]
        assert learned[-1] == tokenizer.eos_token_id
        # ... after the prompt, written in the chat template, which is never a target.
        prompt = tokenizer.decode(example.input_ids[: example.labels.index(learned[0])])
        assert prompt.startswith("<|im_start|>user\n" + record["prompt"])
        assert prompt.endswith("<|im_start|>assistant\n")
    # Changing the prompt changes the inputs, never what is counted in the loss.
    batch = trainer._batch(trainer.examples[:2])
    _, count = trainer._loss_sum(batch)
    assert count == sum(sum(t != IGNORE for t in e.labels[1:]) for e in trainer.examples[:2])


def test_long_examples_are_cut_counted_and_reported_once(tiny_llama, cases, capsys) -> None:
    records = [Instruction(**r) for r in cases[0][:20]]
    full = _trainer(tiny_llama, cases[0][:20], max_length=1000)
    limit = sorted(len(e.input_ids) for e in full.examples)[10]  # about half are longer
    capsys.readouterr()
    trainer = _trainer(tiny_llama, cases[0][:20], max_length=limit)
    err = capsys.readouterr().err
    assert err.count(f"longer than model.max_length ({limit} tokens)") == 1
    assert all(len(e.input_ids) <= limit for e in trainer.examples)
    _, cut, dropped = encode(trainer.tokenizer, records, limit)
    assert f"{cut} of 20 examples" in err and cut > 0
    # An example whose response is cut away entirely teaches nothing: it is left out.
    assert dropped == 20 - len(trainer.examples)


def test_training_lowers_the_loss_and_the_same_seed_gives_the_same_adapter(
    tiny_llama, cases
) -> None:
    a, b = _trainer(tiny_llama, cases[0]), _trainer(tiny_llama, cases[0])
    zero = np.zeros(a.num_parameters, np.float32)
    assert np.array_equal(a.init, b.init)  # the seeded start is the federation's
    before = a.eval_loss(zero)
    trained = a.train(zero, 15)
    assert a.eval_loss(trained) < before - 0.1
    assert np.array_equal(trained, b.train(zero, 15))


def test_ffa_shares_only_b_and_the_average_adapter_is_exactly_fedavg(tiny_llama, cases) -> None:
    """FFA-LoRA on a causal LM: A frozen from the seed, so the average of two clients' adapters
    applies exactly the average of their weight updates (the plaintext path, to 1e-6)."""
    one, two = _trainer(tiny_llama, cases[0], seed=1), _trainer(tiny_llama, cases[1], seed=2)
    assert all("lora_B" in name for name, _ in one.shared)
    zero = np.zeros(one.num_parameters, np.float32)
    v1, v2 = one.train(zero, 5), two.train(zero, 5)

    def updates(vector: np.ndarray) -> dict[str, torch.Tensor]:
        one.load_vector(vector)
        out = {}
        for name, module in one.model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a = module.lora_A["default"].weight.detach().double()
                b = module.lora_B["default"].weight.detach().double()
                out[name] = b @ a * module.scaling["default"]
        return out

    d1, d2 = updates(v1), updates(v2)
    mean = updates(((v1.astype(np.float64) + v2) / 2).astype(np.float32))
    assert len(mean) == 2 * len(TARGETS)
    for name, update in mean.items():
        assert torch.allclose(update, (d1[name] + d2[name]) / 2, atol=1e-6), name


def test_fedavg_ab_shares_a_and_b(tiny_llama, cases) -> None:
    trainer = _trainer(tiny_llama, cases[0], lora={"aggregation": "fedavg_ab"})
    names = [n for n, _ in trainer.shared]
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)


def test_the_adapter_round_trips_through_peft_format(tmp_path, tiny_llama, cases) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = _trainer(tiny_llama, cases[0])
    vector = trainer.train(np.zeros(trainer.num_parameters, np.float32), 5)
    trainer.save_adapter(vector, tmp_path / "adapter")
    batch = trainer._batch(trainer.examples[:3])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=batch["input_ids"]).logits
    # What a user does with an exported adapter: the base from disk and PeftModel.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"]).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert np.allclose(trainer.vector_from_adapter(tmp_path / "adapter"), vector, atol=1e-7)


def test_answers_are_scored_yes_or_no() -> None:
    assert answer_of("Yes — a risky merchant.") == "yes"
    assert answer_of(" no, ordinary") == "no"
    assert answer_of("maybe") is None and answer_of("") is None
    scores = yes_no_scores(["yes", "no", None, "yes"], ["yes", "yes", "no", "no"])
    assert scores["accuracy"] == 0.25
    assert scores["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_a_folder_that_is_not_a_causal_lm_is_refused_in_one_line(tmp_path, cases) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    bert = tmp_path / "bert"
    BertForSequenceClassification(
        BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                   intermediate_size=8)
    ).save_pretrained(bert)  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"is a 'bert' model \(BertForSequenceClassification\), not a causal language model",
    ):
        _trainer(bert, cases[0][:2])
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"has no config\.json; it holds model\.Q4\.gguf"):
        _trainer(gguf, cases[0][:2])
    with pytest.raises(ConfigError, match="not a folder"):
        _trainer(tmp_path / "nowhere", cases[0][:2])


def test_a_4bit_base_is_refused_without_a_gpu(tiny_llama, cases) -> None:
    with pytest.raises(ConfigError, match=r"model\.quantization: 4bit .* CUDA GPU"):
        _trainer(tiny_llama, cases[0][:2], quantization="4bit")


def test_a_gguf_that_transformers_cannot_read_is_refused_in_one_line(tmp_path) -> None:
    from fedlora.client._causal import convert_gguf

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ConfigError, match=r"broken\.gguf: .*") as refused:
        convert_gguf(bad, tmp_path / "out")
    assert "\n" not in str(refused.value)


def test_the_tiny_base_folder_is_the_same_whoever_builds_it(tmp_path, cases) -> None:
    from fedlora.client._spec import folder_digest

    corpus = [t for bank in cases for r in bank for t in r.values()]
    write_tiny_llama(tmp_path / "a", corpus)
    write_tiny_llama(tmp_path / "b", corpus)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert "transformers_version" not in config


# --- found by review ------------------------------------------------------------------------


def _copy_base(tiny_llama: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(tiny_llama, to)
    return to


def test_a_base_folder_that_could_run_code_is_refused_before_anything_is_loaded(
    tmp_path, tiny_llama, cases
) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\n"
    remote = _copy_base(tiny_llama, tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text(code)
    with pytest.raises(ConfigError, match=r"names custom code \(auto_map\)"):
        _trainer(remote, cases[0][:2])
    scripts = _copy_base(tiny_llama, tmp_path / "scripts")
    (scripts / "tokenization_evil.py").write_text(code)
    with pytest.raises(ConfigError, match=r"holds Python files \(tokenization_evil\.py\)"):
        _trainer(scripts, cases[0][:2])
    tokenizer = _copy_base(tiny_llama, tmp_path / "tokenizer")
    doc = json.loads((tokenizer / "tokenizer_config.json").read_text())
    doc["auto_map"] = {"AutoTokenizer": ["evil.Tok", None]}
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="names custom code"):
        _trainer(tokenizer, cases[0][:2])
    assert not marker.exists()


def test_broken_or_partial_base_folders_are_refused_in_one_line(
    tmp_path, tiny_llama, cases
) -> None:
    torn = _copy_base(tiny_llama, tmp_path / "torn")
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    pickled = _copy_base(tiny_llama, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    untokenized = _copy_base(tiny_llama, tmp_path / "untokenized")
    (untokenized / "tokenizer.json").unlink()
    for folder, message in [
        (torn, "cannot load a causal LM from"),
        (pickled, "has no .safetensors weights"),
        (untokenized, "has no tokenizer"),
    ]:
        with pytest.raises(ConfigError, match=message) as refused:
            _trainer(folder, cases[0][:2])
        assert "\n" not in str(refused.value)


def test_the_frozen_a_matrices_do_not_depend_on_the_base_models_dtype(tiny_llama) -> None:
    """A GPU member loads the base in bfloat16; its frozen A must be the CPU member's."""
    from transformers import AutoModelForCausalLM

    from fedlora.client._lora import adapter_init_digest, lora_model

    spec = _spec(tiny_llama)
    digests = []
    for dtype in (torch.float32, torch.bfloat16):
        base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
        digests.append(adapter_init_digest(lora_model(base, spec.lora, task_type="CAUSAL_LM")))
    assert digests[0] == digests[1]


def test_the_spec_names_the_seeded_start_and_a_4bit_template_needs_no_gpu(
    tmp_path, tiny_llama
) -> None:
    import dataclasses

    from fedlora.client._spec import blank_trainer, model_spec

    training = TrainingConfig(device="cpu")
    spec = _spec(tiny_llama)
    one = model_spec(spec, 2, blank_trainer(spec, training))
    other = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, seed=5))
    assert (
        one["model.lora.init"]
        != model_spec(other, 2, blank_trainer(other, training))["model.lora.init"]
    )
    quantized = dataclasses.replace(spec, quantization="4bit")
    q = model_spec(quantized, 2, blank_trainer(quantized, training))  # on a CPU, for the organizer
    assert q["model.quantization"] == "4bit" and q["model.layout"] == one["model.layout"]


def test_an_adapter_of_another_model_or_seed_is_refused_and_a_vector_of_another_size_too(
    tmp_path, tiny_llama, cases
) -> None:
    trainer = _trainer(tiny_llama, cases[0][:8])
    vector = trainer.train(np.zeros(trainer.num_parameters, np.float32), 2)
    trainer.save_adapter(vector, tmp_path / "adapter")
    for kw, message in [
        ({"lora": {"seed": 5}}, "other frozen A matrices"),
        ({"lora": {"alpha": 64}}, "lora_alpha 8, this configuration's is 64"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _trainer(tiny_llama, cases[0][:8], **kw).vector_from_adapter(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="not an adapter of the model this configuration"):
        trainer.load_vector(np.zeros(trainer.num_parameters + 1, np.float32))


def test_gpt2_style_projections_are_targets_too(tmp_path, tiny_llama, cases) -> None:
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=600, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
            folder
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_llama / name).exists():
            shutil.copy(tiny_llama / name, folder / name)
    training = TrainingConfig(batch_size=2, device="cpu")
    spec = ModelSpec(
        kind="causal-lm",
        base_model=folder,
        max_length=192,
        lora=LoraSpec(rank=2, targets=("c_attn",)),
    )
    trainer = CausalLmTrainer(spec, training, [Instruction(**r) for r in cases[0][:4]])
    assert trainer.num_parameters > 0


def test_instruction_files_are_read_with_the_fixes_named(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a", "response": "yes"}\n')  # a BOM
    assert load_instructions(path, "prompt", "response")[0].prompt == "a"
    path.write_text('[{"prompt": "a", "response": "b"}]\n')
    with pytest.raises(ConfigError, match="one object per line, not one JSON array"):
        load_instructions(path, "prompt", "response")
    path.write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(
        ConfigError,
        match=r"it has 'instruction', 'output'; name the fields with data\.prompt_column",
    ):
        load_instructions(path, "prompt", "response")
    path.write_text(json.dumps({"prompt": "x" * (1 << 20), "response": "b"}) + "\n")
    with pytest.raises(ConfigError, match="line 1 is over 1,048,576 characters"):
        load_instructions(path, "prompt", "response")


def test_a_long_prompt_loses_its_start_and_keeps_its_answer(tiny_llama, cases) -> None:
    trainer = _trainer(tiny_llama, cases[0][:2])
    record = Instruction("filler " * 300 + cases[0][0]["prompt"], cases[0][0]["response"])
    (example,), cut, dropped = encode(trainer.tokenizer, [record], 120)
    assert (cut, dropped) == (1, 0) and len(example.input_ids) == 120
    learned = [t for t in example.labels if t != IGNORE]
    assert trainer.tokenizer.decode(learned[:-1]) == record.response
    assert trainer.tokenizer.decode(example.input_ids).endswith(
        "<|im_start|>assistant\n" + record.response + "<|im_end|>"
    )


def test_answers_on_their_own_line_are_read() -> None:
    assert answer_of("Yes\n\nThe amount is high.") == "yes"
    assert answer_of("**No**, ordinary.") == "no"
    assert answer_of("Nothing suspicious") is None


def test_an_answer_that_reasons_first_is_read_after_the_dash() -> None:
    assert answer_of("alerts: night, abroad, merchant (three) — yes: a risky merchant.") == "yes"
    assert answer_of("alerts: none (none) — no: an ordinary purchase.") == "no"
    assert answer_of("alerts: night (one) — maybe") is None
    assert answer_of("alerts: night, abroad (two)") is None  # cut off before deciding
    assert answer_of("x-ray — no") == "no"  # a hyphen that starts no decision is passed over


def test_fraud_cases_follow_the_documented_rule() -> None:
    """The alerts a case shows decide most of it, not all (weak signals and noise count): the
    workload rewards reading the case, and a model that only says "no" scores F1 0."""
    import re

    records = [r for bank in datasets.fraud_cases(5, 300, seed=3) for r in bank]
    by_count: dict[int, list[bool]] = {}
    for r in records:
        shown = int(re.search(r"Monitoring alerts \((\d)\)", r["prompt"]).group(1))
        said = re.match(r"alerts: .* \((\w+)\) — (yes|no): ", r["response"])
        assert said, r["response"]
        assert said.group(1) == datasets._COUNTS[shown]
        by_count.setdefault(shown, []).append(said.group(2) == "yes")
    assert np.mean(by_count[0]) == 0.0 and np.mean(by_count[4]) == 1.0
    assert 0.05 < np.mean(by_count[2]) < 0.5 < np.mean(by_count[3]) < 0.95
