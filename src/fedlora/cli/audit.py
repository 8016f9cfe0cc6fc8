"""``fedlora audit verify|show|prove``: offline audit of a coordinator's log, and receipt proofs.

Offline commands import neither grpc nor torch; ``prove --config`` asks the coordinator over gRPC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedlora._files import read_file
from fedlora.audit import (
    AuditSummary,
    Receipt,
    SignedCheckpoint,
    events_by_round,
    read_log_files,
    verify_log,
    verify_receipt,
)
from fedlora.ceremony._generate import check_logged_keys
from fedlora.crypto import leaf_hash, verify_inclusion
from fedlora.errors import FedLoraError, VerificationError
from fedlora.events import describe

console = Console()


def register(sub: Any) -> None:
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
            "--public-key",
            required=True,
            help="the coordinator's Ed25519 public key: 64 hex digits or a file (required: a key "
            "taken from the log itself would prove nothing)",
        )
        a.add_argument("--json", action="store_true", help="print one JSON object instead")
        if name == "show":
            a.add_argument("--plot", type=Path, help="also write a PNG of the rounds over time")
            a.set_defaults(
                handler=lambda args: run_show(args.log, args.public_key, args.plot, args.json)
            )
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
            a.set_defaults(handler=_verify)
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
    prove.set_defaults(
        handler=lambda args: run_prove(args.receipt, args.log, args.config, args.public_key)
    )


def _verify(args: argparse.Namespace) -> int:
    return run_verify(
        args.log, args.public_key, args.trusted_checkpoint, args.receipts, as_json=args.json
    )


def _public_key(spec: str | None, folder: Path) -> bytes:
    """The coordinator's Ed25519 public key: hex, a file holding hex, or the started event."""
    if spec:
        text = (
            read_file(Path(spec), "public key file").decode().strip()
            if Path(spec).exists()
            else spec
        )
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise FedLoraError(
                "--public-key must be 64 hex digits or a file holding them"
            ) from None
        if len(raw) != 32:
            raise FedLoraError("--public-key must be 32 bytes (64 hex digits)")
        return raw
    raise FedLoraError(
        f"give the coordinator's public key with --public-key (hex, or a file); verifying {folder} "
        "with a key taken from the same folder would prove nothing"
    )


def _read_json(path: Path, what: str, fix: str) -> Any:
    data = read_file(path, what)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedLoraError(f"{what} {path} is not JSON ({exc}); {fix}") from None


def read_trusted_checkpoint(path: Path) -> SignedCheckpoint:
    """Read a trusted checkpoint file: one object shaped like a ``checkpoints.log`` line.

    Raises:
        FedLoraError: the file is missing, unreadable, not JSON or not a checkpoint (exit 2: the
            input is wrong, not the log).
    """
    fix = "give the checkpoint.json a client keeps in its state folder"
    doc = _read_json(path, "trusted checkpoint", fix)
    try:
        return SignedCheckpoint.from_dict(doc)
    except VerificationError as exc:
        raise FedLoraError(
            f"trusted checkpoint {path} is not a checkpoint ({exc}); {fix}"
        ) from None


