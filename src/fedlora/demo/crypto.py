"""``fedlora crypto-demo``: one encrypted round among five parties, in one process.

The product's own code, without sockets (:mod:`fedlora.inprocess`): a dealt 3-of-5 threshold
key, five real clients that seal, prove and sign a synthetic LoRA delta, the real coordinator
engine that checks, stores and adds them, share holders that check the aggregate and sign its
ticket, proven partial decryptions, combination and publication. The published update is
compared with the plaintext weighted average of the clipped deltas.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedlora._setup import prepare_federation
from fedlora.config import CodecConfig
from fedlora.inprocess import GivenDelta, InProcessFederation

PARTIES = (
    ("bank-a", "bank"),
    ("bank-b", "bank"),
    ("hospital-c", "hospital"),
    ("hospital-d", "hospital"),
    ("hospital-e", "hospital"),
)
THRESHOLD = 3
WEIGHTS = (1, 2, 3, 4, 5)  # examples per party: the mean is weighted by them


def run_crypto_demo(*, bits: int, values: int, seed: int) -> int:
    console = Console()
    timings: list[tuple[str, float]] = []
    console.rule("[bold]fedlora crypto-demo")
    ids = [pid for pid, _ in PARTIES]
    console.print(
        f"{len(ids)} parties ({', '.join(ids)}), a {THRESHOLD}-of-{len(ids)} threshold key, "
        f"{bits}-bit modulus, {values:,} float32 values per LoRA delta, weights {WEIGHTS}"
    )
    root = Path(tempfile.mkdtemp(prefix="fedlora-crypto-demo-"))
    t0 = time.monotonic()
    with console.status("dealing the threshold key (safe primes, shares, verification keys)…"):
        layout = prepare_federation(
            root,
            bits=bits,
            parties=PARTIES,
            decryption_threshold=THRESHOLD,
            participant_threshold=len(PARTIES),
            rounds=1,
            aggregation_frequency=1,
            insecure=True,
            model_kind="linear",
            rows=20,
        )
    timings.append(("deal threshold key, write keys and configs", time.monotonic() - t0))
    rng = np.random.default_rng(seed)
    shared_direction = rng.normal(0, 0.2, values)
    deltas = {pid: shared_direction + rng.normal(0, 0.2, values) for pid in ids}
    weights = dict(zip(ids, WEIGHTS))
    trainers = {
        pid: GivenDelta(values, weights[pid], deltas[pid].astype(np.float32)) for pid in ids
    }
    codec = CodecConfig(clip=1.0, value_bits=16, max_weight=max(WEIGHTS))
    fed = InProcessFederation.from_configs(
        layout.coordinator_config,
        layout.client_configs,
        trainers=trainers,
        num_parameters=values,
        codec=codec,
        quiet=True,
    )
    engine = fed.engine

    t0 = time.monotonic()
    with console.status("clients: train (given delta), encode, encrypt, prove, sign, upload…"):
        for pid in ids:
            client = fed.clients[pid]
            client.contribute(fed.feds[pid], client.transport.round_status())
    timings.append(
        (
            f"{len(ids)} clients: seal + prove + sign; coordinator: check + store",
            time.monotonic() - t0,
        )
    )
    t0 = time.monotonic()
    engine.tick()
    timings.append(("coordinator: homomorphic sum, ticket logged", time.monotonic() - t0))
    holders = [pid for pid in ids if fed.clients[pid].holder is not None]
    for phase in (
        "share holders: check every contribution and the aggregate, sign the ticket",
        "share holders: quorum seen, release proven partial decryptions",
    ):
        t0 = time.monotonic()
        fed.step(holders, tick=False)
        timings.append((phase, time.monotonic() - t0))
    t0 = time.monotonic()
    engine.tick()
    timings.append(("coordinator: verify proofs, combine, decode, publish", time.monotonic() - t0))

    ok = engine.finished and engine.global_version == 1
    table = Table(title="crypto-demo timings")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings:
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    width, records = engine.width, engine.record_count
    console.print(
        f"{records:,} ciphertexts per client ({engine.codec.slots_per_ciphertext} values each): "
        f"{records * width / 1e6:.2f} MB on the wire vs {values * 4 / 1e6:.2f} MB of float32"
    )
    if not ok:
        console.print("[red]FAILED[/]: the round did not close; see the audit log in " + str(root))
        return 1
    published = fed.global_vector(1).astype(np.float64)
    total = sum(WEIGHTS)
    expected = sum(weights[p] * np.clip(deltas[p], -1, 1) for p in ids) / total
    error = float(np.max(np.abs(published - expected)))
    step = engine.codec.step
    ok = error <= step + 1e-6  # one quantization step, plus float32 storage of the global
    verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
    console.print(f"threshold key fingerprint {engine.fingerprint.hex()[:32]}…; state in {root}")
    console.print(
        f"{verdict}: decrypted aggregate vs plaintext average: max |error| = {error:.3g} "
        f"(bound: one quantization step = {step:.3g})"
    )
    return 0 if ok else 1
