"""The pipelined release against releasing whole partial decryptions, in one run.

A real in-process federation (the coordinator engine and real clients, 2048-bit 3-of-5 threshold
key, the machine's default modexp backend): every client contributes, every holder verifies the
aggregate and signs the ticket; then, timed, holders release their proven partial decryptions
until the coordinator has combined, decoded and published the round. Two ways, on the same
contributions:

* **whole** — each holder's partial decryption is one chunk (as fedlora did before): the
  coordinator verifies it when it has arrived whole, and combines once ``t`` have;
* **pipelined** — chunks of ``PARTIAL_CHUNK`` ciphertexts: each chunk uploads while the holder
  computes the next, the coordinator verifies each on arrival and combines each chunk as soon as
  ``t`` holders answered it.

The holders run one after another in this process (the machine has few cores); in a deployment
they run side by side on their own machines, and what the pipeline hides is the coordinator's
verification and combination behind the holders' exponentiation.

    .venv/bin/python benchmarks/pipeline_bench.py                  # 2^20 values
    .venv/bin/python benchmarks/pipeline_bench.py --values 65536   # a quick look
    .venv/bin/python benchmarks/pipeline_bench.py --workers 1      # one core a side
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from fedlora._setup import prepare_federation
from fedlora.crypto import ModexpBackend, make_backend
from fedlora.inprocess import GivenDelta, InProcessFederation
from fedlora.protocol import Stage, _decryptor

PARTIES = ["bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e"]


def release_seconds(
    root: Path, values: int, chunk: int | None, backend: ModexpBackend
) -> tuple[float, int, float]:
    """Seconds for the last two holders' releases and the coordinator's work to the published
    round; chunks per holder; the error of the published mean against the plain one."""
    if chunk is not None:
        _decryptor.PARTIAL_CHUNK = chunk
    layout = prepare_federation(
        root,
        bits=2048,
        parties=[(p, "bank" if p.startswith("bank") else "hospital") for p in PARTIES],
        rounds=1,
        aggregation_frequency=1,
        participant_threshold=len(PARTIES),
        decryption_threshold=3,
        round_timeout_s=86400,
        insecure=True,
        model_kind="linear",
    )
    rng = np.random.default_rng(11)
    deltas = {p: rng.normal(0, 0.3, values).astype(np.float32) for p in PARTIES}
    fed = InProcessFederation.from_configs(
        layout.coordinator_config,
        layout.client_configs,
        trainers={p: GivenDelta(values, num_examples=1, delta=deltas[p]) for p in PARTIES},
        num_parameters=values,
        console=Console(quiet=True),
        backend=backend,
    )
    for p in PARTIES:
        client = fed.clients[p]
        client.contribute(fed.feds[p], client.transport.round_status())
    fed.engine.tick()
    # Four holders verify and sign (the quorum); the fourth sees the quorum and releases at once.
    for p in PARTIES[:4]:
        fed.clients[p].decrypt(1)
    # Timed: two more holders release (their checks are done), the coordinator verifies and
    # combines, and the round is published.
    started = time.perf_counter()
    for p in PARTIES[:2]:
        assert fed.clients[p].decrypt(1)
    fed.engine.tick()
    seconds = time.perf_counter() - started
    assert fed.engine.stage is Stage.FINISHED, fed.engine.stage
    clip = fed.engine.codec.clip
    expected = np.mean([np.clip(d.astype(np.float64), -clip, clip) for d in deltas.values()], 0)
    error = float(np.max(np.abs(fed.global_vector().astype(np.float64) - expected)))
    assert error <= fed.engine.codec.step + 1e-6, error
    chunks = len(_decryptor.chunk_ranges(fed.engine.record_count))
    return seconds, chunks, error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=1 << 20)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads per exponentiation batch (default: every core); 1 leaves one core to the "
        "holder's exponentiation and one to the coordinator's checks, as on separate machines",
    )
    args = ap.parse_args()
    backend, line = make_backend("auto", workers=args.workers)
    default_chunk = _decryptor.PARTIAL_CHUNK
    print(
        f"# pipelined release — {platform.machine()}, Python {platform.python_version()}, "
        f"{line}; 2048-bit 3-of-5 key, {args.values:,} values, "
        "5 contributions; timed: the last 2 of the 3 releases, one after another, to publication\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk in (("whole", 1 << 40), ("pipelined", default_chunk)):
            print(f"  … {name}", flush=True)
            rows.append((name, *release_seconds(Path(tmp) / name, args.values, chunk, backend)))
    print(
        "\n| release | chunks per holder | s: 2 holders release, coordinator verifies, combines, publishes |"
    )
    print("|---|---:|---:|")
    for name, seconds, chunks, _ in rows:
        print(f"| {name} | {chunks:,} | {seconds:,.2f} |")
    print(f"\npipelined / whole release time: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
