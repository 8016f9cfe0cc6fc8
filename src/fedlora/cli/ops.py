"""``fedlora status`` and ``fedlora config check``: what a federation is doing, and whether a
configuration will start, without starting anything.

``status`` with a client's YAML asks the live coordinator (mTLS, the client's credentials; it
does not join); with the coordinator's YAML it reads the coordinator's state folder, live or not,
and says whether the service holds it. ``config check`` loads every file a configuration names
and checks it the way the service would at start (and the peers at the first call), and, for a
coordinator with history, whether a restart would be refused for a changed configuration.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from fedlora.errors import ConfigError, FedLoraError

console = Console()


def register(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="what the federation is doing now: round, stage, who joined and contributed, deadlines",
    )
    status.add_argument(
        "--config",
        type=Path,
        required=True,
        help="a client's YAML (asks the coordinator over mTLS) or the coordinator's YAML (reads "
        "its state folder)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead")
    status.set_defaults(handler=lambda args: run_status(args.config, as_json=args.json))
    config = sub.add_parser("config", help="check a coordinator or client YAML without starting it")
    config_sub = config.add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND"
    )
    check = config_sub.add_parser(
        "check",
        help="load and check every file the YAML names (keys, certificates, key share, base "
        "model, data) as the service would at start; exit 0 if it would start and can finish a "
        "round, 1 if it would start but cannot (a warning says why)",
    )
    check.add_argument("file", type=Path, help="a coordinator or client YAML")
    check.add_argument("--json", action="store_true", help="print one JSON object instead")
    check.set_defaults(handler=lambda args: run_check(args.file, as_json=args.json))


def config_kind(path: Path) -> str:
    """``coordinator`` or ``client``: which YAML this is (by its top-level keys)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if isinstance(data, dict) and "parties" in data:
        return "coordinator"
    if isinstance(data, dict) and "peers" in data:
        return "client"
    raise ConfigError(
        f"{path} is neither a coordinator config (it would list parties) nor a client config "
        "(it would list peers)"
    )


# -- status --------------------------------------------------------------------------------------


STATUS_BUDGET_S = 8.0  # `fedlora status` retries an unreachable coordinator this long at most


def _in(deadline_ms: float) -> str:
    left = deadline_ms / 1000 - time.time()
    return f"in {left:.0f}s" if left >= 0 else f"{-left:.0f}s ago"


def coordinator_status(config_path: Path) -> dict[str, Any]:
    """The coordinator's state as its audit log records it, and whether a service holds it."""
    import fcntl
    import os

    from fedlora.audit import ENTRIES
    from fedlora.config import load_coordinator_config
    from fedlora.coordinator._state import replay

    config = load_coordinator_config(config_path)
    log = config.state_dir / "audit" / ENTRIES
    lock = config.state_dir / ".lock"
    running: int | None = None
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            running = int(text) if text.isdigit() else 0
        finally:
            os.close(fd)
    doc: dict[str, Any] = {
        "federation_id": config.federation_id,
        "coordinator_running": running is not None,
        "pid": running or None,
        "state_dir": str(config.state_dir),
    }
    if not log.exists():
        revoked = _revoked(config, None)
        warning = _blocked(config, revoked) or ""
        return {**doc, "stage": "not started", "round": 0, "warning": warning}
    state = replay(json.loads(line) for line in log.read_bytes().splitlines() if line)
    r = state.round
    settings = state.settings
    revoked = _revoked(config, state.revocations)
    doc.update(
        {
            "stage": state.stage.value if state.stage else "not started",
            "round": r.number if r else 0,
            "rounds": settings.get("federated_learning.rounds"),
            "global_version": state.global_version,
            "joined": sorted(state.joined - revoked),
            "revoked": sorted(revoked),
            "warning": _blocked(config, revoked) or "",
            "min_clients": settings.get("federated_learning.min_clients"),
            "contributors": sorted(r.contributions) if r else [],
            "participant_threshold": settings.get("federated_learning.participant_threshold"),
            "ticket_signatures": sorted(r.ticket_signatures) if r else [],
            "partial_decryptions": sorted(r.partials) if r else [],
            "deadline_ms": (r.decrypt_deadline_ms or r.deadline_ms) if r else None,
        }
    )
    return doc


def _revoked(config: Any, recorded: Any) -> frozenset[str]:
    """Who is revoked: the config's ``revoked: true``, what the log recorded, the list file."""
    from fedlora.revocation import RevocationWatcher

    tls = config.server.tls
    watcher = RevocationWatcher(
        config.server.revocations, tls.ca if tls else None, config.federation_id
    )
    watcher.current = recorded
    listed, _ = watcher.poll()
    return frozenset(p.id for p in config.parties if p.revoked) | listed


