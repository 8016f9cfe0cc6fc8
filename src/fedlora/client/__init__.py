"""fedlora.client — joins a federation: local training, encode/encrypt/sign, partial decryption."""

from __future__ import annotations

from fedlora.client._session import Client, Federation
from fedlora.client._training import (
    LinearTrainer,
    LocalTrainer,
    load_csv,
    load_text,
    make_trainer,
    pick_device,
)

__all__ = [
    "Client",
    "Federation",
    "LinearTrainer",
    "LocalTrainer",
    "load_csv",
    "load_text",
    "make_trainer",
    "pick_device",
]
