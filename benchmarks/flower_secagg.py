"""fedlora vs Flower's SecAgg+ vs plain FedAvg, on Flower's Simulation Engine, in one run.

The same task for all three: N simulated clients, a model of P float32 parameters, R rounds; each
client's "training" adds a fixed random update (so the three settings do the same work outside
aggregation). Each setting runs in its own process (so peak memory is its own):

* ``fedavg``  — ``flwr.serverapp.strategy.FedAvg`` (Message API), no secure aggregation;
* ``secagg+`` — Flower's ``SecAggPlusWorkflow`` with ``secaggplus_mod`` (it needs the legacy
  ``LegacyContext`` + ``DefaultWorkflow`` API), num_shares = N, reconstruction_threshold = ⌈N/2⌉;
* ``fedlora`` — ``FedloraStrategy(FedAvg(...))`` with ``fedlora_mod``: packed Paillier under a
  2048-bit t-of-N threshold key (t = 3), proofs, ticket quorum, audit log.

Printed: seconds per round (the ServerApp's own wall time divided by R, Ray's start excluded),
bytes each client sends per round (the replies' records, measured by a mod), and the ServerApp
process's peak RSS; fedlora's rounds one by one from its audit log (round 1 computes its
obfuscators ``rⁿ`` in the round; from round 2 each client has computed them between rounds,
``crypto.obfuscators_ahead``); then ``fedlora/secagg+ round time ratio: <R>x`` for the last round.

    .venv/bin/python benchmarks/flower_secagg.py                      # 10 × 1,048,576, 2 rounds (long)
    .venv/bin/python benchmarks/flower_secagg.py --preset quick       # 10 × 65,536
    .venv/bin/python benchmarks/flower_secagg.py --preset seed        # 10 × 4,884,480 (an LM's adapter)
    .venv/bin/python benchmarks/flower_secagg.py --clients 5 --params 4096 --rounds 1
    .venv/bin/python benchmarks/flower_secagg.py --budget             # what bounds the ratio here
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import peak_rss_mb  # benchmarks/, beside this script

# "seed": the language-model scale, SmolLM2-135M's LoRA r = 16 on all linear layers.
PRESETS = {
    "full": (10, 1 << 20),
    "seed": (10, 4_884_480),
    "quick": (10, 1 << 16),
    "tiny": (5, 1 << 12),
}


def _update(partition: int, size: int) -> np.ndarray:
    return np.random.default_rng(1000 + partition).normal(0, 0.01, size).astype(np.float32)


def _count_bytes_mod(log: Path):  # type: ignore[no-untyped-def]
    """A ClientApp mod that appends each reply's size (bytes of its records) to ``log``."""

    def mod(msg, context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        if not reply.has_error():
            size = sum(record.count_bytes() for record in reply.content.values())
            with open(log, "a") as fh:
                fh.write(f"{context.node_config.get('partition-id')} {size}\n")
        return reply

    return mod


def _timeline(work: Path, start: float) -> list[tuple[int, str, int, float, float]]:
    """What bounds fedlora's rounds: per round and event kind in the coordinator's audit log,
    how many and the seconds (from the strategy's start) of the first and the last."""
    seen: dict[tuple[int, str], list[float]] = {}
    for path in work.glob("fed/**/audit/entries.log"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            key = (int(entry.get("round", 0)), entry["event"])
            seen.setdefault(key, []).append(entry["time_ms"] / 1000 - start)
    rows = [(r, kind, len(t), min(t), max(t)) for (r, kind), t in seen.items() if max(t) >= 0]
    return sorted(rows, key=lambda row: row[3])


def _round_seconds(timeline: list[tuple[int, str, int, float, float]]) -> list[float]:
    """Each fedlora round's wall time: from the strategy's start (round 1) or the previous
    round's close to this round's close."""
    closes = sorted(first for _, kind, _, first, _ in timeline if kind == "round_closed")
    return [b - a for a, b in zip([0.0, *closes], closes)]


def run_setting(setting: str, clients: int, size: int, rounds: int, work: Path) -> dict:  # type: ignore[type-arg]
    """One setting in this process; returns its measurements."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    log = work / f"{setting}-bytes.log"
    timing: dict[str, float] = {}
    initial = ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))})

    def wait_nodes(grid: Grid) -> None:
        while len(list(grid.get_node_ids())) < clients:
            time.sleep(0.2)

    if setting == "secagg+":
        from flwr.client import NumPyClient
        from flwr.client.mod import secaggplus_mod
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg as LegacyFedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        class Trainer(NumPyClient):  # type: ignore[misc]
            def __init__(self, partition: int) -> None:
                self.partition = partition

            def fit(self, parameters, config):  # type: ignore[no-untyped-def]
                return [parameters[0] + _update(self.partition, size)], 1, {}

        client = ClientApp(
            client_fn=lambda context: Trainer(int(context.node_config["partition-id"])).to_client(),
            mods=[_count_bytes_mod(log), secaggplus_mod],
        )
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            wait_nodes(grid)
            from flwr.common import ndarrays_to_parameters

            legacy = LegacyContext(
                context=context,
                config=ServerConfig(num_rounds=rounds),
                strategy=LegacyFedAvg(
                    fraction_fit=1.0,
                    fraction_evaluate=0.0,
                    min_fit_clients=clients,
                    min_available_clients=clients,
                    initial_parameters=ndarrays_to_parameters([np.zeros(size, np.float32)]),
                ),
            )
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(
                    num_shares=clients, reconstruction_threshold=math.ceil(clients / 2)
                )
            )
            started = time.monotonic()
            workflow(grid, legacy)
            timing["seconds"] = time.monotonic() - started

    else:
        mods = [_count_bytes_mod(log)]
        coordinator = None
        if setting == "fedlora":
            from fedlora._setup import prepare_federation
            from fedlora.flower import make_fedlora_mod

            layout = prepare_federation(
                work / "fed",
                bits=2048,
                parties=[(f"bank-{i:02d}", "bank") for i in range(clients)],
                rounds=rounds,
                participant_threshold=clients,
                decryption_threshold=3,
                insecure=True,
                model_kind="linear",
                min_clients=clients,
                round_timeout_s=24 * 3600,
            )
            coordinator = layout.coordinator_config
            mods.append(make_fedlora_mod(layout.root))
        client = ClientApp(mods=mods)

        @client.train()
        def train(msg: Message, context: Context) -> Message:
            partition = int(context.node_config["partition-id"])
            w = msg.content["arrays"]["w"].numpy() + _update(partition, size)
            return Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({"w": Array(w)}),
                        "metrics": MetricRecord({"num-examples": 1}),
                    }
                ),
                reply_to=msg,
            )

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            wait_nodes(grid)
            inner = FedAvg(
                fraction_train=1.0,
                fraction_evaluate=0.0,
                min_train_nodes=clients,
                min_available_nodes=clients,
            )
            if coordinator is not None:
                from fedlora.flower import FedloraStrategy

                strategy = FedloraStrategy(inner, coordinator, timeout=24 * 3600)
            else:
                strategy = inner
            started = time.monotonic()
            timing["wall_start"] = time.time()
            strategy.start(grid, initial, num_rounds=rounds, timeout=24 * 3600)
            timing["seconds"] = time.monotonic() - started

    run_simulation(
        server,
        client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    sizes = [int(line.split()[1]) for line in log.read_text().splitlines()] if log.exists() else []
    timeline = _timeline(work, timing["wall_start"]) if setting == "fedlora" else []
    return {
        "timeline": timeline,
        "round_seconds": _round_seconds(timeline),
        "setting": setting,
        "seconds_per_round": timing.get("seconds", float("nan")) / rounds,
        # fedlora's decrypt/release replies and SecAgg+'s stages all count: everything a client sends.
        "bytes_per_client_per_round": sum(sizes) / (clients * rounds) if sizes else 0,
        "peak_rss_mb": peak_rss_mb(),
    }


def work_budget(clients: int, size: int, threshold: int = 3, bits: int = 2048) -> list:  # type: ignore[type-arg]
    """What one fedlora round costs in exponentiations when every party shares this machine, as
    the simulation has them: each step timed once here on the default modexp backend (which
    uses every core), times how often a round runs it. Their sum bounds the mean round from
    below — work moved between rounds (the next round's obfuscators) still takes these cores —
    and Flower, Ray and the audit log come on top. SecAgg+'s round is measured in the same run."""
    from fedlora.crypto import (
        DjnObfuscator,
        add_ciphertext_vectors,
        combine_partial_decryptions,
        encrypt_and_prove,
        generate_threshold_key,
        partial_decrypt,
        verify_plaintext_knowledge,
        verify_plaintext_knowledge_batch,
    )
    from fedlora.crypto._codec import CodecParams, encode

    def timed(fn):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - started

    parties = [f"bank-{i:02d}" for i in range(clients)]
    dealt = generate_threshold_key(bits, threshold, parties)
    key, pk = dealt.public_key, dealt.public_key.paillier
    params = CodecParams(clip=1.0, value_bits=16, max_total_weight=clients, key_bits=bits)
    packed = encode(_update(0, size), params, rng=np.random.default_rng(1))
    count = len(packed)
    (cts, proof), cold = timed(lambda: encrypt_and_prove(pk, packed, context=b"budget"))
    _, djn = timed(
        lambda: encrypt_and_prove(pk, packed, context=b"budget", obfuscators=DjnObfuscator(pk))
    )
    _, intake = timed(lambda: verify_plaintext_knowledge(pk, cts, proof, context=b"budget"))
    claims = [(cts, proof, b"budget")] * clients
    outcome, checks = timed(lambda: verify_plaintext_knowledge_batch(pk, claims))
    assert not any(outcome)
    total = cts
    for _ in range(clients - 1):
        total = add_ciphertext_vectors(pk, total, cts)
    partial, decrypt = timed(lambda: partial_decrypt(key, dealt.shares[0], total))
    others = [partial_decrypt(key, s, total) for s in dealt.shares[1:threshold]]
    _, combine = timed(lambda: combine_partial_decryptions(key, total, [partial, *others]))
    return [
        ("client: encrypt with rⁿ + prove (each client)", clients, cold, djn),
        ("coordinator: check one contribution's proof (each contribution)", clients, intake, None),
        (
            f"holder: check a round's {clients} proofs, batched (every holder)",
            clients,
            checks,
            None,
        ),
        (
            f"holder: partial decryption of {count:,} ciphertexts (t releasing)",
            threshold,
            decrypt,
            None,
        ),
        ("coordinator: combine t partials (verifies t proofs)", 1, combine, None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--clients", type=int, help="N simulated clients (overrides the preset)")
    parser.add_argument("--params", type=int, help="P float32 parameters (overrides the preset)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per setting (default 2: fedlora's round 1 computes its obfuscators in the "
        "round, later rounds have them computed between rounds)",
    )
    parser.add_argument(
        "--budget",
        action="store_true",
        help="what bounds the figure: one round's exponentiation work on this machine, step by "
        "step, beside SecAgg+'s round measured in the same run (minutes, not the full run)",
    )
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # internal: one setting, JSON out
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    clients, size = PRESETS[args.preset]
    clients, size = args.clients or clients, args.params or size
    if args.setting:
        print(json.dumps(run_setting(args.setting, clients, size, args.rounds, args.work)))
        return 0
    results = {}
    settings = ("secagg+",) if args.budget else ("fedavg", "secagg+", "fedlora")
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            work = Path(tmp) / setting.replace("+", "plus")
            work.mkdir()
            print(f"  … {setting} ({clients} clients × {size:,} parameters)", flush=True)
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--setting", setting, "--work", str(work),
                 "--clients", str(clients), "--params", str(size), "--rounds", str(args.rounds)],
                capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )  # fmt: skip
            if out.returncode != 0:
                print(out.stdout[-2000:] + out.stderr[-4000:], file=sys.stderr)
                return 1
            results[setting] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"    done in {time.perf_counter() - started:,.0f} s", flush=True)
    if args.budget:
        return print_budget(clients, size, results["secagg+"]["seconds_per_round"])
    print(f"\n{clients} simulated clients × {size:,} float32 parameters, {args.rounds} round(s), "
          "Flower Simulation Engine (Ray), this machine")  # fmt: skip
    print("| setting | s / round | bytes sent / client / round | server peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds_per_round']:.2f} | {r['bytes_per_client_per_round']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} |"
        )
    secagg = results["secagg+"]["seconds_per_round"]
    rounds = results["fedlora"]["round_seconds"]
    print("\nfedlora's rounds (from its audit log), beside SecAgg+'s mean round:")
    print("| fedlora round | s | × SecAgg+ |")
    print("|---|---:|---:|")
    for number, seconds in enumerate(rounds, 1):
        how = "cold: obfuscators computed in the round" if number == 1 else (
            "warm: obfuscators computed between rounds")  # fmt: skip
        print(f"| {number} ({how}) | {seconds:.2f} | {seconds / secagg:.1f}x |")
    print(
        "\nfedlora's timeline, from the coordinator's audit log (every party shares these cores):"
    )
    print("| round | event | count | first (s) | last (s) |")
    print("|---:|---|---:|---:|---:|")
    for number, kind, count, first, last in results["fedlora"]["timeline"]:
        print(f"| {number or ''} | {kind} | {count} | {first:,.1f} | {last:,.1f} |")
    if len(rounds) > 1:
        print(f"fedlora/secagg+ round 1 (cold) ratio: {rounds[0] / secagg:.1f}x")
    # The figure a federation runs at: its last round (warm when there is more than one).
    print(f"fedlora/secagg+ round time ratio: {rounds[-1] / secagg:.1f}x")
    return 0


def print_budget(clients: int, size: int, secagg: float) -> int:
    print(
        f"  … timing one round's exponentiation steps ({clients} × {size:,}, 2048-bit 3-of-{clients})"
    )
    rows = work_budget(clients, size)
    print(
        f"\nOne fedlora round's exponentiation work, {clients} clients × {size:,} values, every "
        f"party on this machine ({os.cpu_count()} cores; each step timed on the default backend, "
        "which uses them all):"
    )
    print("| step | times per round | s each | s per round |")
    print("|---|---:|---:|---:|")
    work = 0.0
    for name, times, each, _ in rows:
        print(f"| {name} | {times} | {each:.2f} | {times * each:.1f} |")
        work += times * each
    obfuscators = rows[0][1] * rows[0][2]
    djn = rows[0][1] * rows[0][3]
    rest = work - obfuscators
    print(f"| **sum: rounds cannot average less here** | | | **{work:.1f}** |")
    print(
        f"\nSecAgg+'s round, measured in this run: {secagg:.2f} s; 40x of it: {40 * secagg:.1f} s"
    )
    print("| bound on fedlora's mean round on this machine | s | × SecAgg+ |")
    print("|---|---:|---:|")
    for label, seconds in (
        ("every step as the product runs it (rⁿ obfuscators)", work),
        (
            "with DJN fixed-base obfuscators instead (DjnObfuscator: an extra assumption, "
            "not the product's default)",
            rest + djn,
        ),
        ("with obfuscators free (all precomputed on other cores): holders + coordinator", rest),
    ):
        print(f"| {label} | {seconds:.1f} | {seconds / secagg:.1f}x |")
    print(f"fedlora/secagg+ round time lower bound on this machine: {work / secagg:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
