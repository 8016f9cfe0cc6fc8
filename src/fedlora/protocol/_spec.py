"""The federation spec: everything that must match across clients for their updates to add up.

Two clients with the same parameter count can still train different models: another LoRA seed
(their frozen A matrices differ), another base model, other feature columns or their order. Their
updates would add up silently and corrupt the global model. The spec names every such setting
(dotted YAML names; :func:`fedlora.client.federation_spec` computes a client's own), and Join
compares the client's with the federation's on both sides, refusing with each differing setting
named.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedlora.errors import ConfigError

SPEC_FILE = "federation-spec.json"


def canonical_spec(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_spec(spec).encode()).hexdigest()


def parse_spec(text: str, where: str) -> dict[str, Any]:
    """Raises ConfigError: not a JSON object."""
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{where} is not JSON") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} is not a JSON object")
    return spec


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "…"


def spec_differences(federation: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """One phrase per setting that differs: ``name is X here, Y in the federation``."""
    out = []
    for name in sorted(set(federation) | set(ours)):
        if federation.get(name) != ours.get(name):
            here = _show(ours[name]) if name in ours else "(not set)"
            there = _show(federation[name]) if name in federation else "(not set)"
            out.append(f"{name} is {here} here, {there} in the federation")
    return out


def check_spec(federation: dict[str, Any], ours: dict[str, Any], who: str) -> None:
    """Refuse a model that differs from the federation's, naming every differing setting.

    Raises:
        ConfigError: ``who``'s model differs (the message lists each setting).
    """
    diffs = spec_differences(federation, ours)
    if diffs:
        raise ConfigError(
            f"{who}'s model does not match the federation's: {'; '.join(diffs)} (every client "
            "must use the same base model, LoRA settings and feature columns)"
        )
