"""The README's "Running a federation" block, run as written: provisioning with keys made at each
site, a coordinator and three clients as processes over mTLS, two rounds, the model exported
after the coordinator is gone, and the log audited against a member's receipt and checkpoint.

Nothing is mocked. The only change to what a reader runs is the coordinator's port in the
example project file (a free one, so parallel CI jobs cannot collide).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedlora._setup import free_port

ROOT = Path(__file__).resolve().parents[2]


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", readme, re.S
    )
    assert block, "README.md lost its walkthrough block"
    return block.group(1)


def test_the_readme_walkthrough_runs_as_written(tmp_path) -> None:
    # Arrange: what a fresh clone holds, with a free port in the example project.
    project = (ROOT / "examples" / "provision" / "project.yaml").read_text()
    port = free_port()
    (tmp_path / "examples" / "provision").mkdir(parents=True)
    (tmp_path / "examples" / "provision" / "project.yaml").write_text(
        project.replace("50061", str(port))
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    # Act: the block, verbatim, stopping at the first failing command.
    out = subprocess.run(
        ["bash", "-e", "-c", _walkthrough()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    fed = tmp_path / "my-federation"
    logs = {p.name: p.read_text() for p in fed.glob("*.log")} if fed.exists() else {}
    assert out.returncode == 0, out.stdout + out.stderr + json.dumps(logs, indent=1)[-4000:]
    # Assert: every client finished and kept the final model; the coordinator served past the
    # end and stopped only when told; the export is the final version, verified offline.
    for site in ("bank-a", "bank-b", "hospital-c"):
        assert "federation finished after 2 rounds" in logs[f"{site}.log"], logs[f"{site}.log"]
        assert (fed / "sites" / site / "state" / "models" / "v00002" / "final.json").exists()
    coordinator = logs["coordinator.log"]
    assert "still serving the audit log" in coordinator and "shutting down" in coordinator
    assert "Traceback" not in out.stderr + "".join(logs.values())
    assert "wrote global version 2 (final" in out.stderr
    assert (fed / "bank-a-model" / "adapter_config.json").exists()
    assert (
        "audit log OK" in out.stdout
        and "holds 1 trusted checkpoint(s) and 2 receipt(s)" in out.stdout
    )
    # No private key ever left its site: the kits and requests hold none.
    for folder in ("kits", "requests"):
        for path in (fed / folder).rglob("*"):
            if path.is_file() and path.suffix not in (".safetensors",):
                assert b"PRIVATE KEY" not in path.read_bytes(), path
    # The exported adapter loads with public API only (the snippet in docs/operations.md).
    snippet = (ROOT / "docs" / "operations.md").read_text()
    code = re.search(r"<!-- load-snippet -->\n```python\n(.*?)```", snippet, re.S)
    assert code, "docs/operations.md lost its loading snippet"
    loaded = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=fed,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "probabilities" in loaded.stdout
