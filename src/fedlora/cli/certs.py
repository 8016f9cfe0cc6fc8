"""``fedlora certs``: the federation CA and mTLS certificates (:mod:`fedlora.certs`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedlora.errors import FedLoraError


def register(sub: Any) -> None:
    certs = sub.add_parser("certs", help="federation CA and mTLS certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="CERTS_COMMAND")
    init = certs_sub.add_parser("init", help="create the federation CA (ca.pem, ca.key)")
    init.add_argument("--out", type=Path, required=True, help="folder for ca.pem and ca.key")
    init.set_defaults(handler=_init)
    issue = certs_sub.add_parser("issue", help="issue NAME.pem / NAME.key signed by the CA")
    issue.add_argument("--ca", type=Path, required=True, help="folder with ca.pem and ca.key")
    issue.add_argument(
        "--name", required=True, help="identity (common name): a party id or 'coordinator'"
    )
    issue.add_argument("--out", type=Path, required=True, help="folder for NAME.pem and NAME.key")
    issue.add_argument(
        "--days", type=int, default=825, help="how long the certificate is valid (default 825)"
    )
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
    issue.set_defaults(handler=_issue)


def _init(args: argparse.Namespace) -> int:
    from fedlora.certs import create_ca

    paths = create_ca(args.out)
    print(f"wrote {paths.cert} and {paths.key} (keep the key private)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from fedlora.certs import issue_certificate

    if not 1 <= args.days <= 3650:
        raise FedLoraError(f"--days: {args.days} is outside 1..3650")
    paths = issue_certificate(
        args.ca,
        args.name,
        args.out,
        server_hosts=args.server_host,
        client=not args.no_client,
        valid_days=args.days,
    )
    print(f"wrote {paths.cert} and {paths.key} (keep the key private)")
    return 0
