"""``fedlora flower prepare``: a federation's files for a Flower run (keys, configs, data, model).

Flower carries the messages (its SuperLink and SuperNodes); fedlora's keys, configs and audit log
are the same as for the standalone service. See docs/flower.md and examples/flower-lora/.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedlora.errors import FedLoraError

console = Console(stderr=True)


def register(sub: Any) -> None:
    flower = sub.add_parser("flower", help="fedlora's secure aggregation on Flower (flwr run)")
    flower_sub = flower.add_subparsers(
        dest="flower_command", required=True, metavar="FLOWER_COMMAND"
    )
    prepare = flower_sub.add_parser(
        "prepare",
        help="write keys, a coordinator config and one client config per simulated SuperNode",
    )
    prepare.add_argument("--out", type=Path, required=True, help="a new folder for the federation")
    prepare.add_argument(
        "--clients", type=int, default=20, help="simulated SuperNodes, one party each (default 20)"
    )
    prepare.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    prepare.add_argument(
        "--threshold", type=int, default=3, help="t of the threshold key (default 3)"
    )
    prepare.add_argument(
        "--bits",
        type=int,
        default=2048,
        help="threshold key modulus (default 2048; below it only for tests, and marked insecure)",
    )
    prepare.add_argument(
        "--local-steps", type=int, default=20, help="local optimizer steps per round (default 20)"
    )
    prepare.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from fedlora._setup import prepare_federation

    if not 3 <= args.clients <= 1000:
        raise FedLoraError("--clients: between 3 and 1000")
    if args.out.exists() and any(args.out.iterdir()):
        raise FedLoraError(f"{args.out} is not empty; give a new folder")
    width = len(str(args.clients - 1))
    parties = [(f"bank-{i:0{width}d}", "bank") for i in range(args.clients)]
    layout = prepare_federation(
        args.out,
        bits=args.bits,
        parties=parties,
        rounds=args.rounds,
        participant_threshold=max(2, args.clients // 2),
        decryption_threshold=args.threshold,
        aggregation_frequency=args.local_steps,
        insecure=True,  # Flower carries the messages; fedlora's own listener is not used
        workload="bank",
        rows=200,
        save_plaintext_deltas=True,
        min_clients=args.clients,
    )
    root = args.out.resolve()
    console.print(
        f"wrote a {args.clients}-party federation to {escape(str(root))} (coordinator.yaml and one "
        "client YAML per simulated SuperNode, by partition-id); run it with:\n"
        f"  flwr run examples/flower-lora --run-config \"fedlora-dir='{root}'\" "
        f"--federation-config num-supernodes={args.clients} --stream",
        soft_wrap=True,
    )
    assert layout.coordinator_config.exists()
    return 0
