"""Build a coordinator engine from its configuration: load its keys, replay its state."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fedlora._files import check_private
from fedlora.config import CoordinatorConfig
from fedlora.coordinator._engine import Coordinator
from fedlora.crypto import ModexpBackend, ThresholdPublicKey, select_backend
from fedlora.errors import ConfigError, FedLoraError


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    check_private(path, "keys.signing_key")
    try:
        key = load_pem_private_key(read_file(path, "keys.signing_key"), password=None)
    except ValueError:
        raise ConfigError(
            f"keys.signing_key: {path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"keys.signing_key: {path} is not an Ed25519 key")
    return key


def build_engine(
    config: CoordinatorConfig,
    *,
    clock: Callable[[], float] = time.time,
    backend: ModexpBackend | None = None,
    accept_config_change: bool = False,
    initial: np.ndarray | None = None,
    extra_settings: Mapping[str, Any] | None = None,
) -> Coordinator:
    """Load the keys the config names and build the coordinator (replaying any saved state)."""
    key = None
    if config.federated_learning.encryption_type == "homomorphic":
        try:
            key = ThresholdPublicKey.from_json(
                read_file(config.keys.threshold_public_key, "keys.threshold_public_key")
            )
        except FedLoraError as exc:
            raise ConfigError(f"keys.threshold_public_key: {exc}") from None
    if backend is None and config.crypto.backend != "auto":
        try:
            backend = select_backend(config.crypto.backend)[0]
        except FedLoraError as exc:
            raise ConfigError(f"crypto.backend: {exc}") from None
    return Coordinator(
        config,
        key,
        load_signing_key(config.keys.signing_key),
        clock=clock,
        backend=backend,
        accept_config_change=accept_config_change,
        initial=initial,
        extra_settings=extra_settings,
    )
