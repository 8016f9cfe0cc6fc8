"""fedlora.client — joins a federation: local training, sealing and signing, partial decryption.

:class:`Client` orchestrates; the wire is a :class:`Transport` (:class:`GrpcTransport` by
default). Training needs the ``[client]`` extra (torch, peft, transformers).
"""

from __future__ import annotations

from fedlora.client._grpc import GrpcTransport, channel_for
from fedlora.client._session import Client, Federation
from fedlora.client._training import (
    LinearTrainer,
    LocalTrainer,
    load_csv,
    load_text,
    make_trainer,
    pick_device,
)
from fedlora.client._transport import Transport

__all__ = [
    "Client",
    "Federation",
    "GrpcTransport",
    "LinearTrainer",
    "LocalTrainer",
    "Transport",
    "channel_for",
    "load_csv",
    "load_text",
    "make_trainer",
    "pick_device",
]
