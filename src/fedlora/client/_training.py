"""Local training behind a small interface; the LoRA issue plugs real adapters in here.

A trainer exposes the *shared* parameters as one flat float32 vector: it loads the global
vector, runs ``steps`` optimizer steps on local data and returns the new vector. Only that vector
(as an encrypted delta) ever leaves the client.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fedlora.config import ClientConfig
from fedlora.errors import ConfigError


class LocalTrainer(Protocol):
    num_parameters: int
    num_examples: int

    def train(
        self, global_vector: np.ndarray, steps: int, on_step: object = None
    ) -> np.ndarray: ...

    def evaluate(self, vector: np.ndarray) -> float: ...

    def reseed(self, seed: int) -> None:
        """Draw the next training run's batches from ``seed`` (the session gives every run its
        own: see :func:`fedlora.client._session.sampler_seed`)."""


def csv_columns(path: Path, label_column: str) -> list[str]:
    """The feature column names of a CSV (its header without the label column), in file order."""
    header = _read_csv(path)[0]
    if label_column not in header:
        raise ConfigError(
            f"data.label_column: {path} has no column {label_column!r} (columns: {header})"
        )
    return [c for c in header if c != label_column]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except OSError as exc:
        raise ConfigError(f"data.path: cannot read {path}: {exc.strerror}") from None
    if not header:
        raise ConfigError(f"data.path: {path} has no header row")
    return header, rows


def load_csv(
    path: Path, label_column: str, num_classes: int, columns: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric features and integer labels from a CSV with a header row.

    ``columns`` is the feature schema the base model was built on: features are taken by name
    in that order (a CSV with its columns in another order loads the same), and a CSV that lacks
    one of them, or has others, is refused. Without it, every non-label column in file order.

    Raises:
        ConfigError: the file is missing, has no such label column, other feature columns than
            ``columns``, non-numeric cells or labels outside 0..num_classes-1 (the message names
            the row and column).
    """
    header, rows = _read_csv(path)
    if label_column not in header:
        raise ConfigError(
            f"data.label_column: {path} has no column {label_column!r} (columns: {header})"
        )
    li = header.index(label_column)
    names = [c for c in header if c != label_column]
    if columns is not None and sorted(names) != sorted(columns):
        missing = [c for c in columns if c not in names]
        extra = [c for c in names if c not in columns]
        raise ConfigError(
            f"data.path: {path} does not have the base model's feature columns"
            + (f"; missing {missing}" if missing else "")
            + (f"; not in the base model {extra}" if extra else "")
            + f" (the base model was built on {list(columns)})"
        )
    order = [header.index(c) for c in (columns if columns is not None else names)]
    features, labels = [], []
    for n, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ConfigError(
                f"data.path: {path} line {n} has {len(row)} cells, the header has {len(header)}"
            )
        try:
            labels.append(int(float(row[li])))
            features.append([float(row[i]) for i in order])
        except ValueError:
            raise ConfigError(f"data.path: {path} line {n} has a non-numeric cell") from None
    if not rows:
        raise ConfigError(f"data.path: {path} has no rows")
    y = np.array(labels, dtype=np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError(f"data.path: labels in {path} must be 0..{num_classes - 1}")
    return np.array(features, dtype=np.float32), y


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: cuda was asked for but torch sees no CUDA device")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


class LinearTrainer:
    """Softmax regression on tabular data: parameters = weight (classes × features) + bias."""

    def __init__(self, config: ClientConfig) -> None:
        x, y = load_csv(config.data.path, config.data.label_column, config.training.num_classes)
        self.feature_names = csv_columns(config.data.path, config.data.label_column)
        self.device = pick_device(config.training.device)
        self.features = x.shape[1]
        self.classes = config.training.num_classes
        self.num_parameters = self.classes * self.features + self.classes
        self.num_examples = len(y)
        self.x = torch.from_numpy(x).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.batch_size = config.training.batch_size
        self.lr = config.training.learning_rate
        self.generator = torch.Generator().manual_seed(config.training.seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def _model(self, vector: np.ndarray) -> torch.nn.Linear:
        model = torch.nn.Linear(self.features, self.classes).to(self.device)
        w = torch.from_numpy(np.asarray(vector, dtype=np.float32))
        with torch.no_grad():
            model.weight.copy_(w[: self.classes * self.features].view(self.classes, self.features))
            model.bias.copy_(w[self.classes * self.features :])
        return model

    @staticmethod
    def _vector(model: torch.nn.Linear) -> np.ndarray:
        return (
            torch.cat([model.weight.detach().flatten(), model.bias.detach()])
            .cpu()
            .numpy()
            .astype(np.float32)
        )

    def train(self, global_vector: np.ndarray, steps: int, on_step: object = None) -> np.ndarray:
        model = self._model(global_vector)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr)
        for _ in range(steps):
            idx = torch.randint(
                0,
                self.num_examples,
                (min(self.batch_size, self.num_examples),),
                generator=self.generator,
            )
            idx = idx.to(self.device)
            loss = torch.nn.functional.cross_entropy(model(self.x[idx]), self.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if callable(on_step):
                on_step()
        return self._vector(model)

    def evaluate(self, vector: np.ndarray) -> float:
        with torch.no_grad():
            predictions = self._model(vector)(self.x).argmax(dim=1)
        return float((predictions == self.y).float().mean())


def load_text(
    path: Path, text_column: str, label_column: str, num_classes: int
) -> tuple[list[str], np.ndarray]:
    """Texts and integer labels from a CSV (header row) or JSONL file.

    Raises:
        ConfigError: missing file or column, or labels outside 0..num_classes-1 (naming the line).
    """
    import json

    texts, labels = [], []
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            with open(path) as fh:
                rows = [(n, json.loads(line)) for n, line in enumerate(fh, start=1) if line.strip()]
        else:
            with open(path, newline="") as fh:
                rows = list(enumerate(csv.DictReader(fh), start=2))
    except OSError as exc:
        raise ConfigError(f"data.path: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data.path: {path} line {exc.lineno} is not JSON") from None
    for n, row in rows:
        if not isinstance(row, dict) or text_column not in row or label_column not in row:
            raise ConfigError(
                f"data.path: {path} line {n} lacks {text_column!r} or {label_column!r}"
            )
        try:
            label = int(row[label_column])
        except (TypeError, ValueError):
            raise ConfigError(f"data.path: {path} line {n} has a non-integer label") from None
        if not 0 <= label < num_classes:
            raise ConfigError(
                f"data.path: {path} line {n} has label {label}, outside 0..{num_classes - 1}"
            )
        texts.append(str(row[text_column]))
        labels.append(label)
    if not texts:
        raise ConfigError(f"data.path: {path} has no rows")
    return texts, np.array(labels, dtype=np.int64)


def make_trainer(config: ClientConfig) -> LocalTrainer:
    """The trainer ``model.kind`` asks for, on this client's local data."""
    kind = config.model.kind
    if kind == "linear":
        return LinearTrainer(config)
    from fedlora.client._lora import (
        LoraTrainer,  # torch + peft (+ transformers) load only when used
    )

    if kind == "tabular":
        from fedlora.client._lora import tabular_features

        assert config.model.base_model is not None  # the config loader requires it
        columns = tabular_features(config.model.base_model)
        x, y = load_csv(
            config.data.path, config.data.label_column, config.training.num_classes, columns
        )
        trainer = LoraTrainer(config.model, config.training, x, y)
        trainer.feature_names = columns  # None: an older base model that names no columns
        return trainer
    if kind == "causal-lm":
        from fedlora.client._causal import CausalLmTrainer, load_instructions

        records = load_instructions(
            config.data.path, config.data.prompt_column, config.data.response_column
        )
        return CausalLmTrainer(config.model, config.training, records, source=str(config.data.path))
    texts, y = load_text(
        config.data.path,
        config.data.text_column,
        config.data.label_column,
        config.training.num_classes,
    )
    return LoraTrainer(config.model, config.training, texts, y)
