"""Key generation without a dealer, through the real ceremony: ℓ holders, each its own process.

Each run builds a fresh federation whose holders generate its key (``keys.generation``: mTLS
certificates, signing and X25519 keys, configs; not timed), starts the coordinator's real gRPC
service in this process, and starts every holder as its own process running
``fedlora keys generate --config`` — the command a holder's operator runs. The messages are
signed and sealed end to end by each holder and relayed, in chunks, by the coordinator. Two
times per run: **ceremony** (the coordinator's log: ``keygen_started`` to ``key_generated``) and
**wall** (the holders' processes started to all of them exited, with interpreter start-up).

Every key is checked before it counts: each holder's sealed share opens, and two different
t-subsets decrypt with proven partials. Prints one line per run, then ``keygen median: <S>s``
(the ceremony's median).

    .venv/bin/python benchmarks/keygen_bench.py                 # 5 holders, 3-of-5, 2048 bits, 10 runs
    .venv/bin/python benchmarks/keygen_bench.py --bits 1024 --runs 3
    .venv/bin/python benchmarks/keygen_bench.py --runs 0 --tno-python /tmp/tno-venv/bin/python
        # TNO's distributed key generation beside fedlora's at TNO's size (3 parties, 1024 bits),
        # alternately, in the same run (benchmarks/tno_keygen.py; its docstring installs TNO)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console
from rich.table import Table

from fedlora._setup import prepare_federation
from fedlora.config import load_client_config, load_coordinator_config
from fedlora.coordinator import create_server
from fedlora.crypto import (
    ThresholdPublicKey,
    combine_partial_decryptions,
    encrypt_batch,
    open_key_share,
    partial_decrypt,
)

HERE = Path(__file__).resolve().parent


@dataclass
class Run:
    ceremony_s: float
    wall_s: float
    attempts: int
    relayed_mb: float


def generate(root: Path, parties: int, threshold: int, bits: int) -> Run:
    """One ceremony: a new federation, its coordinator here, each holder a process."""
    ids = [(f"holder-{i}", "bank") for i in range(1, parties + 1)]
    layout = prepare_federation(
        root,
        bits=bits,
        parties=ids,
        decryption_threshold=threshold,
        participant_threshold=2,
        rounds=1,
        rows=40,
        generate_key=True,
    )
    config = load_coordinator_config(layout.coordinator_config)
    running = create_server(config, port=0)
    layout.use_port(running.port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fedlora", "keys", "generate", "--config", str(path)],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for path in layout.client_configs.values()
        ]
        outputs = [p.communicate(timeout=1800)[0] for p in procs]
        wall = time.monotonic() - started
        for p, out in zip(procs, outputs, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"a holder failed:\n{out[-2000:]}")
        running.wait_ready(60)
        assert running.keygen is not None
        relayed = running.keygen.relayed
    finally:
        running.stop(grace=1)
    events = [
        json.loads(line)
        for line in (config.state_dir / "audit" / "entries.log").read_text().splitlines()
    ]
    starts = [e for e in events if e["event"] == "keygen_started"]
    done = next(e for e in events if e["event"] == "key_generated")
    check(layout.root, layout.client_configs, config.keys.threshold_public_key)
    return Run((done["time_ms"] - starts[-1]["time_ms"]) / 1000, wall, len(starts), relayed / 1e6)


def check(root: Path, configs: dict[str, Path], key_path: Path) -> None:
    """Every holder's share opens, and two different t-subsets decrypt."""
    key = ThresholdPublicKey.from_json(key_path.read_bytes())
    shares = []
    for pid, path in configs.items():
        member = load_client_config(path)
        private = load_pem_private_key((root / "keys" / f"{pid}.x25519").read_bytes(), None)
        if ThresholdPublicKey.from_json(member.keys.threshold_public_key.read_bytes()) != key:
            raise RuntimeError(f"{pid} accepted another key than the coordinator's")
        shares.append(
            open_key_share(
                member.keys.key_share.read_bytes(),
                private,  # type: ignore[arg-type]
                party_id=pid,
                public_key=key,
            )
        )
    values = [7, 1234567, key.n - 2]
    cts = encrypt_batch(key.paillier, values)
    t = key.threshold
    for subset in (shares[:t], shares[-t:]):
        partials = [partial_decrypt(key, s, cts) for s in subset]
        if combine_partial_decryptions(key, cts, partials) != values:
            raise RuntimeError("a generated key did not decrypt")