def read_receipts(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Read every ``*.json`` receipt in ``folder`` (a client's ``<state_dir>/receipts/``).

    Raises:
        FedLoraError: the folder is missing or holds no receipts, or a file is unreadable or not a
            JSON object.
    """
    fix = "give a client's <state_dir>/receipts/ folder"
    if not folder.is_dir():
        raise FedLoraError(f"receipts folder {folder} does not exist or is not a folder; {fix}")
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise FedLoraError(f"receipts folder {folder} holds no *.json receipts; {fix}")
    out = []
    for path in paths:
        doc = _read_json(path, "receipt", fix)
        if not isinstance(doc, dict):
            raise FedLoraError(f"receipt {path} is not a JSON object; {fix}")
        out.append((path, doc))
    return out


def verify(
    path: Path,
    public_key: str | None,
    trusted: Sequence[SignedCheckpoint] = (),
    receipts: Sequence[dict[str, Any]] = (),
) -> AuditSummary:
    entries, checkpoints, folder = read_log_files(path)
    return verify_log(
        entries,
        checkpoints,
        _public_key(public_key, folder),
        trusted=trusted,
        receipts=receipts,
    )


def _invalid(what: str, exc: Exception) -> int:
    # One line whatever the terminal width; the message is text, never rich markup.
    console.print(f"[red]{what} INVALID[/]: {escape(str(exc))}", soft_wrap=True)
    return 1


def run_verify(
    path: Path,
    public_key: str | None,
    trusted_checkpoints: Sequence[Path] | None = None,
    receipts_folder: Path | None = None,
    *,
    as_json: bool = False,
) -> int:
    """``fedlora audit verify``: 0 when the log verifies (and holds every anchor given), else 1.

    Unreadable inputs raise :class:`FedLoraError`, which the command line turns into exit 2.
    """
    trusted = [read_trusted_checkpoint(p) for p in trusted_checkpoints or ()]
    receipts = read_receipts(receipts_folder) if receipts_folder is not None else []
    try:
        summary = verify(path, public_key, trusted, [doc for _, doc in receipts])
        keys = check_logged_keys(summary.events, summary.log_id)
    except VerificationError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
            return 1
        return _invalid("audit log", exc)
    rounds = events_by_round(summary.events)
    closed = sum(1 for evs in rounds.values() if any(e["event"] == "round_closed" for e in evs))
    failed = sum(1 for evs in rounds.values() if any(e["event"] == "round_failed" for e in evs))
    if as_json:
        doc = {
            "ok": True,
            "log_id": summary.log_id,
            "entries": summary.entries,
            "checkpoints": summary.checkpoints,
            "root": summary.root.hex(),
            "rounds_closed": closed,
            "rounds_failed": failed,
            "trusted_checkpoints": len(trusted),
            "receipts": len(receipts),
            "generated_keys": keys,
        }
        print(json.dumps(doc, indent=2))
        return 0
    anchors = (
        f"; holds {len(trusted)} trusted checkpoint(s) and {len(receipts)} receipt(s)"
        if trusted or receipts
        else "; no trusted checkpoint or receipts given, so a log cut short would go unnoticed"
    )
    console.print(
        f"[green]audit log OK[/]: {summary.entries} entries, {summary.checkpoints} signed checkpoints, "
        f"log {escape(repr(summary.log_id))}, root {summary.root.hex()[:16]}…; {closed} rounds closed, "
        f"{failed} failed{anchors}",
        soft_wrap=True,
    )
    for line in keys:
        console.print(f"[green]key OK[/]: {escape(line)}", soft_wrap=True)
    return 0


def _rows(summary: AuditSummary) -> list[dict[str, Any]]:
    rows = []
    for number, evs in sorted(events_by_round(summary.events).items()):
        by = {e["event"]: e for e in evs}
        opened = by.get("round_opened", {}).get("time_ms")
        accepted = [e for e in evs if e["event"] == "contribution_accepted"]
        rejected = [e for e in evs if e["event"] == "contribution_rejected"]
        agg, closed, failed = by.get("aggregated"), by.get("round_closed"), by.get("round_failed")
        end = (closed or failed or {}).get("time_ms")
        rows.append(
            {
                "round": number,
                "status": "closed" if closed else "failed" if failed else "open",
                "participants": [e["client"] for e in accepted],
                "digests": [e["ciphertexts_digest"][:8] for e in accepted],
                "rejected": len(rejected),
                "decryptors": (closed or {}).get("decryptors", []),
                "collect_s": ((agg["time_ms"] - opened) / 1000) if agg and opened else None,
                "decrypt_s": ((closed["time_ms"] - agg["time_ms"]) / 1000)
                if agg and closed
                else None,
                "total_s": ((end - opened) / 1000) if end and opened else None,
                "opened_ms": opened,
                "global": (closed or {}).get("global_digest", "")[:12],
                "reason": (failed or {}).get("reason", ""),
                "failed_at": (failed or {}).get("stage", ""),
            }
        )
    return rows


# What the rounds table already shows, entry by entry; every other kind is listed as an event.
_ROUND_FLOW = frozenset(
    {
        "round_opened",
        "contribution_accepted",
        "aggregated",
        "ticket_signed",
        "ticket_quorum",
        "partial_accepted",
        "decrypted",
        "global_published",
        "round_closed",
    }
)


def _events(summary: AuditSummary) -> list[dict[str, Any]]:
    """Every entry the rounds table does not show: the federation's start and end, joins,
    refusals, failures with their reason, restarts, configuration changes, revocations."""
    return [
        {
            "index": e["index"],
            "time": _when(e["time_ms"]),
            "time_ms": e["time_ms"],
            "round": e.get("round"),
            "event": e["event"],
            "detail": describe(e["event"], e),
        }
        for e in summary.events
        if e["event"] not in _ROUND_FLOW
    ]


def _when(time_ms: int | None) -> str:
    if not time_ms:
        return ""
    return dt.datetime.fromtimestamp(time_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def run_show(path: Path, public_key: str | None, plot: Path | None, as_json: bool = False) -> int:
    summary = verify(path, public_key)
    rows = _rows(summary)
    events = _events(summary)
    counts = dict(sorted(Counter(e["event"] for e in summary.events).items()))
    if as_json:
        doc = {
            "log_id": summary.log_id,
            "entries": summary.entries,
            "rounds": [{**r, "opened": _when(r["opened_ms"])} for r in rows],
            "events": events,
            "entries_by_kind": counts,
        }
        print(json.dumps(doc, indent=2))
        if plot is not None:
            _plot(rows, events, plot, summary.log_id)
        return 0
    table = Table(title=f"audit log {summary.log_id!r}: {summary.entries} entries, verified")
    columns = (
        "round",
        "opened (UTC)",
        "status",
        "contributions: client digest",
        "rejected",
        "decryptors",
        "collect s",
        "decrypt s",
        "global / why it failed",
    )
    for col in columns:  # digests are short already: never break a word across lines
        table.add_column(col, no_wrap=col != "global / why it failed", overflow="fold")

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}"

    for r in rows:
        table.add_row(
            str(r["round"]),
            _when(r["opened_ms"]),
            r["status"],
            "\n".join(f"{p} {d}" for p, d in zip(r["participants"], r["digests"])),
            str(r["rejected"]),
            "\n".join(r["decryptors"]),
            fmt(r["collect_s"]),
            fmt(r["decrypt_s"]),
            r["global"] or (f"at {r['failed_at']}: {r['reason']}" if r["reason"] else ""),
        )
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a pipe or a file: rich would assume 80 columns
    console.print(table)
    others = Table(title="everything else in the log")
    for col in ("entry", "time (UTC)", "event", "what happened"):
        others.add_column(col, overflow="fold", no_wrap=col != "what happened")
    for e in events:
        others.add_row(str(e["index"]), e["time"], e["event"], e["detail"])
    console.print(others)
    console.print(
        "entries by kind: " + ", ".join(f"{k} {n}" for k, n in counts.items()), soft_wrap=True
    )
    if plot is not None:
        _plot(rows, events, plot, summary.log_id)
        console.print(f"plot written to {plot}")
    return 0


def _plot(rows: list[dict[str, Any]], events: list[dict[str, Any]], out: Path, log_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min((r["opened_ms"] for r in rows if r["opened_ms"]), default=0)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.7 * len(rows)))
    end = 0.0
    for r in rows:
        if r["opened_ms"] is None:
            continue
        t0 = (r["opened_ms"] - start) / 1000
        collect = r["collect_s"] if r["collect_s"] is not None else (r["total_s"] or 0)
        bar = {"height": 0.4, "left": t0}
        ax.barh(r["round"], collect, color="#4c72b0", label="collecting", **bar)
        if r["decrypt_s"] is not None:
            ax.barh(
                r["round"],
                r["decrypt_s"],
                height=0.4,
                left=t0 + collect,
                color="#dd8452",
                label="decrypting",
            )
        end = max(end, t0 + (r["total_s"] or collect))
        if r["status"] == "failed":  # above the bar, from its start: never off the axes
            why = r["reason"] if len(r["reason"]) <= 90 else r["reason"][:87] + "…"
            ax.text(t0, r["round"] - 0.24, f"failed: {why}", color="#c44e52", fontsize=7)
        ax.text(
            t0,
            r["round"] + 0.38,
            f"{len(r['participants'])} client{'s' * (len(r['participants']) != 1)}",
            fontsize=7,
        )
    marks = {"coordinator_restarted": "restart", "config_changed": "config change"}
    marks |= {"revocations_loaded": "revocation"}
    for e in events:  # the federation's own events, as vertical lines at their time
        label = marks.get(e["event"])
        if label and e["time_ms"] and e["time_ms"] >= start:
            x = (e["time_ms"] - start) / 1000
            end = max(end, x)
            ax.axvline(x, color="#8c8c8c", linestyle="--", linewidth=0.8, label=label)
            top = ax.get_xaxis_transform()  # y in axes units: the top, however y is oriented
            ax.text(x, 1.0, f" {label}", fontsize=7, color="#555555", va="bottom", transform=top)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(  # outside the axes, so it never covers a bar
        dict(zip(labels, handles)).values(),
        dict(zip(labels, handles)).keys(),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    ax.set_xlim(0, end * 1.08 + 1)  # room for a mark at the last moment
    ax.set_xlabel("seconds since the first round opened")
    ax.set_ylabel("round")
    ticks = [r["round"] for r in rows]
    ax.set_yticks(ticks)
    ax.set_ylim(max(ticks, default=1) + 0.7, min(ticks, default=1) - 0.7)  # round 1 on top
    ax.set_title(f"fedlora rounds over time — {log_id}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_prove(
    receipt_path: Path, log: Path | None, config: Path | None, public_key: str | None = None
) -> int:
    """``fedlora audit prove``: check a receipt's signature and its entry's inclusion in the log.

    A receipt that carries its entry, inclusion proof and signed checkpoint proves itself offline;
    ``--log`` then also checks that the log holds it (not cut short, not rewritten) and ``--config``
    asks the live coordinator.
    """
    doc = _read_json(receipt_path, "receipt", "give a file from a client's <state_dir>/receipts/")
    try:
        receipt = Receipt.from_dict(doc)
        key_hex = (
            public_key if public_key is not None else doc.get("coordinator_signing_public_key")
        )
        if key_hex is None:
            raise FedLoraError(
                f"{receipt_path} names no coordinator key; give the coordinator's key with --public-key"
            )
        coordinator_key = _public_key(key_hex, receipt_path)
    except VerificationError as exc:
        raise FedLoraError(f"{receipt_path} is not a fedlora receipt: {exc}") from None
    try:
        verify_receipt(receipt, coordinator_key)
        if log is None and config is None:
            cp = receipt.checkpoint
            console.print(
                f"[green]receipt OK[/]: round {receipt.round_number} contribution of "
                f"{escape(receipt.client_id)} is entry {receipt.log_index} of the coordinator's "
                f"signed checkpoint (log {escape(repr(cp.log_id))}, tree size {cp.tree_size}, "
                f"root {cp.root.hex()[:16]}…), proved offline from the receipt alone",
                soft_wrap=True,
            )
            return 0
        if log is not None:
            entries_data, checkpoints_data, _ = read_log_files(log)
            summary = verify_log(entries_data, checkpoints_data, coordinator_key, receipts=[doc])
            size, root = summary.entries, summary.root
            where = f"the log in {log}"
        elif config is not None:
            entry, path, size, root = _fetch_proof(config, receipt.log_index, coordinator_key)
            if receipt.log_index >= size:
                raise VerificationError(
                    f"the log has {size} entries; the receipt points at entry {receipt.log_index}"
                )
            verify_inclusion(leaf_hash(entry), receipt.log_index, size, path, root)
            try:
                logged = json.loads(entry)
            except (json.JSONDecodeError, UnicodeDecodeError):
                logged = None
            expected = {
                "event": "contribution_accepted",
                "round": receipt.round_number,
                "client": receipt.client_id,
                "contribution_digest": receipt.contribution_digest.hex(),
            }
            if not isinstance(logged, dict) or any(logged.get(k) != v for k, v in expected.items()):
                raise VerificationError(
                    f"audit entry {receipt.log_index} is not this receipt's contribution"
                )
            where = "the coordinator's latest signed checkpoint"
    except VerificationError as exc:
        return _invalid("receipt", exc)
    console.print(
        f"[green]receipt OK[/]: round {receipt.round_number} contribution of {escape(receipt.client_id)} "
        f"is entry {receipt.log_index} of {escape(where)} (tree size {size}, root "
        f"{root.hex()[:16]}…), signed by the coordinator",
        soft_wrap=True,
    )
    return 0


def _fetch_proof(
    config_path: Path, index: int, coordinator_key: bytes
) -> tuple[bytes, list[bytes], int, bytes]:
    """The entry, its inclusion proof and the signed tree it is proven in, from the coordinator.

    Raises:
        TransportError, RemoteError: unreachable, or it refused (one line, no traceback).
        VerificationError: a checkpoint not signed by ``coordinator_key``, or no such entry.
    """
    from fedlora.audit import verify_checkpoint
    from fedlora.client import GrpcTransport
    from fedlora.config import load_client_config

    transport = GrpcTransport(load_client_config(config_path))
    try:
        cp = transport.checkpoint()
        verify_checkpoint(cp, coordinator_key)
        entries = transport.audit_entries(index, 1)
        if not entries:
            raise VerificationError(f"the coordinator has no audit entry {index}")
        proof = transport.inclusion_proof(index, cp.tree_size)
    finally:
        transport.close()
    return entries[0], proof, cp.tree_size, cp.root
