"""``fedlora coordinator`` and ``fedlora client``: the two services, run from YAML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedlora.cli._extras import require_client_extra
from fedlora.crypto._factory import BACKEND_NAMES


def register(sub: Any) -> None:
    coord = sub.add_parser(
        "coordinator", help="serve a federation's coordinator until stopped (SIGTERM: graceful)"
    )
    coord.add_argument(
        "--config", type=Path, required=True, help="coordinator YAML, e.g. configs/coordinator.yaml"
    )
    coord.add_argument(
        "--accept-config-change",
        action="store_true",
        help="restart with a configuration that differs from the one the federation started with "
        "(schedule, thresholds, enrolment; the change is audited). Without it such a restart is "
        "refused, naming the differing keys",
    )
    coord.add_argument(
        "--exit-when-finished",
        action="store_true",
        help="exit a few seconds after the last round instead of serving the audit log and the "
        "global adapters until stopped",
    )
    coord.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default): one readable line per event; json: one JSON object per line "
        "(time, level, logger, message, and the audit entry's kind and index)",
    )
    _backend_option(coord)
    coord.set_defaults(handler=_coordinator)
    client = sub.add_parser(
        "client", help="join a federation as a bank or hospital and work through its rounds"
    )
    client.add_argument(
        "--config", type=Path, required=True, help="client YAML, e.g. configs/bank.yaml"
    )
    _backend_option(client)
    client.set_defaults(handler=_client)


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        help="where modular exponentiation runs (overrides the YAML's crypto.backend; default "
        "auto: the AVX-512 IFMA kernel where the CPU runs it, else OpenSSL's libcrypto, else "
        "gmpy2)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"crypto.backend": args.backend} if args.backend else {}


def _coordinator(args: argparse.Namespace) -> int:
    from fedlora.config import load_coordinator_config
    from fedlora.coordinator import serve

    config = load_coordinator_config(args.config, _overrides(args))
    return serve(
        config,
        exit_when_finished=args.exit_when_finished,
        accept_config_change=args.accept_config_change,
        log_format=args.log_format,
    )


def _client(args: argparse.Namespace) -> int:
    require_client_extra("fedlora client")
    from fedlora.client import Client
    from fedlora.config import load_client_config

    config = load_client_config(args.config, _overrides(args))
    return Client(config).run()
