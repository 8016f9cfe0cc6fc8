"""fedlora.client — joins a federation: local training, sealing and signing, partial decryption.

:class:`Client` orchestrates; the wire is a :class:`Transport` (:class:`GrpcTransport` by
default). The training names (torch, peft, transformers: the ``[client]`` extra) and the gRPC
transport are imported on first use, so the protocol side of a client (and the Flower mod, which
has its own transport) loads without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlora.client._member import Federation
from fedlora.client._session import Client
from fedlora.client._transport import Transport

if TYPE_CHECKING:
    from fedlora.client._grpc import GrpcTransport, channel_for
    from fedlora.client._lora import TabularNet
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
    "GrpcTransport",
    "LinearTrainer",
    "LocalTrainer",
    "TabularNet",
    "Transport",
    "channel_for",
    "load_csv",
    "load_text",
    "make_trainer",
    "pick_device",
]

_TRAINING = {
    "LinearTrainer",
    "LocalTrainer",
    "load_csv",
    "load_text",
    "make_trainer",
    "pick_device",
}


def __getattr__(name: str) -> Any:
    if name == "TabularNet":  # the tabular base model class: load a base or merged model with it
        from fedlora.client._lora import TabularNet

        return TabularNet
    if name in _TRAINING:
        from fedlora.client import _training

        return getattr(_training, name)
    if name in ("GrpcTransport", "channel_for"):  # grpc: only for the networked client
        from fedlora.client import _grpc

        return getattr(_grpc, name)
    raise AttributeError(f"module 'fedlora.client' has no attribute {name!r}")
