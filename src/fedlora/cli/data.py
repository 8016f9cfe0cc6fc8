"""``fedlora data``: per-client workload files (:mod:`fedlora.datasets`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedlora.errors import FedLoraError


def register(sub: Any) -> None:
    data = sub.add_parser(
        "data",
        help="write workload data per client: synthetic bank transactions, breast cancer, clinical notes",
    )
    data.add_argument(
        "workload",
        choices=["bank", "breast-cancer", "clinical-notes", "fraud-cases"],
        help="bank: synthetic card transactions; breast-cancer: the Wisconsin data split by "
        "hospital; clinical-notes: synthetic notes for a text model; fraud-cases: synthetic "
        "card-fraud cases as instructions for a language model (JSONL prompt/response)",
    )
    data.add_argument(
        "--clients", type=int, default=3, help="number of banks or hospitals (default 3)"
    )
    data.add_argument(
        "--rows", type=int, default=3000, help="rows per client on average (synthetic workloads)"
    )
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    data.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for client-1.csv, client-2.csv, … (or .jsonl)",
    )
    data.set_defaults(handler=_data)


def _data(args: argparse.Namespace) -> int:
    from fedlora import datasets

    if args.clients < 1:
        raise FedLoraError("--clients must be at least 1")
    if args.workload == "fraud-cases":
        for i, records in enumerate(
            datasets.fraud_cases(args.clients, args.rows, args.seed), start=1
        ):
            datasets.write_instructions(args.out / f"client-{i}.jsonl", records)
    elif args.workload == "clinical-notes":
        for i, (texts, y) in enumerate(
            datasets.clinical_notes(args.clients, args.rows, args.seed), start=1
        ):
            datasets.write_text(args.out / f"client-{i}.jsonl", texts, y)
    else:
        parts = (
            datasets.bank_transactions(args.clients, args.rows, args.seed)
            if args.workload == "bank"
            else datasets.breast_cancer_split(args.clients, args.seed)
        )
        columns = datasets.BANK_COLUMNS if args.workload == "bank" else None
        for i, (x, y) in enumerate(parts, start=1):
            datasets.write_tabular(args.out / f"client-{i}.csv", x, y, columns)
    print(f"wrote {args.clients} {args.workload} files to {args.out}")
    return 0
