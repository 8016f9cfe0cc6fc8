"""``fedlora provision init|build|install|revoke``: a kit per site from one project file
(:mod:`fedlora.provision`); private keys are made where they live and never travel."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedlora.errors import ConfigError

console = Console(stderr=True)


def register(sub: Any) -> None:
    prov = sub.add_parser(
        "provision",
        help="set up a federation from one project file: keys made at each site, a kit per site",
        description="1. every site: provision init; 2. the organizer: provision build; 3. every "
        "site: provision install. See docs/provisioning.md.",
    )
    prov_sub = prov.add_subparsers(dest="provision_command", required=True, metavar="STEP")
    init = prov_sub.add_parser(
        "init",
        help="at a site: make its private keys and the request to send to the organizer",
    )
    init.add_argument("--project", type=Path, required=True, help="the federation's project YAML")
    init.add_argument(
        "--id", required=True, help="this site's id: a party id from the project, or 'coordinator'"
    )
    init.add_argument(
        "--site", type=Path, required=True, help="this site's folder (its private keys stay here)"
    )
    init.set_defaults(handler=_init)
    build = prov_sub.add_parser(
        "build",
        help="at the organizer: sign the requests, deal the threshold key, write a kit per site",
    )
    build.add_argument("--project", type=Path, required=True, help="the federation's project YAML")
    build.add_argument(
        "--requests", type=Path, required=True, help="folder with every site's <id>.request.json"
    )
    build.add_argument(
        "--ca",
        type=Path,
        required=True,
        help="the federation CA's folder (created if empty; keep its ca.key offline)",
    )
    build.add_argument("--out", type=Path, required=True, help="a new folder for the kits")
    build.set_defaults(handler=_build)
    install = prov_sub.add_parser(
        "install", help="at a site: add its kit to the site folder and check it against its keys"
    )
    install.add_argument("--kit", type=Path, required=True, help="the kit the organizer sent")
    install.add_argument(
        "--site", type=Path, required=True, help="the folder where this site ran provision init"
    )
    install.set_defaults(handler=_install)
    revoke = prov_sub.add_parser(
        "revoke",
        help="at the organizer: sign a revocation list (the coordinator reloads it when it changes)",
    )
    revoke.add_argument("--project", type=Path, required=True, help="the federation's project YAML")
    revoke.add_argument("--ca", type=Path, required=True, help="the federation CA's folder")
    revoke.add_argument(
        "--party", action="append", required=True, help="a party to revoke; repeatable"
    )
    revoke.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the list to write; an existing list is extended (revocation is final)",
    )
    revoke.add_argument(
        "--force",
        action="store_true",
        help="revoke even when the share holders left cannot decrypt a round (until a new key is "
        "dealt, no round closes)",
    )
    revoke.set_defaults(handler=_revoke)
    renew = prov_sub.add_parser(
        "renew",
        help="at the organizer: a fresh certificate for a site's TLS key, from its request (no "
        "private key moves)",
    )
    renew.add_argument("--project", type=Path, required=True, help="the federation's project YAML")
    renew.add_argument("--ca", type=Path, required=True, help="the federation CA's folder")
    renew.add_argument(
        "--request", type=Path, required=True, help="the site's <id>.request.json (provision init)"
    )
    renew.add_argument("--out", type=Path, required=True, help="the new certificate (PEM) to write")
    renew.set_defaults(handler=_renew)
    cert = prov_sub.add_parser(
        "install-cert",
        help="at a site: check a renewed certificate against the site's key and the CA, and put "
        "it in place (the old one is kept as tls.pem.old)",
    )
    cert.add_argument("--site", type=Path, required=True, help="the site folder")
    cert.add_argument("--cert", type=Path, required=True, help="the certificate the organizer sent")
    cert.set_defaults(handler=_install_cert)


def _init(args: argparse.Namespace) -> int:
    from fedlora.config import check_id
    from fedlora.provision import init_site, load_project

    project = load_project(args.project)
    request = init_site(project, check_id(args.id, "--id"), args.site)
    console.print(
        f"made {escape(args.id)}'s private keys in {escape(str(args.site))} (they never leave it); "
        f"send {escape(str(request))} to the organizer (it holds only public keys and a "
        "certificate request)",
        soft_wrap=True,
    )
    return 0


def _build(args: argparse.Namespace) -> int:
    from fedlora.cli._extras import require_client_extra
    from fedlora.provision import build_kits, load_project

    require_client_extra("fedlora provision build (it writes the adapter template)")
    project = load_project(args.project)
    with console.status(
        f"signing certificates and dealing a {project.keys.bits}-bit "
        f"{project.federated_learning.decryption_threshold}-of-"
        f"{sum(p.holds_share for p in project.parties)} threshold key…"
    ):
        checklist = build_kits(project, args.project, args.requests, args.ca, args.out)
    console.print(
        f"wrote {len(project.parties) + 1} kits to {escape(str(args.out))}; who sends what to "
        f"whom: {escape(str(checklist))}",
        soft_wrap=True,
    )
    return 0


def _install(args: argparse.Namespace) -> int:
    from fedlora.provision import install_kit

    site_id, checked = install_kit(args.kit, args.site)
    for line in checked:
        console.print(f"[green]ok[/] {escape(line)}", soft_wrap=True)
    config = args.site / f"{site_id}.yaml"
    if site_id == "coordinator":
        nxt = f"fedlora coordinator --config {config}"
    else:
        nxt = (
            f"put your training data where data.path in {config} says, then "
            f"fedlora client --config {config}"
        )
    console.print(
        f"installed; check with: fedlora config check {escape(str(config))}; then {escape(nxt)}",
        soft_wrap=True,
    )
    return 0


def _renew(args: argparse.Namespace) -> int:
    from fedlora.provision import load_project, renew_certificate

    site, until = renew_certificate(load_project(args.project), args.request, args.ca, args.out)
    console.print(
        f"signed a new certificate for {escape(site)}'s TLS key, valid until {until}: send "
        f"{escape(str(args.out))} to the site, which runs `fedlora provision install-cert`",
        soft_wrap=True,
    )
    return 0


def _install_cert(args: argparse.Namespace) -> int:
    from fedlora.provision import install_certificate

    said = install_certificate(args.site, args.cert)
    console.print(f"{escape(said)}; restart the site's service to use it", soft_wrap=True)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from fedlora._files import write_new_file
    from fedlora.crypto import ticket_quorum
    from fedlora.protocol import decryption_blocked
    from fedlora.provision import load_project
    from fedlora.revocation import read_revocations, sign_revocations

    project = load_project(args.project)
    unknown = [p for p in args.party if p not in project.ids]
    if unknown:
        raise ConfigError(f"--party: {unknown} are not parties of {project.federation_id!r}")
    revoked, serial = set(args.party), 1
    if args.out.exists():
        old = read_revocations(args.out, args.ca / "ca.pem", project.federation_id)
        revoked |= old.revoked
        serial = old.serial + 1
    holders = [p.id for p in project.parties if p.holds_share]
    fl = project.federated_learning
    quorum = fl.ticket_quorum or ticket_quorum(len(holders), fl.decryption_threshold)
    blocked = decryption_blocked(holders, quorum, fl.decryption_threshold, revoked)
    if blocked and not args.force:
        raise ConfigError(
            f"refused: {blocked}. Deal a new key for the remaining holders first, or give --force "
            "to revoke now and stop every round until then"
        )
    data = sign_revocations(args.ca, project.federation_id, sorted(revoked), serial)
    tmp = args.out.with_name(f".{args.out.name}.new")
    tmp.unlink(missing_ok=True)
    write_new_file(tmp, data)
    tmp.replace(args.out)
    console.print(
        f"revocation list {escape(str(args.out))} (serial {serial}) revokes "
        f"{', '.join(sorted(revoked))}; copy it over the coordinator's "
        f"{json.dumps('revocations.json')} (server.revocations): it is reloaded on the next call",
        soft_wrap=True,
    )
    if blocked:
        console.print(f"[bold red]warning:[/] {escape(blocked)}", soft_wrap=True)
    return 0