def tno(python: str, parties: int, bits: int, timeout: int) -> str:
    """TNO's distributed key generation, run by benchmarks/tno_keygen.py in its own venv."""
    try:
        done = subprocess.run(
            [python, str(HERE / "tno_keygen.py"), "--parties", str(parties), "--bits", str(bits),
             "--timeout", str(timeout)],
            capture_output=True, text=True, timeout=timeout + 60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"tno keygen: did not finish in {timeout}s ({parties} parties, {bits} bits)"
    lines = [x for x in done.stdout.splitlines() if x.startswith("tno keygen:")]
    return lines[-1] if lines else f"tno keygen: failed: {done.stderr.strip()[-300:]}"


def compare(console: Console, args: argparse.Namespace) -> None:
    """TNO's package and fedlora's ceremony at the same size, alternately, in this run."""
    n, bits = args.tno_parties, args.tno_bits
    t = max(2, (n + 1) // 2)
    table = Table(
        title=f"dealer-free key generation, {n} parties, {bits} bits, {os.cpu_count()} cores"
    )
    for column in ("run", "TNO 4.3.0 s", f"fedlora {t}-of-{n} s"):
        table.add_column(column, justify="right")
    ours, theirs = [], []
    for number in range(1, args.tno_runs + 1):
        line = tno(args.tno_python, n, bits, args.tno_timeout)
        console.print(line)
        seconds = line.split(":", 1)[1].strip().split("s", 1)[0]
        theirs.append(float(seconds) if seconds.replace(".", "", 1).isdigit() else float("nan"))
        with tempfile.TemporaryDirectory(prefix="fedlora-keygen-") as folder:
            run = generate(Path(folder), n, t, bits)
        ours.append(run.ceremony_s)
        table.add_row(str(number), f"{theirs[-1]:.1f}", f"{run.ceremony_s:.1f}")
    console.print(table)
    console.print(
        f"tno median: {statistics.median(theirs):.1f}s, fedlora median: "
        f"{statistics.median(ours):.1f}s ({n} parties, {bits} bits; fedlora's includes signing, "
        "sealing and the coordinator's relay over mTLS; TNO's is plain HTTP, no decryption proofs)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", type=int, default=5, help="holders (each its own process)")
    ap.add_argument("--threshold", type=int, default=3, help="t (needs 2t − 1 ≤ parties)")
    ap.add_argument("--bits", type=int, default=2048, help="modulus bits")
    ap.add_argument("--runs", type=int, default=10, help="ceremonies, each a new federation")
    ap.add_argument("--tno-python", help="a Python with TNO's package: run it in the same run")
    ap.add_argument("--tno-parties", type=int, default=3, help="TNO: parties")
    ap.add_argument("--tno-bits", type=int, default=1024, help="TNO: modulus bits")
    ap.add_argument("--tno-timeout", type=int, default=1800, help="TNO: give up after (s)")
    ap.add_argument("--tno-runs", type=int, default=3, help="TNO and fedlora runs at TNO's size")
    args = ap.parse_args()
    console = Console()
    table = Table(
        title=(
            f"key generation without a dealer through the ceremony: {args.parties} holders "
            f"(processes), {args.threshold}-of-{args.parties}, {args.bits} bits, "
            f"{os.cpu_count()} cores"
        )
    )
    for column in ("run", "ceremony s", "wall s", "attempts", "MB relayed"):
        table.add_column(column, justify="right")
    times: list[float] = []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="fedlora-keygen-") as folder:
            run = generate(Path(folder), args.parties, args.threshold, args.bits)
        times.append(run.ceremony_s)
        table.add_row(
            str(number),
            f"{run.ceremony_s:.1f}",
            f"{run.wall_s:.1f}",
            str(run.attempts),
            f"{run.relayed_mb:.1f}",
        )
        console.print(
            f"run {number}: {run.ceremony_s:.1f}s ceremony, {run.wall_s:.1f}s wall "
            f"({run.relayed_mb:.0f} MB relayed)"
        )
    if times:
        console.print(table)
        console.print(
            f"keygen median: {statistics.median(times):.1f}s  (worst {max(times):.1f}s, best "
            f"{min(times):.1f}s; signed, sealed and relayed by the coordinator over mTLS)"
        )
    if args.tno_python:
        compare(console, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
