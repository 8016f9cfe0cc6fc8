"""The ``fedlora`` command line: one module per command group, each registering its own commands.

``demo`` runs a whole federation on loopback and ``crypto-demo`` one round in process
(:mod:`.demo`); ``coordinator`` and ``client`` run the services from YAML (:mod:`.services`);
``certs``, ``keys``, ``data`` and ``model`` prepare a federation; ``audit`` checks its log;
``export`` takes the trained model home (DESIGN.md §8). Heavy libraries (torch, grpc) are
imported by the handlers that need them, never to build the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from fedlora import __version__
from fedlora.cli import audit, certs, data, demo, flower, keys, model, ops, provision, services
from fedlora.errors import FedLoraError

GROUPS = (demo, services, ops, provision, flower, certs, audit, data, model, keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlora",
        description="Federated LoRA fine-tuning with threshold-Paillier secure aggregation.",
        epilog="Exit status: 0 success; 1 a verification failed (audit verify/prove: the log or "
        "receipt is not what it claims); 2 an error a person can fix (the message names the "
        "cause and the fix); 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"fedlora {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, also show the full traceback"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # gRPC's C core logs handshake failures and the like to stderr; fedlora says what went wrong
    # in one line of its own. Its lines show only with --debug (set before grpc is imported);
    # without it, a GRPC_VERBOSITY the operator exported is respected.
    if args.debug:
        os.environ["GRPC_VERBOSITY"] = "DEBUG"
    else:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        return int(args.handler(args))
    except FedLoraError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"fedlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