def _blocked(config: Any, revoked: frozenset[str]) -> str | None:
    """Why no round can be decrypted with these parties revoked (see decryption_blocked)."""
    from fedlora._files import read_file
    from fedlora.coordinator._settings import check_threshold_key
    from fedlora.crypto import ThresholdPublicKey
    from fedlora.protocol import decryption_blocked

    if config.federated_learning.encryption_type != "homomorphic":
        return None
    key = ThresholdPublicKey.from_json(
        read_file(config.keys.threshold_public_key, "keys.threshold_public_key")
    )
    quorum = check_threshold_key(config, key)
    return decryption_blocked(key.party_ids, quorum, key.threshold, revoked)


def client_status(config_path: Path) -> dict[str, Any]:
    """The round as the coordinator shows it to this client, and what the client keeps."""
    from fedlora.client import GrpcTransport
    from fedlora.client._models import ModelKeeper
    from fedlora.config import load_client_config
    from fedlora.errors import TransportError

    config = load_client_config(config_path)
    key = bytes.fromhex(config.keys.coordinator_signing_public_key)
    kept = ModelKeeper(config.state_dir, config.federation_id, key).kept()
    final = [v for v, folder in kept.items() if (folder / "final.json").exists()]
    receipts = config.state_dir / "receipts"
    local = {
        "federation_id": config.federation_id,
        "client": config.id,
        "coordinator": config.coordinator.address,
        "kept_versions": sorted(kept),
        "final_version": max(final) if final else None,
        "receipts": len(list(receipts.glob("*.json"))) if receipts.is_dir() else 0,
    }
    transport = GrpcTransport(config, budget_s=STATUS_BUDGET_S)
    try:
        s = transport.round_status()
    except TransportError as exc:  # say what this member keeps, and why there is no more
        return {**local, "stage": "unknown", "unreachable": str(exc)}
    finally:
        transport.close()
    return {
        **local,
        "stage": s.stage.value,
        "round": s.round,
        "rounds": s.rounds_total,
        "global_version": s.global_version,
        "global_digest": s.global_digest.hex(),
        "joined": list(s.joined),
        "min_clients": s.min_clients,
        "contributors": list(s.contributors),
        "contributed": s.contributed,
        "decryptor": s.decryptor,
        "ticket_signatures": s.ticket_signatures,
        "deadline_ms": s.deadline_unix_s * 1000 if s.deadline_unix_s else None,
        "warning": s.warning,
    }


def run_status(config_path: Path, *, as_json: bool = False) -> int:
    kind = config_kind(config_path)
    doc = coordinator_status(config_path) if kind == "coordinator" else client_status(config_path)
    if as_json:
        print(json.dumps(doc, indent=2))
        return 2 if doc.get("unreachable") else 0
    lines = [f"federation {doc['federation_id']!r}: {doc['stage']}"]
    if doc.get("round"):
        lines[0] += f", round {doc['round']} of {doc.get('rounds') or '?'}"
    if kind == "coordinator":
        pid = f" (pid {doc['pid']})" if doc.get("pid") else ""
        lines.append(
            "coordinator: running" + pid
            if doc["coordinator_running"]
            else "coordinator: not running"
        )
    live = doc["stage"] not in ("finished", "not started", "waiting")
    if "joined" in doc:
        waiting = doc["stage"] in ("waiting", "not started")
        lines.append(
            f"joined: {', '.join(doc['joined']) or 'nobody yet'}"
            + (f" (round 1 opens when {doc.get('min_clients')} have joined)" if waiting else "")
        )
    if doc.get("round"):
        lines.append(
            f"contributed to round {doc['round']}: {', '.join(doc['contributors']) or 'nobody yet'}"
        )
        if live and doc.get("deadline_ms"):
            lines.append(f"{doc['stage']} deadline: {_in(doc['deadline_ms'])}")
    if "global_version" in doc:
        lines.append(f"global version: {doc['global_version']}")
    if kind == "client":
        final = doc["final_version"]
        lines.append(
            f"kept here: {', '.join(f'v{v}' for v in doc['kept_versions']) or 'none yet'}"
            + (f" (v{final} is final)" if final is not None else "")
            + f"; {doc['receipts']} receipts"
        )
    for line in lines:
        console.print(escape(line), soft_wrap=True)
    if doc.get("warning"):
        console.print(f"[bold red]warning:[/] {escape(doc['warning'])}", soft_wrap=True)
    if doc.get("unreachable"):  # what is kept went to stdout; the failure, as every error does
        print(f"fedlora: error: {doc['unreachable']}", file=sys.stderr)
        return 2
    return 0


