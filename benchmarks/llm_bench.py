"""Fine-tuning a language model federated: base vs local-only vs centralized vs FedAvg vs fedlora.

Five banks, each with its own SYNTHETIC card-fraud cases (``fedlora.datasets.fraud_cases``:
non-IID, 20–45 % fraud), fine-tune LoRA adapters of a causal LM (default: SmolLM2-135M-Instruct,
from ``fedlora model causal-base --from smollm2``) to answer "Is this transaction fraudulent?
Answer yes or no, and why." Every model is scored on the same pooled held-out cases (a share of
each bank's): eval loss per answer token, and the accuracy and F1 ("yes" positive) of the
answers it generates.

* base         — the base model, zero-shot;
* local-only   — each bank trains alone for rounds × steps; scores averaged over the banks;
* centralized  — one adapter on the pooled training cases, as many steps as all banks together;
* FedAvg       — plaintext weighted FedAvg of the adapters (float64, no quantization);
* fedlora      — the same banks, seeds and schedule through the product: an in-process
                 federation (``fedlora.inprocess``) of the real coordinator engine and real
                 clients with a 2048-bit 2-of-5 threshold key — sealing with proofs, intake
                 checks, the homomorphic sum, the holders' checks and ticket quorum, proven
                 partial decryptions, combination, decoding. gRPC is not part of the timings.

One model is kept in memory and serves every simulated bank in turn (only the adapter and the
data differ between them). Prints a table, the checks (fedlora within 0.5 pp F1 and 1 % loss of
FedAvg; federated better than local-only) and the wall time.

Usage: python benchmarks/llm_bench.py --base smollm2 [--rounds 3] [--steps 8] [--test 20]
       python benchmarks/llm_bench.py --tiny            # a tiny Llama: checks the script in seconds
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlora import datasets
from fedlora.client._causal import CausalLmTrainer, Instruction, write_tiny_llama
from fedlora.config import LoraSpec, ModelSpec, TrainingConfig

BANKS = 5
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Bank:
    train: list[Instruction]
    seed: int


class BankView:
    """One simulated bank on the shared model: its own cases and its own sampling stream."""

    def __init__(self, model: CausalLmTrainer, bank: Bank) -> None:
        self.model, self.bank = model, bank
        self.generator = torch.Generator().manual_seed(bank.seed)
        self.num_parameters = model.num_parameters
        self.num_examples = len(bank.train)

    def train(self, global_vector: np.ndarray, steps: int, on_step: object = None) -> np.ndarray:
        self.model.use_data(self.bank.train, self.generator)
        return self.model.train(global_vector, steps, on_step)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def evaluate(self, vector: np.ndarray) -> float:
        return float("nan")


def scores(model: CausalLmTrainer, vector: np.ndarray, test: list[Instruction]) -> dict[str, float]:
    out = model.answer_scores(vector, test)
    out["loss"] = model.eval_loss(vector, test)
    return out


def federate(
    model: CausalLmTrainer,
    banks: list[Bank],
    rounds: int,
    steps: int,
    encrypted: Any,
    seeds: Callable[[int], list[int]],
) -> tuple[np.ndarray, list[float]]:
    """Rounds of local training and weighted averaging: float64 FedAvg here, or the product.

    The plaintext rounds reseed each bank with ``seeds(round)``, the seeds fedlora's clients
    derive for themselves (``sampler_seed``), so both federations draw the same batches and
    differ only by the codec's quantization."""
    views = [BankView(model, b) for b in banks]
    weights = [v.num_examples for v in views]
    g = np.zeros(model.num_parameters, dtype=np.float64)
    seconds = []
    fed = encrypted(views) if encrypted is not None else None
    for number in range(1, rounds + 1):
        start = time.perf_counter()
        if fed is None:
            for view, seed in zip(views, seeds(number)):
                view.reseed(seed)
            deltas = [v.train(g.astype(np.float32), steps).astype(np.float64) - g for v in views]
            g = g + sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
        else:
            number = fed.run_round()
            if fed.engine.global_version != number:  # a failed round: stop, do not score zeros
                raise SystemExit(
                    f"fedlora round {number} failed: see the audit log under --workdir"
                )
            g = fed.global_vector().astype(np.float64)
        seconds.append(time.perf_counter() - start)
    return g.astype(np.float32), seconds


