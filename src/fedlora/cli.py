"""The ``fedlora`` command line.

``fedlora demo`` runs a whole federation on loopback; ``coordinator`` and ``client`` run the real
services from YAML; ``certs`` and ``keys`` prepare a federation; ``audit`` checks its log
(DESIGN.md §8). ``crypto-demo`` exercises the crypto pipeline alone, in one process.
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

    fed = sub.add_parser(
        "demo",
        help="run a whole federation on loopback: coordinator + 5 clients, mTLS, encrypted rounds",
        description="Generates a throwaway CA, keys and a 3-of-5 threshold key, starts a coordinator "
        "and five clients as separate processes, runs encrypted rounds, verifies the audit log and "
        "shows that the encrypted aggregate equals the plaintext average.",
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
        "--timeout", type=float, default=900, help="seconds before giving up (default 900)"
    )
    fed.add_argument(
        "--workload",
        choices=["synthetic", "bank", "clinical-notes"],
        default="synthetic",
        help="synthetic: tabular LoRA on an 8-feature task (default, fastest); bank: tabular LoRA on synthetic "
        "card transactions; clinical-notes: LoRA on the packaged all-MiniLM-L6-v2 text model",
    )

    coord = sub.add_parser(
        "coordinator", help="serve a federation's coordinator until stopped (SIGTERM: graceful)"
    )
    coord.add_argument(
        "--config", type=Path, required=True, help="coordinator YAML, e.g. configs/coordinator.yaml"
    )
    client = sub.add_parser(
        "client", help="join a federation as a bank or hospital and work through its rounds"
    )
    client.add_argument(
        "--config", type=Path, required=True, help="client YAML, e.g. configs/bank.yaml"
    )

    certs = sub.add_parser("certs", help="federation CA and mTLS certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="CERTS_COMMAND")
    init = certs_sub.add_parser("init", help="create the federation CA (ca.pem, ca.key)")
    init.add_argument("--out", type=Path, required=True)
    issue = certs_sub.add_parser("issue", help="issue NAME.pem / NAME.key signed by the CA")
    issue.add_argument("--ca", type=Path, required=True, help="folder with ca.pem and ca.key")
    issue.add_argument(
        "--name", required=True, help="identity (common name): a party id or 'coordinator'"
    )
    issue.add_argument("--out", type=Path, required=True)
    issue.add_argument(
        "--server-host",
        action="append",
        default=[],
        help="DNS name or IP this certificate serves (coordinator)",
    )
    issue.add_argument(
        "--no-client",
        action="store_true",
        help="no client-authentication use (a server-only certificate)",
    )

    audit = sub.add_parser(
        "audit", help="verify, show or prove entries of a coordinator's audit log"
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    for name, text in (
        ("verify", "verify the whole log offline; names the first bad entry"),
        ("show", "rounds, participants, digests, decryptors and timings"),
    ):
        a = audit_sub.add_parser(name, help=text)
        a.add_argument(
            "log", type=Path, help="coordinator state folder, its audit/ folder, or entries.log"
        )
        a.add_argument(
            "--public-key", help="the coordinator's Ed25519 public key: 64 hex digits or a file"
        )
        if name == "show":
            a.add_argument("--plot", type=Path, help="also write a PNG of the rounds over time")
        if name == "verify":
            a.add_argument(
                "--trusted-checkpoint",
                type=Path,
                action="append",
                default=[],
                metavar="FILE",
                help="a signed checkpoint you trust (a client's <state_dir>/checkpoint.json); the "
                "log must hold its tree, so a log cut short or rewritten is refused; repeatable",
            )
            a.add_argument(
                "--receipts",
                type=Path,
                metavar="DIR",
                help="a client's <state_dir>/receipts/ folder: the log must hold every receipt's entry",
            )
    prove = audit_sub.add_parser(
        "prove", help="check a contribution receipt's inclusion in the signed log"
    )
    prove.add_argument("receipt", type=Path, help="a receipt from <client state>/receipts/")
    prove.add_argument(
        "--log", type=Path, help="check against this coordinator state folder (offline)"
    )
    prove.add_argument(
        "--config", type=Path, help="or ask the coordinator, with this client config's credentials"
    )
    prove.add_argument(
        "--public-key",
        help="the coordinator's Ed25519 public key (64 hex digits or a file); by default the key "
        "the receipt names",
    )

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

    data = sub.add_parser(
        "data",
        help="write workload data per client: synthetic bank transactions, breast cancer, clinical notes",
    )
    data.add_argument("workload", choices=["bank", "breast-cancer", "clinical-notes"])
    data.add_argument(
        "--clients", type=int, default=3, help="number of banks or hospitals (default 3)"
    )
    data.add_argument(
        "--rows", type=int, default=3000, help="rows per client on average (synthetic workloads)"
    )
    data.add_argument("--seed", type=int, default=0)
    data.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for client-1.csv, client-2.csv, … (or .jsonl)",
    )

    model = sub.add_parser("model", help="base models and adapter templates for LoRA federations")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    tab = model_sub.add_parser(
        "init-tabular", help="create a tabular MLP base model (Hugging Face folder layout)"
    )
    tab.add_argument(
        "--reference",
        type=Path,
        action="append",
        required=True,
        help="CSV(s) of the agreed schema for input scaling",
    )
    tab.add_argument("--label-column", default="label")
    tab.add_argument("--hidden", type=int, default=64)
    tab.add_argument("--classes", type=int, default=2)
    tab.add_argument("--seed", type=int, default=0)
    tab.add_argument("--out", type=Path, required=True)
    tpl = model_sub.add_parser(
        "template", help="write the coordinator's adapter template for a client config"
    )
    tpl.add_argument(
        "--config",
        type=Path,
        required=True,
        help="any client's YAML (they share the model settings)",
    )
    tpl.add_argument("--out", type=Path, required=True)
    exp = sub.add_parser(
        "export", help="write a global adapter in peft format, or merged into the base model"
    )
    exp.add_argument(
        "--config",
        type=Path,
        required=True,
        help="a client's YAML (its credentials and base model)",
    )
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument(
        "--version", type=int, default=None, help="global version (default: the latest)"
    )
    exp.add_argument("--merge", action="store_true", help="merge the adapter into the base model")

    keys = sub.add_parser("keys", help="key ceremony: party keys and threshold-key dealing")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    signing = keys_sub.add_parser(
        "signing", help="create an Ed25519 signing key pair (party or coordinator)"
    )
    signing.add_argument("--id", required=True, help="party id, or 'coordinator'")
    signing.add_argument(
        "--out", type=Path, required=True, help="folder for ID.ed25519 and ID.ed25519.pub"
    )
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
    deal.add_argument(
        "--bits",
        type=int,
        default=2048,
        help="modulus size: 2048 (default) or 3072; smaller only with --insecure-small-key",
    )
    deal.add_argument(
        "--insecure-small-key",
        action="store_true",
        help="allow --bits below 2048: an easily factored key, for tests and demos only",
    )
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
        return _dispatch(args)
    except FedLoraError as exc:
        print(f"fedlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "crypto-demo":
        from fedlora._demo import run_crypto_demo

        return run_crypto_demo(bits=args.bits, values=args.values, seed=args.seed)
    if args.command == "demo":
        from fedlora._federation_demo import run_demo

        return run_demo(
            bits=args.bits,
            rounds=args.rounds,
            directory=args.dir,
            insecure=args.insecure,
            timeout=args.timeout,
            workload=args.workload,
        )
    if args.command == "coordinator":
        from fedlora.config import load_coordinator_config
        from fedlora.coordinator import serve

        return serve(load_coordinator_config(args.config))
    if args.command == "client":
        from fedlora.client import Client
        from fedlora.config import load_client_config

        return Client(load_client_config(args.config)).run()
    if args.command == "certs":
        from fedlora.certs import create_ca, issue_certificate

        if args.certs_command == "init":
            paths = create_ca(args.out)
        else:
            paths = issue_certificate(
                args.ca,
                args.name,
                args.out,
                server_hosts=args.server_host,
                client=not args.no_client,
            )
        print(f"wrote {paths.cert} and {paths.key} (keep the key private)")
        return 0
    if args.command == "data":
        from fedlora import datasets

        if args.clients < 1:
            raise FedLoraError("--clients must be at least 1")
        if args.workload == "clinical-notes":
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
    if args.command in ("model", "export"):
        from fedlora import _model_cli

        if args.command == "export":
            return _model_cli.export(args.config, args.out, args.version, args.merge)
        if args.model_command == "init-tabular":
            return _model_cli.init_tabular(
                args.reference, args.label_column, args.hidden, args.classes, args.seed, args.out
            )
        return _model_cli.template(args.config, args.out)
    if args.command == "audit":
        from fedlora import _audit_cli

        if args.audit_command == "verify":
            return _audit_cli.run_verify(
                args.log, args.public_key, args.trusted_checkpoint, args.receipts
            )
        if args.audit_command == "show":
            return _audit_cli.run_show(args.log, args.public_key, args.plot)
        return _audit_cli.run_prove(args.receipt, args.log, args.config, args.public_key)
    from fedlora import _keys

    if args.keys_command == "signing":
        return _keys.make_signing(args.id, args.out)
    if args.keys_command == "party":
        return _keys.make_party(args.id, args.out)
    if args.keys_command == "deal":
        return _keys.deal(
            args.party,
            args.threshold,
            args.bits,
            args.out,
            insecure_small_key=args.insecure_small_key,
        )
    return _keys.check_share(args.id, args.private, args.share, args.public_key)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
