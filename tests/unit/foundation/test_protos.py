"""The committed generated protobuf code matches proto/ (STYLE.md §6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_current(tmp_path: Path) -> None:
    # Arrange / Act: regenerate into a scratch folder with the pinned grpcio-tools.
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    # Assert
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fedlora" / "v1").iterdir()}
    committed = {
        p.name: p.read_bytes() for p in (ROOT / "src" / "fedlora" / "v1").iterdir() if p.is_file()
    }
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    missing = sorted(set(committed) - set(fresh))
    assert not stale and not missing, (
        f"generated code is stale: {stale or missing}; run bash scripts/gen_protos.sh and commit"
    )


def test_every_proto_has_one_service_at_most() -> None:
    for proto in (ROOT / "proto" / "fedlora" / "v1").glob("*.proto"):
        assert proto.read_text().count("\nservice ") <= 1, proto.name