# -- config check --------------------------------------------------------------------------------


class _Checks:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.warnings: list[str] = []  # it would start, but cannot do its job (exit status 1)

    def run(self, what: str, check: Callable[[], str | None]) -> None:
        detail = check()
        self.passed.append(f"{what}: {detail}" if detail else what)


def _tls_check(checks: _Checks, prefix: str, tls: Any, name: str | None) -> None:
    from fedlora._files import check_private
    from fedlora.certs import check_certificate

    def cert() -> str:
        c = check_certificate(tls.cert, tls.ca, f"{prefix}.tls.cert", name=name)
        return f"{tls.cert} valid until {c.not_valid_after_utc.date()}, signed by {tls.ca}"

    checks.run("TLS certificate", cert)

    def key() -> str:
        check_private(tls.key, f"{prefix}.tls.key")
        return f"{tls.key} private to its owner"

    checks.run("TLS key", key)


def check_coordinator(path: Path) -> _Checks:
    from fedlora.config import load_coordinator_config
    from fedlora.coordinator._adapter import AdapterTemplate
    from fedlora.coordinator._build import load_signing_key, read_file
    from fedlora.coordinator._startup import load_spec as _load_spec
    from fedlora.crypto import ThresholdPublicKey

    checks = _Checks()
    config = load_coordinator_config(path)
    fl = config.federated_learning
    checks.run(
        "configuration",
        lambda: (
            f"{config.federation_id!r}, {len(config.parties)} parties, {fl.rounds} rounds, "
            f"participant_threshold {fl.participant_threshold}"
        ),
    )
    checks.run("signing key", lambda: (load_signing_key(config.keys.signing_key), None)[1])
    key = None
    gen = config.keys.generation
    pending = gen is not None and not config.keys.threshold_public_key.exists()
    if fl.encryption_type == "homomorphic" and not pending:
        try:
            key = ThresholdPublicKey.from_json(
                read_file(config.keys.threshold_public_key, "keys.threshold_public_key")
            )
        except FedLoraError as exc:
            raise ConfigError(f"keys.threshold_public_key: {exc}") from None
    from fedlora.coordinator._settings import check_threshold_key
    from fedlora.crypto import ticket_quorum

    if pending and gen is not None:
        t = fl.decryption_threshold
        quorum = ticket_quorum(len(gen.holders), t)
        checks.run(
            "threshold key",
            lambda: (
                f"not dealt: {', '.join(gen.holders)} generate a {gen.bits}-bit {t}-of-"
                f"{len(gen.holders)} key at first start (ℓ ≥ 2t − 1 holds), written to "
                f"{config.keys.threshold_public_key}"
            ),
        )
    else:
        quorum = check_threshold_key(config, key)
    if key is not None:
        checks.run(
            "threshold key",
            lambda: (
                f"{key.n.bit_length()}-bit, {key.threshold}-of-{key.parties}, ticket quorum {quorum}"
            ),
        )
    if config.server.tls is not None:
        _tls_check(checks, "server", config.server.tls, None)
    template = config.model.adapter_template
    if template is not None:
        checks.run(
            "adapter template",
            lambda: (AdapterTemplate(template, config.model.num_parameters), str(template))[1],
        )
    spec = _load_spec(config)
    checks.run(
        "federation spec",
        lambda: (
            f"{len(spec)} settings every client must match"
            if spec
            else "none (clients are "
            "compared by parameter count only; `fedlora model template` writes one)"
        ),
    )
    checks.passed.extend(_check_history(config, key, spec))
    _check_revocations(checks, config, key, quorum)
    return checks


def _check_revocations(checks: _Checks, config: Any, key: Any, quorum: int) -> None:
    """The revocation list as the coordinator would load it at start-up (no older than what the
    log recorded), and whether the share holders left can still decrypt a round."""
    from fedlora.audit import ENTRIES
    from fedlora.coordinator._state import replay
    from fedlora.protocol import decryption_blocked
    from fedlora.revocation import RevocationWatcher

    log = config.state_dir / "audit" / ENTRIES
    recorded = (
        replay(json.loads(line) for line in log.read_bytes().splitlines() if line).revocations
        if log.exists()
        else None
    )
    tls = config.server.tls
    watcher = RevocationWatcher(
        config.server.revocations, tls.ca if tls else None, config.federation_id
    )
    listed = watcher.start(recorded)  # raises as the coordinator's start would
    revoked = frozenset(p.id for p in config.parties if p.revoked) | listed
    current = watcher.current
    checks.run(
        "revocations",
        lambda: (
            (f"{config.server.revocations} serial {current.serial}; " if current else "")
            + (f"revoked: {', '.join(sorted(revoked))}" if revoked else "nobody revoked")
        ),
    )
    if key is not None:
        blocked = decryption_blocked(key.party_ids, quorum, key.threshold, revoked)
        if blocked:
            checks.warnings.append(blocked)


