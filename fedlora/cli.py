"""The ``fedlora`` command line.

Until the federation service lands, the main job is ``fedlora crypto-demo``: a complete encrypted
aggregation among five parties in one process, with a production-size key. ``fedlora keys``
runs the key ceremony (DESIGN.md §8).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlora.errors import FedLoraError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlora",
        description="Federated LoRA fine-tuning with threshold-Paillier secure aggregation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "crypto-demo",
        help="run one encrypted aggregation among five parties, end to end, in this process",
        description="Deal a 3-of-5 threshold key, have five banks and hospitals encrypt and sign "
        "a synthetic LoRA delta, add the ciphertexts homomorphically, decrypt the sum with three "
        "partial decryptions (each proven correct), and compare with the plaintext average.",
    )
    demo.add_argument("--bits", type=int, default=2048, help="modulus size (default 2048)")
    demo.add_argument("--values", type=int, default=65536, help="values per delta (default 65536)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the synthetic deltas only")

    keys = sub.add_parser("keys", help="key ceremony: party keys and threshold-key dealing")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    party = keys_sub.add_parser(
        "party", help="create a party's X25519 key pair, to which its key share is encrypted"
    )
    party.add_argument("--id", required=True, help="party id, e.g. bank-a")
    party.add_argument(
        "--out", type=Path, required=True, help="folder for ID.x25519 and ID.x25519.pub"
    )
    deal = keys_sub.add_parser(
        "deal",
        help="deal a t-of-n threshold Paillier key, one encrypted share file per party",
        description="Generates safe primes, deals the key, writes threshold-key.json and "
        "shares/ID.share.json (each encrypted to that party's X25519 key), then forgets the "
        "factorization and the shares.",
    )
    deal.add_argument(
        "--party",
        action="append",
        required=True,
        metavar="ID=PUBFILE",
        help="a party and its X25519 public key file (repeat for each party)",
    )
    deal.add_argument("--threshold", type=int, required=True, help="t: partial decryptions needed")
    deal.add_argument("--bits", type=int, default=2048, help="modulus size: 2048 (default) or 3072")
    deal.add_argument("--out", type=Path, required=True, help="folder for the key and share files")
    check = keys_sub.add_parser("check-share", help="open and verify a party's share file")
    check.add_argument("--id", required=True, help="party id")
    check.add_argument("--private", type=Path, required=True, help="the party's ID.x25519 file")
    check.add_argument("--share", type=Path, required=True, help="the party's share file")
    check.add_argument("--public-key", type=Path, required=True, help="threshold-key.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "crypto-demo":
            from fedlora._demo import run_crypto_demo

            return run_crypto_demo(bits=args.bits, values=args.values, seed=args.seed)
        from fedlora import _keys

        if args.keys_command == "party":
            return _keys.make_party(args.id, args.out)
        if args.keys_command == "deal":
            return _keys.deal(args.party, args.threshold, args.bits, args.out)
        return _keys.check_share(args.id, args.private, args.share, args.public_key)
    except FedLoraError as exc:
        print(f"fedlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
