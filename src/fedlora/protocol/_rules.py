"""Aggregation rules: how a contribution is weighted and how the server applies the mean.

Under encryption the coordinator only ever sees Σ wᵢ·Δᵢ (decrypted once, by a quorum), so a rule
can run there only if it is linear in the deltas: the weighted mean and an affine server step on
it. Robust rules (median, trimmed mean, norm filtering) need the individual deltas and exist only
for plaintext federations. The types say so: :class:`fedlora.protocol.PaillierSum` takes a
:class:`LinearRule`; a non-linear :class:`AggregationRule` fits only :class:`PlaintextSum`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]


class AggregationRule(abc.ABC):
    """Client-side weighting and the server's update from the round's mean delta."""

    name: str = "rule"

    def weight(self, num_examples: int, max_weight: int) -> int:
        """A contribution's integer weight in 1..max_weight (default: its examples, capped)."""
        return max(1, min(num_examples, max_weight))

    @abc.abstractmethod
    def update(self, current: Vector, mean_delta: Vector) -> Vector:
        """The next global parameters from the current ones and the weighted mean delta."""


class LinearRule(AggregationRule):
    """A rule that needs only the weighted sum of the deltas (so it runs under encryption)."""


@dataclass(frozen=True)
class FedAvg(LinearRule):
    """FedAvg (McMahan et al. 2017): global + server_lr · example-weighted mean delta."""

    server_lr: float = 1.0
    name: str = "fedavg"

    def update(self, current: Vector, mean_delta: Vector) -> Vector:
        return current + self.server_lr * mean_delta