def _check_history(config: Any, key: Any, spec: Any) -> list[str]:
    """Whether a restart on the state folder would be refused for a changed configuration."""
    from fedlora.audit import ENTRIES
    from fedlora.coordinator._settings import check_changes, differences, federation_parameters
    from fedlora.coordinator._state import replay

    log = config.state_dir / "audit" / ENTRIES
    if not log.exists():
        return [f"state folder: {config.state_dir} (new federation)"]
    state = replay(json.loads(line) for line in log.read_bytes().splitlines() if line)
    current = federation_parameters(config, key, spec).settings
    changes = differences(state.settings, current)
    number = state.round.number if state.round else 0
    check_changes(changes, accept=True, state_dir=str(config.state_dir), round_number=number)
    stage = state.stage.value if state.stage else "not started"
    where = f"state folder: {config.state_dir} (round {number}, {stage})"
    if changes:
        return [
            f"{where}; the configuration changed ({', '.join(changes)}): start with "
            "--accept-config-change to apply it (audited)"
        ]
    return [f"{where}; the configuration matches the federation's"]


def check_client(path: Path) -> _Checks:
    from fedlora.cli._extras import require_client_extra
    from fedlora.config import load_client_config

    require_client_extra("fedlora config check (a client config)")
    from rich.console import Console as _Console

    from fedlora.client import Client
    from fedlora.client._spec import federation_spec
    from fedlora.protocol import spec_digest

    checks = _Checks()
    config = load_client_config(path)
    checks.run(
        "configuration",
        lambda: (
            f"{config.id!r} ({config.role}) in {config.federation_id!r}, {len(config.peers)} peers"
        ),
    )
    if config.coordinator.tls is not None:
        _tls_check(checks, "coordinator", config.coordinator.tls, config.id)
    client = Client(config, console=_Console(quiet=True))  # loads the keys, data and model
    checks.run("signing and transport keys", lambda: None)
    gen = config.keys.generation
    if gen is not None and not config.keys.threshold_public_key.exists():
        holders = [h.id for h in gen.holders]
        checks.run(
            "threshold key",
            lambda: (
                f"not dealt: {', '.join(holders)} generate a {gen.bits}-bit {gen.threshold}-of-"
                f"{len(holders)} key at first start"
                + ("; this client is one of them" if config.id in holders else "")
                + "; it is accepted only with a quorum of their signatures"
            ),
        )
    elif not config.policy.allow_plaintext:
        client.member.open_keys()
        checks.run(
            "key share",
            lambda: (
                "opened; this client is a decryptor"
                if client.member.share
                else "not a share holder"
            ),
        )
    trainer = client.trainer
    spec = federation_spec(config, trainer)
    checks.run(
        "model and data",
        lambda: (
            f"{config.model.kind}, {trainer.num_parameters:,} shared parameters, "
            f"{trainer.num_examples:,} local examples; spec {spec_digest(spec)[:16]}…"
        ),
    )
    client.transport.close()
    return checks


def run_check(path: Path, *, as_json: bool = False) -> int:
    """0: it would start and can work; 1: it would start, but cannot finish a round (a warning
    says why); 2 (or a one-line error): it would not start."""
    kind = config_kind(path)
    try:
        checks = check_coordinator(path) if kind == "coordinator" else check_client(path)
    except FedLoraError as exc:
        if as_json:
            print(json.dumps({"ok": False, "kind": kind, "error": str(exc)}))
            return 2
        raise
    status = 1 if checks.warnings else 0
    if as_json:
        doc = {"ok": True, "kind": kind, "checks": checks.passed, "warnings": checks.warnings}
        print(json.dumps(doc, indent=2))
        return status
    for line in checks.passed:
        console.print(f"[green]ok[/] {escape(line)}", soft_wrap=True)
    for line in checks.warnings:
        console.print(f"[bold red]warning[/] {escape(line)}", soft_wrap=True)
    if checks.warnings:
        console.print(
            f"[yellow]{escape(str(path))}: this {kind} configuration would start, but cannot "
            "finish a round (see the warning)[/]",
            soft_wrap=True,
        )
    else:
        console.print(f"[green]{escape(str(path))}: this {kind} configuration would start[/]")
    return status
