"""``fedlora model`` and ``fedlora export``: base models, adapter templates, final models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedlora.config import load_client_config
from fedlora.errors import FedLoraError

console = Console(stderr=True)


def init_tabular(
    references: list[Path], label_column: str, hidden: int, classes: int, seed: int, out: Path
) -> int:
    """A tabular base model whose input standardisation comes from reference CSVs.

    In a real federation the reference is public or synthetic data of the agreed schema (or
    statistics the members agreed to share); a client's private data must not be it.
    """
    import torch

    from fedlora.client import load_csv
    from fedlora.client._lora import TabularNet

    if out.exists() and any(out.iterdir()):
        raise FedLoraError(f"{out} is not empty; refusing to overwrite a base model")
    xs = [load_csv(p, label_column, classes)[0] for p in references]
    x = np.concatenate(xs)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    torch.manual_seed(seed)
    TabularNet(x.shape[1], hidden, classes, mean.tolist(), std.tolist()).save_pretrained(out)
    console.print(
        f"wrote a tabular base model ({x.shape[1]} features, hidden {hidden}, {classes} classes) to {out}"
    )
    return 0


def template(config_path: Path, out: Path) -> int:
    """The coordinator's adapter template for the model a client config describes."""
    from fedlora.client import make_trainer
    from fedlora.client._lora import LoraTrainer, write_adapter_template

    trainer = make_trainer(load_client_config(config_path))
    if not isinstance(trainer, LoraTrainer):
        raise FedLoraError("model.kind linear has no adapter to template; use tabular or text")
    layout = write_adapter_template(trainer, out)
    console.print(
        f"wrote the adapter template to {out}: set model.num_parameters: {layout['num_parameters']} and "
        f"model.adapter_template: {out} in the coordinator's config"
    )
    return 0


def export(config_path: Path, out: Path, version: int | None, merge: bool) -> int:
    """Fetch a global adapter from the coordinator and write it in peft format, or merged."""
    from fedlora.client import Client
    from fedlora.client._lora import LoraTrainer

    config = load_client_config(config_path)
    client = Client(config, console=console)
    if not isinstance(client.trainer, LoraTrainer):
        raise FedLoraError("model.kind linear has no adapter to export; use tabular or text")
    client.join()
    status = client.transport.round_status()
    version = status.global_version if version is None else version
    digest = status.global_digest if version == status.global_version else None
    vector = client.download_global(version, digest)
    trainer = client.trainer
    if out.exists() and any(out.iterdir()):
        raise FedLoraError(f"{out} is not empty; refusing to overwrite")
    if merge:
        trainer.load_vector(vector)
        merged: Any = trainer.model.merge_and_unload()
        merged.save_pretrained(out)
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(out)
        what = "merged model"
    else:
        trainer.save_adapter(vector, out)
        what = "adapter (load with PeftModel.from_pretrained)"
    console.print(f"wrote global version {version} as a {what} to {out}")
    return 0
