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
        "--local-steps",
        type=int,
        default=None,
        help="local optimizer steps per round (default 60 for bank, 10 for fraud-cases)",
    )
    prepare.add_argument(
        "--workload",
        choices=["bank", "fraud-cases"],
        default="bank",
        help="bank: tabular FFA-LoRA on card transactions (examples/flower-lora, default); "
        "fraud-cases: a causal language model answering card-fraud cases (examples/flower-llm)",
    )
    prepare.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="fraud-cases: the causal LM's folder (fedlora model causal-base); default a tiny "
        "Llama built from the data",
    )
    prepare.add_argument(
        "--rows",
        type=int,
        default=None,
        help="records per client on average (default 200 for bank, 120 for fraud-cases)",
    )
    prepare.add_argument(
        "--share-metrics",
        default="",
        metavar="NAMES",
        help="comma-separated metrics of the ClientApp every node may send to the ServerApp in "
        "the clear (e.g. accuracy,num-examples); default none: they stay on the nodes",
    )
    prepare.add_argument(
        "--supernode-auth",
        action="store_true",
        help="also write a SuperNode authentication key pair per party (P-384, OpenSSH format) "
        "in OUT/supernode-auth/, for flower-superlink --enable-supernode-auth",
    )
    prepare.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from fedlora._setup import prepare_federation

    if not 3 <= args.clients <= 1000:
        raise FedLoraError("--clients: between 3 and 1000")
    if args.out.exists() and any(args.out.iterdir()):
        raise FedLoraError(f"{args.out} is not empty; give a new folder")
    from fedlora.config import METRIC_NAME

    metrics = [m.strip() for m in args.share_metrics.split(",") if m.strip()]
    for name in metrics:
        if not METRIC_NAME.match(name):
            raise FedLoraError(
                f"--share-metrics: {name!r} is not a metric name (letters, digits, '.', '_', '-')"
            )
    base = args.base_model.resolve() if args.base_model is not None else None
    if base is not None and (
        args.workload != "fraud-cases" or not (base / "config.json").is_file()
    ):
        raise FedLoraError(
            "--base-model: a causal LM's folder, for --workload fraud-cases (make one with "
            "`fedlora model causal-base --from smollm2 --out DIR`)"
        )
    rows = args.rows if args.rows is not None else (120 if args.workload == "fraud-cases" else 200)
    if rows < 10:
        raise FedLoraError("--rows: at least 10")
    width = len(str(args.clients - 1))
    parties = [(f"bank-{i:0{width}d}", "bank") for i in range(args.clients)]
    layout = prepare_federation(
        args.out,
        bits=args.bits,
        parties=parties,
        rounds=args.rounds,
        participant_threshold=max(2, args.clients // 2),
        decryption_threshold=args.threshold,
        aggregation_frequency=args.local_steps
        if args.local_steps is not None
        else (10 if args.workload == "fraud-cases" else 60),
        insecure=True,  # Flower carries the messages; fedlora's own listener is not used
        workload=args.workload,
        rows=rows,
        save_plaintext_deltas=True,
        min_clients=args.clients,
        share_metrics=metrics,
        base_model=base,
    )
    root = args.out.resolve()
    example = "flower-llm" if args.workload == "fraud-cases" else "flower-lora"
    if args.supernode_auth:
        folder = root / "supernode-auth"
        for pid, _ in parties:
            write_supernode_key(folder, pid)
        console.print(
            f"wrote a SuperNode authentication key pair per party to {escape(str(folder))}; "
            "register each public key with `flwr supernode register FOLDER/PARTY.pub` and start "
            "each SuperNode with --auth-supernode-private-key FOLDER/PARTY (docs/flower.md)",
            soft_wrap=True,
        )
    console.print(
        f"wrote a {args.clients}-party federation to {escape(str(root))} (coordinator.yaml and one "
        "client YAML per simulated SuperNode, by partition-id); run it with:\n"
        f"  flwr run examples/{example} --run-config \"fedlora-dir='{root}'\" "
        f"--federation-config num-supernodes={args.clients} --stream",
        soft_wrap=True,
    )
    assert layout.coordinator_config.exists()
    return 0


def write_supernode_key(folder: Path, name: str) -> Path:
    """A SuperNode authentication key pair as Flower 1.41 reads it: an EC P-384 private key in
    OpenSSH format (``folder/name``, mode 0600) and its public key (``folder/name.pub``)."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (folder / f"{name}.pub").write_bytes(public + f" {name}\n".encode())
    return path
