"""A Flower node's federation spec: the settings of its model every member must share.

On Flower the user's ClientApp trains the model, so fedlora cannot read it off a trainer of its
own. The spec is computed from the node's client YAML ``model`` section (the model a fedlora
ClientApp builds with :func:`fedlora.client.make_trainer`, as the example app does), by the same
function ``fedlora model template`` and ``fedlora flower prepare`` use for the federation's:
for a LoRA model, its kind, base-model digest, LoRA settings, feature columns and adapter layout;
for ``model.kind: linear`` (a model fedlora does not know), only its kind, size and classes.

Building a LoRA model to read its layout takes seconds, and Flower may run every message in a
new process, so the spec is kept in the node's state folder with a fingerprint of what it was
computed from (the model section, and each base-model file's name, size and modification time):
a changed base model or setting is computed afresh. The file is the node's own, like its ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from types import SimpleNamespace
from typing import Any

from fedlora._files import replace_file
from fedlora.config import ClientConfig

SPEC_CACHE = "flower-spec.json"


SPEC_FORMAT = b"fedlora/flower-spec/v2"  # what a spec holds: a new field computes it afresh


def _fingerprint(config: ClientConfig) -> str:
    model = dataclasses.asdict(config.model)
    h = hashlib.sha256(SPEC_FORMAT)
    h.update(json.dumps(model, sort_keys=True, default=str).encode())
    h.update(str(config.training.num_classes).encode())
    base = config.model.base_model
    if base is not None and base.is_dir():
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def node_spec(config: ClientConfig, num_parameters: int) -> dict[str, Any]:
    """This node's federation spec. ``num_parameters`` (the federation's model size) is the size
    of a ``linear`` model, which has nothing else to describe it.

    Raises:
        ConfigError: the base model cannot be loaded.
    """
    from fedlora.client._spec import model_spec

    if config.model.kind == "linear":
        sized = SimpleNamespace(num_parameters=num_parameters)
        return model_spec(config.model, config.training.num_classes, sized)
    path = config.state_dir / SPEC_CACHE
    fingerprint = _fingerprint(config)
    try:
        doc = json.loads(path.read_bytes())
        if doc["fingerprint"] == fingerprint and isinstance(doc["spec"], dict):
            return dict(doc["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # computed afresh
    from fedlora.client._spec import blank_trainer

    spec = model_spec(
        config.model,
        config.training.num_classes,
        blank_trainer(config.model, config.training),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps({"fingerprint": fingerprint, "spec": spec}).encode())
    return spec
