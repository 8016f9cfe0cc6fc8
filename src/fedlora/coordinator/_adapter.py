"""Global adapters in peft's own format, written by the coordinator without torch.

A template folder (``fedlora model template``) holds version 0 of the adapter as peft saves it
(``adapter_config.json`` + ``adapter_model.safetensors``) and ``fedlora_layout.json``, which maps
each slice of the shared vector to a tensor in that file. Version v is the template with each
mapped tensor shifted by its slice of the global vector (the vector holds offsets from the
seeded initial adapter).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedlora.adapter_layout import LAYOUT_FILE, LAYOUT_FORMAT
from fedlora.adapter_layout import WEIGHTS_FILE as WEIGHTS
from fedlora.errors import ConfigError


class AdapterTemplate:
    def __init__(self, folder: Path, num_parameters: int) -> None:
        try:
            layout = json.loads((folder / LAYOUT_FILE).read_text())
            self.tensors = load_file(str(folder / WEIGHTS))
            self.config = (folder / "adapter_config.json").read_bytes()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"model.adapter_template: {folder} is not an adapter template: {exc}"
            ) from None
        if layout.get("format") != LAYOUT_FORMAT or layout.get("num_parameters") != num_parameters:
            raise ConfigError(
                f"model.adapter_template: {folder} describes {layout.get('num_parameters')} shared parameters, "
                f"model.num_parameters is {num_parameters}"
            )
        self.entries = [(e["key"], tuple(e["shape"]), e["offset"]) for e in layout["entries"]]
        for key, shape, _ in self.entries:
            if key not in self.tensors or tuple(self.tensors[key].shape) != shape:
                raise ConfigError(
                    f"model.adapter_template: tensor {key} is missing or has another shape"
                )
        self.folder = folder

    def write(self, vector: np.ndarray, out: Path) -> bytes:
        """Write the adapter for ``vector`` to ``out``; return the SHA-256 of its weights file."""
        tensors = dict(self.tensors)
        for key, shape, offset in self.entries:
            size = int(np.prod(shape))
            base = self.tensors[key]
            tensors[key] = (
                base.astype(np.float64) + vector[offset : offset + size].reshape(shape)
            ).astype(base.dtype)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / "adapter_config.json").write_bytes(self.config)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return hashlib.sha256((out / WEIGHTS).read_bytes()).digest()
