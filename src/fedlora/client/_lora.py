"""LoRA fine-tuning of a frozen base model with peft; only adapter parameters leave the client.

Aggregation modes (DESIGN.md §5):

* ``ffa`` (default) — FFA-LoRA (Sun et al., "Improving LoRA in Privacy-preserving Federated
  Learning", ICLR 2024): every A matrix is initialised from the federation-wide seed and frozen;
  only B (and the task head) is trained and shared. The adapter's update is then linear in the
  shared parameters, so the encrypted sum is exactly FedAvg of the clients' adapters.
* ``fedavg_ab`` — A and B are both trained and averaged separately (mean(B)·mean(A) is not the
  mean of B·A; kept for comparison).

The shared vector is *parameters minus their seeded initial values*. All clients initialise the
adapter and the task head from the same seed, so averaging these offsets is averaging the
parameters, version 0 of the global adapter is the zero vector, and the coordinator needs no
knowledge of the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from fedlora.adapter_layout import LAYOUT_FILE, LAYOUT_FORMAT
from fedlora.client._training import pick_device
from fedlora.config import LoraSpec, ModelSpec, TrainingConfig
from fedlora.errors import ConfigError

TABULAR_TYPE = "fedlora-tabular-mlp"
SEEDED = threading.Lock()  # torch's seed is global: one adapter is built at a time


class TabularNet(torch.nn.Module):
    """A small MLP base model for tabular data, saved in the Hugging Face folder layout
    (``config.json`` + ``model.safetensors``) so it loads from a local path like any base model.

    Inputs are standardised with fixed, federation-wide constants stored in the config, never
    with one client's own statistics (which would give the same feature a different meaning at
    every institution).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        in_features: int,
        hidden: int,
        num_classes: int,
        mean: list[float],
        std: list[float],
        features: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "model_type": TABULAR_TYPE,
            "in_features": in_features,
            "hidden": hidden,
            "num_classes": num_classes,
            "mean": mean,
            "std": std,
        }
        if features is not None:  # the feature schema: column names, in input order
            self.config["features"] = list(features)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.fc1 = torch.nn.Linear(in_features, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.classifier = torch.nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        h = torch.relu(self.fc1(h))
        h = torch.relu(self.fc2(h))
        return cast(torch.Tensor, self.classifier(h))

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()},
            str(folder / "model.safetensors"),
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TabularNet:
        """Load a base (or merged) model saved by :meth:`save_pretrained`."""
        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            if config.get("model_type") != TABULAR_TYPE:
                raise ConfigError(f"model.base_model: {folder} is not a {TABULAR_TYPE} model")
            net = cls(
                config["in_features"],
                config["hidden"],
                config["num_classes"],
                config["mean"],
                config["std"],
                config.get("features"),
            )
            net.load_state_dict(load_file(str(folder / "model.safetensors")))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"model.base_model: cannot load {folder}: {exc}") from None
        return net


def tabular_features(folder: Path) -> list[str] | None:
    """The feature columns a tabular base model was built on (None: an older model without)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the trainer's loader reports the unreadable model
    features = config.get("features") if isinstance(config, dict) else None
    return [str(f) for f in features] if isinstance(features, list) else None


def write_tabular_base(
    folder: Path,
    reference: np.ndarray,
    *,
    hidden: int,
    num_classes: int,
    seed: int,
    features: list[str] | None = None,
) -> None:
    """A tabular base model whose input standardisation comes from ``reference`` rows.

    In a real federation the reference is public or synthetic data of the agreed schema (or
    statistics the members agreed to share); a client's private data must not be it.
    """
    std = reference.std(axis=0)
    std[std == 0] = 1.0
    torch.manual_seed(seed)
    TabularNet(
        reference.shape[1],
        hidden,
        num_classes,
        reference.mean(axis=0).tolist(),
        std.tolist(),
        features,
    ).save_pretrained(folder)


def check_model_folder(folder: Path) -> None:
    """Refuse a Hugging Face model folder that could run code of its own when loaded: custom
    classes named in its configs (``auto_map``, which transformers would import from the folder
    or a hub with ``trust_remote_code``), or Python files in it. fedlora also never passes
    ``trust_remote_code``; this says so in one line instead of transformers' prompt.

    Raises:
        ConfigError: such a folder.
    """
    for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        try:
            doc = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            continue  # the loader reports an unreadable config
        if isinstance(doc, dict) and "auto_map" in doc:
            raise ConfigError(
                f"model.base_model: {path} names custom code (auto_map); fedlora loads only the "
                "architectures transformers ships, never code from a model folder"
            )
    scripts = sorted(p.name for p in folder.glob("*.py"))
    if scripts:
        raise ConfigError(
            f"model.base_model: {folder} holds Python files ({', '.join(scripts[:3])}); a base "
            "model folder holds configs, tokenizer files and weights only"
        )


def first_line(exc: BaseException) -> str:
    """An exception's message in one line (the first), for a one-line refusal."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_base_model(spec: ModelSpec, num_classes: int) -> tuple[torch.nn.Module, Any]:
    """The frozen base model (and tokenizer for text) from a local folder; never the network."""
    folder = spec.base_model
    if folder is None or not folder.is_dir():
        raise ConfigError(f"model.base_model: {folder} is not a folder with a saved model")
    if spec.kind == "tabular":
        return TabularNet.from_pretrained(folder), None
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new task head is *meant* to be freshly initialised
    hf_logging.disable_progress_bar()
    check_model_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_classes, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many kinds; the member gets one line
        raise ConfigError(
            f"model.base_model: cannot load a Hugging Face model from {folder}: {first_line(exc)}"
        ) from None
    return model, tokenizer


