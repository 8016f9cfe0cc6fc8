"""The benchmark scripts run as written (small sizes): a script that rots is a claim nobody can
reproduce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str, timeout: float = 300) -> str:
    """The script's output, as a user running it would get it (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_seed_scale_critical_path_runs_every_party_and_decrypts_the_mean() -> None:
    out = _run(
        "crypto_bench.py", "--seed-scale", "--values", "3000", "--contributions", "5",
        "--bits", "1024",
    )  # fmt: skip
    for step in ("client: seal", "coordinator: intake of 5", "holder: check 5", "combine 2"):
        assert step in out
    # The combiner asserts the decoded mean within one quantization step; the line says so.
    error = float(out.split("max abs error of the decrypted mean: ")[1].split()[0])
    step = float(out.split("(one step ")[1].split(")")[0])
    assert 0 <= error <= step
    assert out.strip().splitlines()[-1].startswith("seed-scale critical path: ")


def test_the_keygen_benchmark_runs_checked_ceremonies_with_holder_processes() -> None:
    out = _run(
        "keygen_bench.py", "--bits", "512", "--runs", "2", "--parties", "3", "--threshold", "2"
    )
    lines = out.strip().splitlines()
    assert sum(line.startswith("run ") for line in lines) == 2  # each key decrypted (checked)
    median = next(line for line in lines if line.startswith("keygen median: "))
    assert float(median.split()[2].rstrip("s")) > 0


@pytest.mark.slow  # a Flower simulation (Ray) for SecAgg+'s round
def test_the_flower_benchmark_prints_what_bounds_fedloras_round() -> None:
    out = _run(
        "flower_secagg.py", "--budget", "--clients", "3", "--params", "4096", "--rounds", "1",
        timeout=600,
    )  # fmt: skip
    for step in ("client: encrypt with rⁿ + prove", "holder: partial decryption", "combine t"):
        assert step in out
    bound = out.strip().splitlines()[-1]
    assert bound.startswith("fedlora/secagg+ round time lower bound on this machine: ")
    assert float(bound.split(": ")[1].rstrip("x")) > 0
