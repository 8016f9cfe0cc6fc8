"""LoRA fine-tuning of a causal language model on instructions (``model.kind: causal-lm``).

The base is any local ``AutoModelForCausalLM`` folder (Llama, Qwen, Mistral, DeepSeek…, saved
with ``save_pretrained``); it stays frozen, and only the LoRA adapter is shared, exactly as for
the other kinds (:class:`fedlora.client._lora.SharedAdapter`: FFA-LoRA by default, so the
decrypted sum is exactly FedAvg of the clients' adapters).

Data is JSONL, one instruction per line: ``{"prompt": …, "response": …}``. Each example is the
prompt, written with the tokenizer's chat template when it has one, followed by the response and
the end-of-sequence token; the loss is taken on the response's tokens only (the prompt is
context, not something to learn to say). Examples longer than ``model.max_length`` tokens are
cut at the end; how many were cut is said once when the data is loaded.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlora.client._lora import (
    SEEDED,
    SharedAdapter,
    check_model_folder,
    first_line,
    lora_model,
)
from fedlora.client._training import pick_device
from fedlora.config import ModelSpec, TrainingConfig
from fedlora.errors import ConfigError

IGNORE = -100  # the label of a token the loss does not count (torch's cross-entropy default)
MAX_RECORDS = 1_000_000
MAX_LINE = 1 << 20  # characters in one JSONL record
EVAL_RECORDS = 32  # examples :meth:`CausalLmTrainer.evaluate` answers (generation is slow)


@dataclass(frozen=True)
class Instruction:
    prompt: str
    response: str


def load_instructions(path: Path, prompt_column: str, response_column: str) -> list[Instruction]:
    """The instructions of a JSONL file, one ``{prompt, response}`` object per line.

    Raises:
        ConfigError: a missing or unreadable file, a line that is not a JSON object, or one
            whose prompt or response is missing or not a non-empty string (naming the file,
            the line and the field).
    """
    where = f"data.path: {path}"
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise ConfigError(
            f"{where}: model.kind causal-lm reads JSONL, one object with {prompt_column!r} and "
            f"{response_column!r} per line"
        )
    out = []
    try:
        with open(path, encoding="utf-8-sig") as fh:  # a byte-order mark is not data
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE:
                    raise ConfigError(
                        f"{where} line {number} is over {MAX_LINE:,} characters; one record per "
                        "line, each an instruction and its answer"
                    )
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    hint = (
                        " (the file must be JSONL: one object per line, not one JSON array)"
                        if number == 1 and line.lstrip().startswith("[")
                        else ""
                    )
                    raise ConfigError(f"{where} line {number} is not JSON{hint}") from None
                if not isinstance(row, dict):
                    hint = (
                        " (the file must be JSONL: one object per line, not one JSON array)"
                        if isinstance(row, list)
                        else ""
                    )
                    raise ConfigError(f"{where} line {number} is not a JSON object{hint}")
                fields = []
                for name in (prompt_column, response_column):
                    value = row.get(name)
                    if name not in row:
                        keys = ", ".join(repr(k) for k in list(row)[:6])
                        raise ConfigError(
                            f"{where} line {number} lacks {name!r} (it has {keys}; name the "
                            "fields with data.prompt_column and data.response_column)"
                        )
                    if not isinstance(value, str) or not value.strip():
                        raise ConfigError(
                            f"{where} line {number}: {name!r} is not a non-empty string"
                        )
                    fields.append(value)
                out.append(Instruction(*fields))
                if len(out) > MAX_RECORDS:
                    raise ConfigError(f"{where} has more than {MAX_RECORDS:,} records")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if not out:
        raise ConfigError(f"{where} has no records")
    return out


def load_causal_lm(spec: ModelSpec, device: torch.device) -> tuple[Any, Any]:
    """The frozen base model and its tokenizer from a local folder; never the network.

    Raises:
        ConfigError: no such folder, a GGUF file instead of a model folder, a model that is not
            a causal language model, or a 4-bit base without a CUDA GPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # peft asks transformers a question transformers has renamed; the warning is not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    folder = spec.base_model
    if folder is None or not folder.is_dir():
        raise ConfigError(f"model.base_model: {folder} is not a folder with a saved model")
    check_model_folder(folder)
    if not (folder / "config.json").exists():
        gguf = sorted(folder.glob("*.gguf"))
        hint = (
            f"it holds {gguf[0].name}: turn a GGUF file into a base-model folder once with "
            f"`fedlora model causal-base --gguf {gguf[0]} --out DIR`"
            if gguf
            else "save one with save_pretrained, or `fedlora model causal-base`"
        )
        raise ConfigError(f"model.base_model: {folder} has no config.json; {hint}")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # one line, whatever transformers raises
        raise ConfigError(
            f"model.base_model: cannot read {folder}/config.json: {first_line(exc)}"
        ) from None
    # The saved architecture must be a causal LM's (an encoder such as BERT also has a
    # causal-LM class in transformers, but a BERT classifier is not a language model).
    saved = [str(a) for a in (getattr(config, "architectures", None) or [])]
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in saved)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not causal:
        raise ConfigError(
            f"model.base_model: {folder} is a {config.model_type!r} model "
            f"({', '.join(saved) or 'no architecture named'}), not a causal language model; "
            "model.kind causal-lm needs one that AutoModelForCausalLM loads"
        )
    if not list(folder.glob("*.safetensors")):
        raise ConfigError(
            f"model.base_model: {folder} has no .safetensors weights; fedlora loads weights only "
            "from safetensors files, which hold no code (save the model with save_pretrained)"
        )
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        raise ConfigError(
            f"model.base_model: {folder} has no tokenizer (tokenizer.json or tokenizer.model); "
            "save the model's tokenizer into the same folder"
        )
    cuda = device.type == "cuda"
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": True,
        "dtype": torch.bfloat16 if cuda else torch.float32,
    }
    if spec.quantization == "4bit":
        if not cuda:
            raise ConfigError(
                "model.quantization: 4bit loads the base through bitsandbytes on a CUDA GPU; "
                "this client runs on the CPU (set training.device: cuda on a GPU machine, or "
                "model.quantization: none)"
            )
        try:
            from transformers import BitsAndBytesConfig
        except ImportError:  # pragma: no cover - transformers always has it
            raise ConfigError(
                "model.quantization: 4bit needs transformers' bitsandbytes support"
            ) from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except ImportError as exc:
        raise ConfigError(f"model.quantization: {first_line(exc)}") from None
    except Exception as exc:  # a torn weights file, a tokenizer it cannot build…: one line
        raise ConfigError(
            f"model.base_model: cannot load a causal LM from {folder}: {first_line(exc)}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model reads it: in the tokenizer's chat template (a user turn, then
    the start of the assistant's) when it has one, else the prompt and a newline."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return str(text)
    return prompt + "\n"


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: ``labels`` is ``IGNORE`` on the prompt's tokens."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def encode(
    tokenizer: Any, records: Sequence[Instruction], max_length: int
) -> tuple[list[Encoded], int, int]:
    """Token ids of each example, the loss on the response only. Returns the examples, how many
    were cut at ``max_length``, and how many were dropped because nothing of their response
    was left."""
    out, cut, dropped = [], 0, 0
    eos = tokenizer.eos_token_id
    prompts = [prompt_text(tokenizer, r.prompt) for r in records]
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's BOS.
    special = not getattr(tokenizer, "chat_template", None)
    prompt_ids = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    response_ids = tokenizer([r.response for r in records], add_special_tokens=False)["input_ids"]
    for p, a in zip(prompt_ids, response_ids):
        answer = list(a) + ([eos] if eos is not None else [])
        prompt = list(p)
        if len(prompt) + len(answer) > max_length:
            # Keep the end of the prompt (the question, and the turn the answer follows) and
            # as much of the answer as fits after at least a quarter of the room for it.
            cut += 1
            room = max(max_length // 4, max_length - len(answer))
            prompt = prompt[-room:] if room else []
            answer = answer[: max_length - len(prompt)]
        if not answer:
            dropped += 1
            continue
        out.append(Encoded(tuple(prompt + answer), tuple([IGNORE] * len(prompt) + answer)))
    return out, cut, dropped


ANSWER_TOKENS = 24  # generated per answer when scoring yes/no: room for a short reasoning first


def answer_of(text: str) -> str | None:
    """``"yes"`` or ``"no"``: the decision of an answer, or None for anything else. The decision is
    the answer's first word, or the first word after its first dash (an answer that reasons
    first: ``"alerts: night, abroad (two) — no: …"``)."""
    found = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE) or re.search(
        r"[—–-]\W*(yes|no)\b", text, re.IGNORECASE
    )
    return found.group(1).lower() if found else None


