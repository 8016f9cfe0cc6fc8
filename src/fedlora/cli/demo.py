"""``fedlora demo`` and ``fedlora crypto-demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    fed = sub.add_parser(
        "demo",
        help="run a whole federation on loopback: coordinator + 5 clients, mTLS, encrypted rounds",
        description="Generates a throwaway CA and keys, starts a coordinator and five clients as "
        "separate processes; the clients generate their 3-of-5 threshold key among themselves (no "
        "dealer), run encrypted rounds; the audit log is verified and the encrypted aggregate "
        "shown equal to the plaintext average.",
    )
    fed.add_argument("--bits", type=int, default=2048, help="threshold key size (default 2048)")
    fed.add_argument("--rounds", type=int, default=3, help="rounds to run (default 3)")
    fed.add_argument(
        "--dir", type=Path, default=None, help="folder for everything (default: a new temp folder)"
    )
    fed.add_argument(
        "--insecure", action="store_true", help="no TLS (loopback only; prints a warning)"
    )
    fed.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before giving up (default 900; 3600 with --base-model)",
    )
    fed.add_argument(
        "--workload",
        choices=["synthetic", "bank", "clinical-notes", "fraud-cases"],
        default="synthetic",
        help="synthetic: tabular LoRA on an 8-feature task (default, fastest); bank: tabular LoRA on synthetic "
        "card transactions; clinical-notes: LoRA on the packaged all-MiniLM-L6-v2 text model; "
        "fraud-cases: LoRA on a causal language model answering synthetic card-fraud cases "
        "(three banks, a 2-of-3 key)",
    )
    fed.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="fraud-cases: the causal LM's folder (e.g. from `fedlora model causal-base --from "
        "smollm2`); default a tiny Llama built from the data, which shows the protocol, not a "
        "model that answers well",
    )
    fed.add_argument(
        "--dealer",
        action="store_true",
        help="deal the threshold key instead (trusts the dealer; faster to start) rather than "
        "have the clients generate it",
    )
    fed.set_defaults(handler=_demo)

    crypto = sub.add_parser(
        "crypto-demo",
        help="run one encrypted round among five parties, end to end, in this process",
        description="Deal a 3-of-5 threshold key; five banks and hospitals seal, prove and sign a "
        "synthetic LoRA delta; the coordinator engine checks and adds them; the share holders "
        "check the aggregate, sign its ticket and release proven partial decryptions; the "
        "published update is compared with the plaintext weighted average. The product's own "
        "code, in one process, without sockets.",
    )
    crypto.add_argument("--bits", type=int, default=2048, help="modulus size (default 2048)")
    crypto.add_argument(
        "--values", type=int, default=65536, help="values per delta (default 65536)"
    )
    crypto.add_argument("--seed", type=int, default=0, help="seed for the synthetic deltas only")
    crypto.set_defaults(handler=_crypto_demo)


def _demo(args: argparse.Namespace) -> int:
    from fedlora.demo.federation import run_demo

    return run_demo(
        bits=args.bits,
        rounds=args.rounds,
        directory=args.dir,
        insecure=args.insecure,
        timeout=args.timeout if args.timeout is not None else (3600 if args.base_model else 900),
        workload=args.workload,
        base_model=args.base_model.resolve() if args.base_model else None,
        dealer=args.dealer,
    )


def _crypto_demo(args: argparse.Namespace) -> int:
    from fedlora.demo.crypto import run_crypto_demo

    return run_crypto_demo(bits=args.bits, values=args.values, seed=args.seed)
