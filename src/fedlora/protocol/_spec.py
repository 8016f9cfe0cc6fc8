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
# The settings key under which a Flower federation records its arrays' layout
# ([[key, shape, dtype], ...]) at its start; members render the versions they keep with it.
FLOWER_LAYOUT = "flower.layout"


def canonical_spec(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_spec(spec).encode()).hexdigest()


MAX_SETTINGS = 64
MAX_NAME = 128
MAX_LIST = 4096


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def parse_spec(text: str, where: str) -> dict[str, Any]:
    """A spec: a flat JSON object of at most 64 settings, each a scalar or a list of scalars.

    Raises:
        ConfigError: anything else (never a raw parse error, whatever the input).
    """
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ConfigError(f"{where} is not JSON") from None
    if not isinstance(spec, dict) or len(spec) > MAX_SETTINGS:
        raise ConfigError(f"{where} is not a flat object of at most {MAX_SETTINGS} settings")
    for name, value in spec.items():
        flat = _scalar(value) or (
            isinstance(value, list) and len(value) <= MAX_LIST and all(map(_scalar, value))
        )
        if len(name) > MAX_NAME or not flat:
            raise ConfigError(
                f"{where}: setting {name[:MAX_NAME]!r} is not a name and a flat value"
            )
    return spec


def _digest(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _show(value: Any) -> str:
    if _digest(value):
        return str(value)[:12] + "…"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "…"


def spec_differences(federation: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """One phrase per setting that differs: ``name is X here, Y in the federation``; settings a
    person reads (rank, targets, columns) first, digests (shortened) after them."""
    out = []
    names = set(federation) | set(ours)
    for name in sorted(names, key=lambda n: (_digest(ours.get(n, federation.get(n))), n)):
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
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise ConfigError(
            f"{who}'s model does not match the federation's: {shown} (every client must use the "
            "same base model, LoRA settings and feature columns)"
        )
