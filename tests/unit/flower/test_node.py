"""A Flower node's side of keeping models, against a hostile server and a damaged disk.

Real ModelKeeper, real files and Flower records; no engine (tests/integration/test_flower.py
runs the whole thing on Flower's engines).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import RecordDict

from fedlora.errors import ProtocolError, RemoteError
from fedlora.flower import _wire as w
from fedlora.flower._client import PushTransport, _save_arrays, _split


def test_kept_versions_are_rendered_only_with_a_layout_that_adds_up(tmp_path) -> None:
    vector = np.arange(10, dtype=np.float32)
    good = [["a", [2, 3], "float32"], ["file", [4], "float64"]]  # "file": np.savez's own name
    _save_arrays(good, vector, tmp_path / "ok")
    with np.load(tmp_path / "ok" / "arrays.npz", allow_pickle=False) as arrays:
        assert list(arrays.keys()) == ["a", "file"]
        assert np.array_equal(arrays["a"], vector[:6].reshape(2, 3))
        assert arrays["file"].dtype == np.float64
    hostile = [
        None,
        [],
        [["a", [2, 3], "float32"]],  # does not add up to the vector
        [["a", [20], "float32"]],  # longer than the vector
        [["a", [6], "float32"], ["a", [4], "float32"]],  # a key twice
        [["../x", [10], "float32"]],  # a path
        [["a", [10], "object"]],  # not a float
        [["a", [10], "U100000"]],  # memory
        [["a", [-2, -5], "float32"]],  # negative dimensions
        [["a", [True, 10], "float32"]],
        [["a", "10", "float32"]],
        [["a" * 500, [10], "float32"]],
        {"a": [10]},
    ]
    for i, layout in enumerate(hostile):
        _save_arrays(layout, vector, tmp_path / f"bad-{i}")
        assert not (tmp_path / f"bad-{i}").exists(), layout
        assert _split(vector, layout) is None


def test_entries_from_an_earlier_point_are_accepted_and_from_a_later_one_refused() -> None:
    lines = [f'{{"n":{i}}}'.encode() for i in range(6)]
    transport = PushTransport()

    def message(start: int) -> RecordDict:
        return w.put(
            RecordDict(), w.TRAIN, {"entries": w.pack_lines(lines[start:])}, entries_start=start
        )

    # The server still believes the node read 2 entries; the node has read 4 (a lost reply).
    transport.load(message(2))
    assert transport.audit_entries(4, 10) == lines[4:]
    assert transport.audit_entries(4, 1) == lines[4:5]
    transport.load(message(5))  # entries from beyond what the node has read: a gap
    with pytest.raises(RemoteError, match="from 5, this node has read 4"):
        transport.audit_entries(4, 10)
    with pytest.raises(ProtocolError, match="malformed"):
        w.unpack_lines(w.pack_lines(lines)[:-3])


def test_a_damaged_scan_file_is_forgotten_not_fatal(tmp_path) -> None:
    from fedlora.client._models import ModelKeeper
    from fedlora.crypto import leaf_hash

    line = json.dumps(
        {"index": 0, "event": "global_published", "version": 1, "global_digest": "ab" * 32}
    )
    good_leaf = leaf_hash(line.encode())
    (tmp_path / "models").mkdir()
    scan = tmp_path / "log-scan.json"

    def keeper(doc) -> ModelKeeper:  # type: ignore[no-untyped-def]
        scan.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        return ModelKeeper(tmp_path, "fed-1", b"\x01" * 32)

    base = {
        "federation_id": "fed-1",
        "leaves": good_leaf.hex(),
        "entries": {"0": line.encode().hex()},
    }
    assert keeper(base).scanned == 1
    for damaged in (
        "{not json",
        [],
        {**base, "entries": []},
        {**base, "entries": {"0": "zz"}},
        {**base, "entries": {"1": line.encode().hex()}},  # beyond the leaves
        {**base, "leaves": "00" * 32},  # the entry is not that leaf
        {**base, "leaves": "00" * 31},
        {**base, "federation_id": "fed-2"},
        {
            **base,
            "entries": {
                "0": json.dumps({"index": 0, "event": "global_published", "version": 1})
                .encode()
                .hex()
            },
        },
    ):
        k = keeper(damaged)
        assert k.scanned == 0 and k.layout is None, damaged


def _member(root, kind: str):  # type: ignore[no-untyped-def]
    """One member's config of a small federation with a ``kind`` model (files on disk)."""
    from fedlora.config import load_client_config
    from tests.integration.helpers import prepare_federation

    layout = prepare_federation(
        root,
        bits=512,
        parties=[("bank-a", "bank"), ("bank-b", "bank")],
        participant_threshold=2,
        decryption_threshold=2,
        insecure=True,
        model_kind=kind,
        workload="bank",
        rows=20,
    )
    return layout, load_client_config(layout.client_configs["bank-a"])


def test_a_linear_nodes_spec_is_its_kind_size_and_classes(tmp_path) -> None:
    from fedlora.flower._spec import node_spec

    _, config = _member(tmp_path, "linear")
    assert node_spec(config, 300) == {
        "model.kind": "linear",
        "model.num_parameters": 300,
        "training.num_classes": 2,
    }


def test_a_lora_nodes_spec_is_the_templates_and_is_computed_once_per_model(
    tmp_path, monkeypatch
) -> None:
    from fedlora.client import _spec as client_spec
    from fedlora.flower._spec import SPEC_CACHE, node_spec

    layout, config = _member(tmp_path, "tabular")
    federation = json.loads(
        (layout.root / "models" / "adapter-template" / "federation-spec.json").read_text()
    )
    # Act / Assert: the node's spec is the one `flower prepare` announces, kept on its disk
    assert node_spec(config, 1) == federation
    assert (config.state_dir / SPEC_CACHE).exists()

    def no_model(*args, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was built again")

    monkeypatch.setattr(client_spec, "blank_trainer", no_model)
    assert node_spec(config, 1) == federation  # from the file
    # A base-model file that changes is noticed (its size and time are in the fingerprint).
    weights = next(p for p in sorted(config.model.base_model.iterdir()) if p.is_file())
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="built again"):
        node_spec(config, 1)