def encrypted_federation(
    workdir: Path, rounds: int, steps: int, num_parameters: int, max_weight: int
):  # type: ignore[no-untyped-def]
    """A factory: the real engine and five real clients (2048-bit 2-of-5 key) over given views,
    and the sampler seeds those clients use in each round (their first runs: a fresh state)."""
    from fedlora._setup import prepare_federation
    from fedlora.client._contributor import sampler_seed
    from fedlora.config import CodecConfig, load_client_config
    from fedlora.inprocess import InProcessFederation

    ids = [f"bank-{i}" for i in range(BANKS)]
    layout = prepare_federation(
        workdir,
        bits=2048,
        parties=[(pid, "bank") for pid in ids],
        decryption_threshold=2,
        participant_threshold=BANKS,
        rounds=rounds,
        aggregation_frequency=steps,
        insecure=True,
        model_kind="linear",
        rows=40,
        # Five banks train one after another on one machine here: a round takes minutes.
        round_timeout_s=24 * 3600.0,
    )

    def start(views: list[BankView]) -> InProcessFederation:
        return InProcessFederation.from_configs(
            layout.coordinator_config,
            layout.client_configs,
            trainers=dict(zip(ids, views)),
            num_parameters=num_parameters,
            codec=CodecConfig(clip=1.0, value_bits=16, max_weight=max_weight),
        )

    configs = [load_client_config(layout.client_configs[pid]) for pid in ids]

    def seeds(number: int) -> list[int]:
        return [
            sampler_seed(c.training.seed, c.federation_id, c.id, number, number - 1)
            for c in configs
        ]

    return start, seeds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", type=Path, help="a causal-LM folder (fedlora model causal-base)")
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama built here (a quick check)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="local optimizer steps per round")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--rows", type=int, default=750, help="cases per bank on average (500–1,000)")
    ap.add_argument("--test", type=int, default=20, help="held-out cases per bank")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("build/llm_bench"))
    ap.add_argument(
        "--settings",
        default="base,local,centralized,fedavg,fedlora",
        help="which rows to run (comma-separated); the checks need fedavg, fedlora and local",
    )
    args = ap.parse_args()
    if args.base is None and not args.tiny:
        ap.error(
            "give --base FOLDER (e.g. from `fedlora model causal-base --from smollm2`) or --tiny"
        )
    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw = datasets.fraud_cases(BANKS, args.rows, args.seed)
    rng = np.random.default_rng(args.seed)
    banks, test = [], []
    for i, cases in enumerate(raw):
        order = rng.permutation(len(cases))
        held = [Instruction(**cases[j]) for j in order[: args.test]]
        banks.append(Bank([Instruction(**cases[j]) for j in order[args.test :]], args.seed + i))
        test.extend(held)
    base = args.base
    if args.tiny:
        base = Path(tempfile.mkdtemp(prefix="tiny-llama-", dir=args.workdir))
        write_tiny_llama(base, [t for cases in raw for r in cases for t in r.values()])
    spec = ModelSpec(
        kind="causal-lm",
        base_model=base,
        max_length=args.max_length,
        lora=LoraSpec(
            rank=args.rank,
            alpha=2 * args.rank,
            targets=tuple(args.targets.split(",")),
            seed=args.seed,
        ),
    )
    training = TrainingConfig(
        batch_size=args.batch, learning_rate=args.lr, device="auto", seed=args.seed
    )
    model = CausalLmTrainer(spec, training, banks[0].train, source="bank 0")
    zero = np.zeros(model.num_parameters, dtype=np.float32)
    total_steps = args.rounds * args.steps
    print(
        f"{BANKS} banks ({', '.join(str(len(b.train)) for b in banks)} training cases; "
        f"{len(test)} held out), {model.num_parameters:,} shared values (LoRA rank {args.rank} on "
        f"{args.targets}), {args.rounds} rounds × {args.steps} steps of {args.batch} cases",
        flush=True,
    )
    rows: list[tuple[str, dict[str, float], str]] = []

    def report(setting: str, result: dict[str, float], note: str = "") -> None:
        rows.append((setting, result, note))
        print(
            f"| {setting} | {result['loss']:.4f} | {math.exp(min(result['loss'], 50)):.2f} | "
            f"{100 * result['accuracy']:.1f}% | {result['f1']:.3f} | {note} |",
            flush=True,
        )

    print("| setting | eval loss | perplexity | answer accuracy | answer F1 | notes |")
    print("|---|---:|---:|---:|---:|---|")
    chosen = set(args.settings.split(","))
    if "base" in chosen:
        report("base model (zero-shot)", scores(model, zero, test))
    local = []
    if "local" in chosen:
        for bank in banks:
            view = BankView(model, bank)
            local.append(scores(model, view.train(zero, total_steps), test))
        report(
            "local-only (mean of banks)",
            {k: float(np.mean([s[k] for s in local])) for k in local[0]},
            f"best bank F1 {max(s['f1'] for s in local):.3f}",
        )
    if "centralized" in chosen:
        pooled = Bank([r for b in banks for r in b.train], args.seed)
        report(
            "centralized (pooled cases)",
            scores(model, BankView(model, pooled).train(zero, total_steps * BANKS), test),
        )
    fedavg = encrypted = None
    factory, seeds = encrypted_federation(
        Path(tempfile.mkdtemp(prefix="federation-", dir=args.workdir)),
        args.rounds,
        args.steps,
        model.num_parameters,
        max(len(b.train) for b in banks),
    )
    if "fedavg" in chosen:
        vector, seconds = federate(model, banks, args.rounds, args.steps, None, seeds)
        fedavg = scores(model, vector, test)
        report("FedAvg (plaintext)", fedavg, f"{np.mean(seconds):.0f} s / round")
    if "fedlora" in chosen:
        vector, seconds = federate(model, banks, args.rounds, args.steps, factory, seeds)
        encrypted = scores(model, vector, test)
        report("fedlora (encrypted)", encrypted, f"{np.mean(seconds):.0f} s / round")
    print()
    if fedavg is not None and encrypted is not None:
        f1_gap = 100 * abs(encrypted["f1"] - fedavg["f1"])
        loss_gap = abs(encrypted["loss"] - fedavg["loss"]) / fedavg["loss"]
        print(
            f"fedlora vs FedAvg: F1 {f1_gap:.2f} pp ({'ok' if f1_gap <= 0.5 else 'OVER 0.5 pp'}), "
            f"loss {100 * loss_gap:.2f} % ({'ok' if loss_gap <= 0.01 else 'OVER 1 %'})"
        )
    if local and encrypted is not None:
        local_f1 = float(np.mean([s["f1"] for s in local]))
        local_loss = float(np.mean([s["loss"] for s in local]))
        print(
            f"fedlora vs local-only: F1 {encrypted['f1']:.3f} vs {local_f1:.3f} "
            f"({'ok' if encrypted['f1'] > local_f1 else 'NOT BETTER'}), loss "
            f"{encrypted['loss']:.4f} vs {local_loss:.4f} "
            f"({'ok' if encrypted['loss'] < local_loss else 'NOT BETTER'})"
        )
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
