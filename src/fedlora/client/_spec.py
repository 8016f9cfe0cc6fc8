"""A client's federation spec: the settings of its model that every client must share.

Computed from the client's own configuration and the model it actually loaded (so a base model
folder that differs by one byte, or a CSV whose columns the base model does not know, shows up).
:mod:`fedlora.protocol._spec` compares it with the federation's at Join; ``fedlora model
template`` writes the federation's from one agreed client configuration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fedlora.config import ClientConfig, ModelSpec, TrainingConfig


def folder_digest(folder: Path) -> str:
    """SHA-256 over a folder's files: relative names and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue  # caches and lock files are not the model
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def federation_spec(config: ClientConfig, trainer: Any) -> dict[str, Any]:
    """The spec of the model ``trainer`` loaded for ``config`` (dotted YAML names)."""
    return model_spec(config.model, config.training.num_classes, trainer)


def model_spec(model: ModelSpec, num_classes: int, trainer: Any) -> dict[str, Any]:
    """The spec of the model ``trainer`` loaded for the ``model`` section."""
    spec: dict[str, Any] = {
        "model.kind": model.kind,
        "model.num_parameters": int(trainer.num_parameters),
        "training.num_classes": num_classes,
    }
    features = getattr(trainer, "feature_names", None)
    if features is not None:
        spec["data.features"] = list(features)
    if model.kind != "linear":
        assert model.base_model is not None
        lora = model.lora
        spec.update(
            {
                "model.base_model": folder_digest(model.base_model),
                "model.lora.rank": lora.rank,
                "model.lora.alpha": lora.alpha,
                "model.lora.targets": list(lora.targets),
                "model.lora.aggregation": lora.aggregation,
                "model.lora.seed": lora.seed,
                "model.layout": hashlib.sha256(
                    repr(getattr(trainer, "layout", [])).encode()
                ).hexdigest(),
                # every LoRA matrix and head the adapter starts from (a peft or torch that
                # seeds differently would make the offsets meaningless together)
                "model.lora.init": getattr(trainer, "init_digest", ""),
            }
        )
    if model.kind in ("text", "causal-lm"):
        spec["model.max_length"] = model.max_length
    if model.quantization != "none":
        spec["model.quantization"] = model.quantization
    return spec


def write_template(config: ClientConfig, folder: Path) -> dict[str, Any]:
    """Write the coordinator's adapter template and the federation spec for ``config``'s model."""
    return write_model_template(config.model, config.training, folder)


def blank_trainer(model: ModelSpec, training: TrainingConfig) -> Any:
    """The LoRA trainer of a ``model`` section, built on one blank example: its seeded adapter,
    layout and feature names do not depend on data (the organizer of a federation, and a Flower
    node computing its spec, hold none of a client's rows).

    Raises:
        ConfigError: ``model.kind`` is linear (no adapter), or the base model cannot be loaded.
    """
    import json

    import numpy as np

    from fedlora.client._lora import LoraTrainer, tabular_features
    from fedlora.errors import ConfigError

    if model.kind == "linear" or model.base_model is None:
        raise ConfigError(
            "model.kind linear has no adapter to template; use tabular, text or causal-lm"
        )
    if model.kind == "causal-lm":
        import dataclasses

        from fedlora.client._causal import CausalLmTrainer, Instruction

        # The layout and the seeded start do not depend on a 4-bit base (an organizer without
        # a GPU writes the template of a QLoRA federation); the spec still names it.
        plain = dataclasses.replace(model, quantization="none")
        return CausalLmTrainer(plain, training, [Instruction("?", "?")], quiet=True)
    labels = np.zeros(1, dtype=np.int64)
    features: Any
    names = None
    if model.kind == "tabular":
        try:
            width = json.loads((model.base_model / "config.json").read_text())["in_features"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model.base_model: cannot load {model.base_model}: {exc}") from None
        features = np.zeros((1, int(width)), dtype=np.float32)
        names = tabular_features(model.base_model)
    else:
        features = [""]
    trainer = LoraTrainer(model, training, features, labels)
    trainer.feature_names = names
    return trainer


def write_model_template(
    model: ModelSpec, training: TrainingConfig, folder: Path
) -> dict[str, Any]:
    """Write the adapter template and the federation spec for a ``model`` section; no data needed.

    Returns the template's layout (``num_parameters`` among it).

    Raises:
        ConfigError: ``model.kind`` is linear (no adapter), or the base model cannot be loaded.
    """
    import json

    from fedlora.client._lora import write_adapter_template
    from fedlora.protocol import SPEC_FILE

    trainer = blank_trainer(model, training)
    layout = write_adapter_template(trainer, folder)
    spec = model_spec(model, training.num_classes, trainer)
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return layout