def _head_name(model: torch.nn.Module) -> str:
    names = {n for n, _ in model.named_modules()}
    for candidate in ("classifier", "score", "head"):
        if candidate in names:
            return candidate
    raise ConfigError("model.base_model: no classification head named classifier, score or head")


def lora_model(base: torch.nn.Module, lora: LoraSpec, **extra: Any) -> Any:
    """``base`` wrapped in a peft LoRA adapter whose A matrices start from the federation's seed
    (call it with :data:`SEEDED` held, after seeding anything else the model draws).

    Raises:
        ConfigError: a target that is not a linear layer of the base model.
    """
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections, which peft adapts too

    targets = list(lora.targets)
    layers = (torch.nn.Linear, Conv1D)
    known = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, layers)}
    missing = [t for t in targets if t not in known]
    if missing:
        raise ConfigError(
            f"model.lora.targets: {missing} are not linear layers of the base model (it has {sorted(known)})"
        )
    try:
        model = get_peft_model(
            base,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                target_modules=targets,
                lora_dropout=0.0,
                **extra,
            ),
        )
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"model.lora: peft cannot adapt this base model: {first_line(exc)}"
        ) from None
    seed_adapter(model, lora.seed + 1)
    return model


def seed_adapter(model: Any, seed: int) -> None:
    """Every A matrix from ``seed`` (uniform in ±1/√fan_in, peft's Kaiming-uniform bound) and
    every B zero, in float32 drawn on the CPU, in the modules' order: identical at every client
    whatever its device or its base model's dtype (peft casts A to a bfloat16 base's dtype and
    back, which rounds it differently from a float32 base's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in model.named_modules():
            adapters = getattr(module, "lora_A", None)
            if not isinstance(adapters, torch.nn.ModuleDict) or "default" not in adapters:
                continue
            a = cast(torch.Tensor, adapters["default"].weight)
            bound = 1.0 / math.sqrt(int(a.shape[1]))
            values = torch.rand(tuple(a.shape), generator=generator, dtype=torch.float32)
            a.data = ((values * 2 - 1) * bound).to(a.device)
            b = cast(torch.Tensor, module.lora_B["default"].weight)
            b.data = torch.zeros(tuple(b.shape), dtype=torch.float32, device=b.device)


def adapter_init_digest(model: Any) -> str:
    """SHA-256 of every LoRA matrix (and task head) a freshly seeded adapter starts from, in
    float32: every client's must be the same, or their offsets do not add up (the federation
    spec carries it, so a peft or torch that initialises differently is refused at join)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name or "modules_to_save" in name:
            h.update(name.encode() + b"\0")
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class SharedAdapter:
    """The vector a peft model shares: its trainable parameters minus their seeded start.

    All clients initialise the adapter (and any task head) from the same seed, so averaging
    these offsets is averaging the parameters, and version 0 of the global adapter is zero.
    With ``ffa`` every A matrix is frozen at its seeded value (FFA-LoRA) and only B is shared.
    """

    model: Any
    tokenizer: Any

    def _share(self, ffa: bool) -> None:
        self.ffa = ffa
        self.shared: list[tuple[str, torch.nn.Parameter]] = []
        for name, p in self.model.named_parameters():
            if "lora_A" in name and ffa:
                p.requires_grad_(False)  # FFA-LoRA: A is frozen at its seeded value
            if p.requires_grad:
                self.shared.append((name, p))
        self.init = self._flat()
        self.init_digest = adapter_init_digest(self.model)  # the seeded start, for the spec
        self.num_parameters = int(self.init.size)
        self.layout = [(saved_key(n), list(p.shape)) for n, p in self.shared]

    def _flat(self) -> np.ndarray:
        return (
            torch.cat([p.detach().float().flatten().cpu() for _, p in self.shared])
            .numpy()
            .astype(np.float32)
        )

    def load_vector(self, vector: np.ndarray) -> None:
        """Set the shared parameters to their seeded start plus ``vector``.

        Raises:
            ConfigError: a vector of another length than this model shares (a global version of
                a federation whose model settings differ from this configuration's).
        """
        if np.asarray(vector).size != self.num_parameters:
            raise ConfigError(
                f"a vector of {np.asarray(vector).size:,} values, but this model shares "
                f"{self.num_parameters:,}: it is not an adapter of the model this configuration "
                "describes (another rank, targets or base?)"
            )
        values = torch.from_numpy(
            self.init.astype(np.float64) + np.asarray(vector, dtype=np.float64)
        )
        offset = 0
        with torch.no_grad():
            for _, p in self.shared:
                n = p.numel()
                p.copy_(values[offset : offset + n].view_as(p).to(p.dtype))
                offset += n

    def vector(self) -> np.ndarray:
        return (self._flat().astype(np.float64) - self.init.astype(np.float64)).astype(np.float32)

    def save_adapter(self, vector: np.ndarray, folder: Path) -> None:
        """Write the adapter in peft's own format (``PeftModel.from_pretrained`` loads it)."""
        self.load_vector(vector)
        self.model.save_pretrained(str(folder))

    def vector_from_adapter(self, folder: Path) -> np.ndarray:
        """The shared vector of a peft adapter folder (``save_adapter``'s, or an export's).

        Raises:
            ConfigError: not an adapter of this model: other LoRA settings in its
                ``adapter_config.json``, a missing tensor or another shape, or (with FFA) frozen A
                matrices that are not this configuration's seeded ones.
        """
        path = folder / "adapter_model.safetensors"
        try:
            tensors = load_file(str(path))
            settings = json.loads((folder / "adapter_config.json").read_text())
        except Exception as exc:  # a missing, torn or foreign file: one line
            raise ConfigError(f"{folder}: not a peft adapter: {first_line(exc)}") from None
        config = self.model.peft_config["default"]
        for key, want in (
            ("r", config.r),
            ("lora_alpha", config.lora_alpha),
            ("target_modules", sorted(config.target_modules)),
        ):
            got = settings.get(key)
            got = sorted(got) if isinstance(got, list) else got
            if got != want:
                raise ConfigError(
                    f"{folder} is an adapter with {key} {got}, this configuration's is {want}"
                )
        if self.ffa:  # A is not shared: the adapter's must be the seeded one this model has
            for name, p in self.model.named_parameters():
                if "lora_A" in name:
                    saved = tensors.get(saved_key(name))
                    if saved is None or not torch.equal(saved.float(), p.detach().float().cpu()):
                        raise ConfigError(
                            f"{folder} was trained from other frozen A matrices than this "
                            "configuration's (another model.lora.seed?)"
                        )
        parts = []
        for name, p in self.shared:
            key = saved_key(name)
            tensor = tensors.get(key)
            if tensor is None or list(tensor.shape) != list(p.shape):
                raise ConfigError(
                    f"{folder} is not an adapter of this model: {key} is "
                    + (
                        "missing"
                        if tensor is None
                        else f"{list(tensor.shape)}, not {list(p.shape)}"
                    )
                )
            parts.append(tensor.float().flatten().numpy())
        flat = np.concatenate(parts).astype(np.float64)
        return (flat - self.init.astype(np.float64)).astype(np.float32)


