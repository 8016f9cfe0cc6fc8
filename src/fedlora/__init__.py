"""fedlora: federated LoRA fine-tuning with threshold-Paillier secure aggregation."""

from __future__ import annotations

from fedlora.errors import (
    ConfigError,
    CryptoError,
    FedLoraError,
    ProtocolError,
    VerificationError,
)

__all__ = [
    "ConfigError",
    "CryptoError",
    "FedLoraError",
    "ProtocolError",
    "VerificationError",
    "__version__",
]

__version__ = "0.1.0"