def yes_no_scores(predicted: Sequence[str | None], truth: Sequence[str]) -> dict[str, float]:
    """Accuracy and F1 with "yes" as the positive class; an answer that is neither counts as
    wrong (it is not a "yes")."""
    tp = sum(p == "yes" and t == "yes" for p, t in zip(predicted, truth))
    fp = sum(p == "yes" and t != "yes" for p, t in zip(predicted, truth))
    fn = sum(p != "yes" and t == "yes" for p, t in zip(predicted, truth))
    correct = sum(p == t for p, t in zip(predicted, truth))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": correct / max(1, len(truth)), "f1": f1}


class CausalLmTrainer(SharedAdapter):
    """peft LoRA on a frozen causal LM, trained on instructions; a ``LocalTrainer``."""

    def __init__(
        self,
        spec: ModelSpec,
        training: TrainingConfig,
        records: Sequence[Instruction],
        *,
        source: str = "the data",
        quiet: bool = False,
    ) -> None:
        self.device = pick_device(training.device)
        self.mixed = self.device.type == "cuda"  # bfloat16 on GPUs, full precision on CPU
        with SEEDED:  # torch's seed is global: see LoraTrainer
            base, self.tokenizer = load_causal_lm(spec, self.device)
            if training.gradient_checkpointing:
                base.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            if spec.quantization == "4bit":
                from peft import prepare_model_for_kbit_training

                base = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                    base, use_gradient_checkpointing=training.gradient_checkpointing
                )
            self.model = lora_model(base, spec.lora, task_type="CAUSAL_LM")
            if spec.quantization != "4bit":
                self.model.to(self.device)
        self._share(spec.lora.aggregation == "ffa")
        # Most causal LMs (Llama, Qwen, Mistral…) can project only the last positions.
        forward = self.model.get_base_model().forward
        self._keeps_logits = "logits_to_keep" in inspect.signature(forward).parameters
        self.max_length = spec.max_length
        self._source: Sequence[Instruction] = records
        self.records = list(records)
        self.examples, cut, dropped = encode(self.tokenizer, self.records, spec.max_length)
        if (cut or dropped) and not quiet:
            print(
                f"fedlora: {cut} of {len(self.records)} examples in {source} are longer than "
                f"model.max_length ({spec.max_length} tokens) and are cut (the start of the "
                "prompt first)"
                + (
                    f"; {dropped} kept nothing of their response and are left out"
                    if dropped
                    else ""
                ),
                file=sys.stderr,
            )
        if not self.examples:
            raise ConfigError(
                f"data.path: no example in {source} keeps any of its response within "
                f"model.max_length ({spec.max_length} tokens); raise it"
            )
        self.num_examples = len(self.examples)
        self.batch_size = training.batch_size
        self.accumulation = training.gradient_accumulation
        self.lr = training.learning_rate
        self.generator = torch.Generator().manual_seed(training.seed)
        self.feature_names: list[str] | None = None

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def use_data(self, records: Sequence[Instruction], generator: torch.Generator) -> None:
        """Train on ``records`` with ``generator`` from now on: one model in memory serves
        several simulated clients in turn (only their data and adapters differ)."""
        if records is not self._source:
            examples = encode(self.tokenizer, records, self.max_length)[0]
            if not examples:
                raise ConfigError("no example keeps any of its response within model.max_length")
            self._source, self.records, self.examples = records, list(records), examples
            self.num_examples = len(self.examples)
        self.generator = generator

    # -- batches -----------------------------------------------------------------------------
    def _batch(self, examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded ids, attention mask, positions and labels (``IGNORE`` on padding).

        Left padding puts every example's response at the end of its row, so the vocabulary
        projection — the largest activation of a small LM (batch × tokens × vocabulary) — is
        computed for the last few positions only (:meth:`_loss_sum`). Positions are counted
        from each example's first real token, as generation counts them.
        """
        width = max(len(e.input_ids) for e in examples)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            ids[i, width - n :] = torch.tensor(e.input_ids)
            labels[i, width - n :] = torch.tensor(e.labels)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "labels": labels.to(self.device),
        }

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The summed cross-entropy of the response tokens (next-token, shifted) and their count.

        Only the positions from the earliest response token on are projected onto the
        vocabulary (``logits_to_keep``, where the model takes it)."""
        labels = batch["labels"]
        counted = (labels != IGNORE).any(dim=0).nonzero()
        keep = labels.shape[1] - int(counted[0]) + 1 if len(counted) else 1
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        if self._keeps_logits:
            inputs["logits_to_keep"] = keep  # type: ignore[assignment]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.mixed):
            logits = self.model(**inputs).logits
        logits = logits[:, -keep:]
        targets = labels[:, -keep + 1 :] if keep > 1 else labels[:, :0]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return loss, int((targets != IGNORE).sum())

    # -- training ------------------------------------------------------------------------------
    def train(self, global_vector: np.ndarray, steps: int, on_step: object = None) -> np.ndarray:
        """``steps`` optimizer steps, each over ``gradient_accumulation`` micro-batches of
        ``batch_size`` examples (the loss averaged over all their response tokens)."""
        self.load_vector(global_vector)
        self.model.train()
        optimizer = torch.optim.AdamW([p for _, p in self.shared], lr=self.lr, weight_decay=0.0)
        size = min(self.batch_size, self.num_examples)
        for _ in range(steps):
            batches = [
                self._batch(
                    [
                        self.examples[i]
                        for i in torch.randint(
                            0, self.num_examples, (size,), generator=self.generator
                        ).tolist()
                    ]
                )
                for _ in range(self.accumulation)
            ]
            tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
            optimizer.zero_grad()
            for batch in batches:
                loss, _ = self._loss_sum(batch)
                (loss / max(1, tokens)).backward()
            optimizer.step()
            if callable(on_step):
                on_step()
        return self.vector()

    # -- evaluation ----------------------------------------------------------------------------
    def eval_loss(self, vector: np.ndarray, records: Sequence[Instruction] | None = None) -> float:
        """The mean cross-entropy per response token (``exp`` of it is the perplexity) on
        ``records`` (default: this client's data) under ``vector``."""
        examples = (
            self.examples
            if records is None
            else encode(self.tokenizer, records, self.max_length)[0]
        )
        self.load_vector(vector)
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(examples), 16):
                loss, n = self._loss_sum(self._batch(examples[start : start + 16]))
                total, count = total + float(loss), count + n
        return total / max(1, count)

    def generate(
        self, vector: np.ndarray, prompts: Sequence[str], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers to ``prompts`` under ``vector`` (the prompt in the chat template)."""
        self.load_vector(vector)
        self.model.eval()
        out: list[str] = []
        special = not getattr(self.tokenizer, "chat_template", None)
        pad = int(self.tokenizer.pad_token_id)
        for start in range(0, len(prompts), 16):
            texts = [prompt_text(self.tokenizer, p) for p in prompts[start : start + 16]]
            encoded = self.tokenizer(texts, add_special_tokens=special)["input_ids"]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, e in enumerate(encoded):  # left-padded: every answer starts at the end
                ids[i, width - len(e) :] = torch.tensor(e)
                mask[i, width - len(e) :] = 1
            with (
                torch.no_grad(),
                torch.autocast(
                    device_type=self.device.type, dtype=torch.bfloat16, enabled=self.mixed
                ),
            ):
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
            for row in generated[:, width:]:
                out.append(str(self.tokenizer.decode(row, skip_special_tokens=True)).strip())
        return out

    def answer_scores(
        self, vector: np.ndarray, records: Sequence[Instruction] | None = None
    ) -> dict[str, float]:
        """Accuracy and F1 of the generated yes/no answers against the responses' first word."""
        records = self.records if records is None else list(records)
        # Enough for an answer that reasons before it decides (see answer_of).
        answers = self.generate(vector, [r.prompt for r in records], max_new_tokens=ANSWER_TOKENS)
        truth = [answer_of(r.response) or "" for r in records]
        return yes_no_scores([answer_of(a) for a in answers], truth)

    @property
    def metric_name(self) -> str:
        """What :meth:`evaluate` measures: yes/no answers are scored, anything else by loss."""
        yes_no = all(answer_of(r.response) for r in self.records[:EVAL_RECORDS])
        return "answer accuracy" if yes_no else "eval loss"

    def evaluate(self, vector: np.ndarray) -> float:
        """On (at most 32 of) this client's examples: the accuracy of the generated answers
        where the responses are yes/no answers, else the eval loss per response token."""
        if self.metric_name == "answer accuracy":
            return self.answer_scores(vector, self.records[:EVAL_RECORDS])["accuracy"]
        return self.eval_loss(vector, self.records[:EVAL_RECORDS])


# -- base-model folders ----------------------------------------------------------------------

# Written by save_pretrained but not part of the model: without it two members whose
# transformers versions differ write the same model with the same digest (the federation spec).
_VOLATILE = ("transformers_version",)


def _normalize(folder: Path) -> None:
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.exists():
            doc = json.loads(path.read_text())
            for key in _VOLATILE:
                doc.pop(key, None)
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def convert_gguf(gguf: Path, out: Path) -> dict[str, Any]:
    """A base-model folder (safetensors weights, config, tokenizer) from a GGUF file, which
    transformers dequantizes to float32 as it reads it. Every member who converts the same file
    with the same fedlora gets the same folder, and so the same digest in the federation spec.

    Raises:
        ConfigError: a file transformers cannot read as a causal LM.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, trust_remote_code=False
        )
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
    except ImportError as exc:
        raise ConfigError(f"{gguf}: reading GGUF needs the gguf package ({exc})") from None
    except Exception as exc:  # whatever a foreign or torn file makes transformers raise
        raise ConfigError(
            f"{gguf}: transformers cannot read it as a causal LM: {first_line(exc)}"
        ) from None
    # transformers marks a model read from GGUF as quantized and will not save it; its weights
    # are plain float32 by now, so a model built from the same config takes them as they are.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with SEEDED:
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _normalize(out)
    return {
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
    }


TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_llama(
    folder: Path,
    corpus: Sequence[str],
    *,
    seed: int = 0,
    vocab: int = 512,
    hidden: int = 64,
    layers: int = 2,
) -> dict[str, Any]:
    """A small Llama-architecture causal LM with a byte-level BPE tokenizer trained on
    ``corpus`` and a chat template (ChatML, as SmolLM2's), saved like any Hugging Face model:
    for tests and CI, where a real model would take minutes per step. Built in seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=list(TINY_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    pad, bos, eos = TINY_SPECIALS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=pad, bos_token=bos, eos_token=eos
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with SEEDED:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _normalize(folder)
    return {"architecture": "LlamaForCausalLM", "parameters": model.num_parameters()}