class LoraTrainer(SharedAdapter):
    """peft LoRA on a frozen base model; implements the client's ``LocalTrainer`` interface."""

    def __init__(
        self,
        spec: ModelSpec,
        training: TrainingConfig,
        features: np.ndarray | list[str],
        labels: np.ndarray,
    ) -> None:
        self.device = pick_device(training.device)
        self.mixed = self.device.type == "cuda"  # bfloat16 autocast on GPUs, full precision on CPU
        # Seeding is global in torch: clients built concurrently in one process (threads, a
        # simulation) must not interleave their draws, or their frozen A matrices would differ.
        with SEEDED:
            torch.manual_seed(spec.lora.seed)  # the task head starts identical at every client
            base, self.tokenizer = load_base_model(spec, training.num_classes)
            head = _head_name(base)
            self.model = lora_model(base, spec.lora, modules_to_save=[head]).to(self.device)
        self._share(spec.lora.aggregation == "ffa")
        self.feature_names: list[str] | None = None  # tabular: set by make_trainer
        self.text = spec.kind == "text"
        self.max_length = spec.max_length
        self.features = features
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_examples = len(labels)
        self.batch_size = training.batch_size
        self.lr = training.learning_rate
        self.generator = torch.Generator().manual_seed(training.seed)
        if not self.text:
            self.x = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)

    # -- training --------------------------------------------------------------------------------

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def _batch(self, index: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.text:
            texts = [self.features[i] for i in index.tolist()]
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            return {k: v.to(self.device) for k, v in enc.items()}
        return self.x[index.to(self.device)]

    def _logits(self, batch: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.mixed):
            out = self.model(**batch) if isinstance(batch, dict) else self.model(batch)
        logits = out.logits if hasattr(out, "logits") else out
        return cast(torch.Tensor, logits.float())

    def train(self, global_vector: np.ndarray, steps: int, on_step: object = None) -> np.ndarray:
        """``steps`` optimizer steps (one step = one unit of aggregation_frequency)."""
        self.load_vector(global_vector)
        self.model.train()
        optimizer = torch.optim.AdamW([p for _, p in self.shared], lr=self.lr, weight_decay=0.0)
        for _ in range(steps):
            index = torch.randint(
                0,
                self.num_examples,
                (min(self.batch_size, self.num_examples),),
                generator=self.generator,
            )
            loss = torch.nn.functional.cross_entropy(
                self._logits(self._batch(index)), self.labels[index].to(self.device)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if callable(on_step):
                on_step()
        return self.vector()

    def predict_proba(
        self, vector: np.ndarray, features: np.ndarray | list[str] | None = None
    ) -> np.ndarray:
        """Class probabilities for ``features`` (default: the local data) under ``vector``."""
        self.load_vector(vector)
        self.model.eval()
        data = self.features if features is None else features
        out = []
        with torch.no_grad():
            for start in range(0, len(data), 256):
                index = torch.arange(start, min(start + 256, len(data)))
                if self.text:
                    enc = self.tokenizer(
                        [data[i] for i in index.tolist()],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    )
                    batch: Any = {k: v.to(self.device) for k, v in enc.items()}
                else:
                    batch = torch.as_tensor(
                        np.asarray(data, dtype=np.float32)[start : start + 256]
                    ).to(self.device)
                out.append(torch.softmax(self._logits(batch), dim=1).cpu().numpy())
        return np.concatenate(out)

    def evaluate(self, vector: np.ndarray) -> float:
        predictions = self.predict_proba(vector).argmax(axis=1)
        return float((predictions == self.labels.numpy()).mean())


def saved_key(parameter_name: str) -> str:
    """The key peft's ``save_pretrained`` uses for a trainable parameter of adapter "default"."""
    return parameter_name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def write_adapter_template(trainer: SharedAdapter, folder: Path) -> dict[str, Any]:
    """Save version 0 of the adapter in peft format plus the layout of the shared vector in it.

    The coordinator turns any global vector into a peft adapter with this template alone
    (tensor = template tensor + offset slice), without torch or the base model.
    """
    trainer.save_adapter(np.zeros(trainer.num_parameters, dtype=np.float32), folder)
    entries, offset = [], 0
    for name, p in trainer.shared:
        entries.append({"key": saved_key(name), "shape": list(p.shape), "offset": offset})
        offset += p.numel()
    layout = {"format": LAYOUT_FORMAT, "num_parameters": offset, "entries": entries}
    (folder / LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n")
    return layout
