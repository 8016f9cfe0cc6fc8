"""``fedlora audit verify|show|prove``: offline audit of a coordinator's log, and receipt proofs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedlora._files import read_file
from fedlora.audit import AuditSummary, events_by_round, read_log_files, verify_log
from fedlora.crypto import (
    checkpoint_digest,
    inclusion_proof,
    leaf_hash,
    receipt_digest,
    verify_inclusion,
    verify_signature,
)
from fedlora.errors import FedLoraError, VerificationError

console = Console()


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


def verify(path: Path, public_key: str | None) -> AuditSummary:
    entries, checkpoints, folder = read_log_files(path)
    summary = verify_log(entries, checkpoints, _public_key(public_key, folder))
    return summary


def run_verify(path: Path, public_key: str | None) -> int:
    try:
        summary = verify(path, public_key)
    except VerificationError as exc:
        console.print(f"[red]audit log INVALID[/]: {exc}")
        return 1
    rounds = events_by_round(summary.events)
    closed = sum(1 for evs in rounds.values() if any(e["event"] == "round_closed" for e in evs))
    failed = sum(1 for evs in rounds.values() if any(e["event"] == "round_failed" for e in evs))
    console.print(
        f"[green]audit log OK[/]: {summary.entries} entries, {summary.checkpoints} signed checkpoints, "
        f"log {summary.log_id!r}, root {summary.root.hex()[:16]}…; {closed} rounds closed, {failed} failed"
    )
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
            }
        )
    return rows


def run_show(path: Path, public_key: str | None, plot: Path | None) -> int:
    summary = verify(path, public_key)
    rows = _rows(summary)
    table = Table(title=f"audit log {summary.log_id!r}: {summary.entries} entries, verified")
    columns = (
        "round",
        "status",
        "contributions: client digest",
        "rejected",
        "decryptors",
        "collect s",
        "decrypt s",
        "global",
    )
    for col in columns:
        table.add_column(col, overflow="fold")
    fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        table.add_row(
            str(r["round"]),
            r["status"],
            "\n".join(f"{p} {d}" for p, d in zip(r["participants"], r["digests"])),
            str(r["rejected"]),
            "\n".join(r["decryptors"]),
            fmt(r["collect_s"]),
            fmt(r["decrypt_s"]),
            r["global"] or r["reason"],
        )
    console.print(table)
    if plot is not None:
        _plot(rows, plot, summary.log_id)
        console.print(f"plot written to {plot}")
    return 0


def _plot(rows: list[dict[str, Any]], out: Path, log_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min((r["opened_ms"] for r in rows if r["opened_ms"]), default=0)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * len(rows)))
    for r in rows:
        if r["opened_ms"] is None:
            continue
        t0 = (r["opened_ms"] - start) / 1000
        collect = r["collect_s"] if r["collect_s"] is not None else (r["total_s"] or 0)
        ax.barh(r["round"], collect, left=t0, color="#4c72b0", label="collecting")
        if r["decrypt_s"] is not None:
            ax.barh(
                r["round"], r["decrypt_s"], left=t0 + collect, color="#dd8452", label="decrypting"
            )
        if r["status"] == "failed":
            ax.text(t0 + collect, r["round"], "  failed", va="center", color="#c44e52")
        ax.text(t0, r["round"] + 0.32, f"{len(r['participants'])} clients", fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), loc="lower right"
    )
    ax.set_xlabel("seconds since the first round opened")
    ax.set_ylabel("round")
    ax.set_yticks([r["round"] for r in rows])
    ax.invert_yaxis()
    ax.set_title(f"fedlora rounds over time — {log_id}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_prove(receipt_path: Path, log: Path | None, config: Path | None) -> int:
    """Check a receipt's signature and its inclusion in the coordinator's signed log."""
    try:
        receipt = json.loads(read_file(receipt_path, "receipt"))
        coordinator_key = bytes.fromhex(receipt["coordinator_signing_public_key"])
        digest = receipt_digest(
            federation_id=receipt["federation_id"],
            round_number=receipt["round"],
            client_id=receipt["client_id"],
            contribution=bytes.fromhex(receipt["contribution_digest"]),
            log_index=receipt["log_index"],
            received_at_ms=receipt["received_at_ms"],
        )
        signature = bytes.fromhex(receipt["signature"])
    except (KeyError, ValueError, TypeError):
        raise FedLoraError(f"{receipt_path} is not a fedlora receipt") from None
    verify_signature(coordinator_key, digest, signature)
    index = receipt["log_index"]
    if log is not None:
        entries_data, checkpoints_data, _ = read_log_files(log)
        summary = verify_log(entries_data, checkpoints_data, coordinator_key)
        lines = entries_data[:-1].split(b"\n")
        leaves = [leaf_hash(line) for line in lines]
        size, root = summary.entries, summary.root
        entry, path = (
            lines[index] if index < len(lines) else b"",
            inclusion_proof(index, leaves) if index < len(lines) else [],
        )
        where = f"the log in {log}"
    elif config is not None:
        entry, path, size, root = _fetch_proof(config, index, coordinator_key)
        where = "the coordinator's latest signed checkpoint"
    else:
        raise FedLoraError(
            "give --log (a state folder) or --config (a client config to ask the coordinator)"
        )
    if index >= size:
        raise VerificationError(f"the log has {size} entries; the receipt points at entry {index}")
    verify_inclusion(leaf_hash(entry), index, size, path, root)
    doc = json.loads(entry)
    expected = {
        "event": "contribution_accepted",
        "round": receipt["round"],
        "client": receipt["client_id"],
        "contribution_digest": receipt["contribution_digest"],
    }
    if any(doc.get(k) != v for k, v in expected.items()):
        raise VerificationError(f"audit entry {index} is not this receipt's contribution")
    console.print(
        f"[green]receipt OK[/]: round {receipt['round']} contribution of {receipt['client_id']} is entry {index} of "
        f"{where} (tree size {size}, root {root.hex()[:16]}…), signed by the coordinator"
    )
    return 0


def _fetch_proof(
    config_path: Path, index: int, coordinator_key: bytes
) -> tuple[bytes, list[bytes], int, bytes]:
    from fedlora.client._session import Client
    from fedlora.config import load_client_config
    from fedlora.v1 import audit_pb2, audit_pb2_grpc

    cfg = load_client_config(config_path)
    channel = Client._channel_for(cfg)
    stub = audit_pb2_grpc.AuditStub(channel)
    metadata = Client._metadata_for(cfg)
    cp = stub.GetCheckpoint(audit_pb2.CheckpointQuery(), metadata=metadata)
    verify_signature(
        coordinator_key,
        checkpoint_digest(
            log_id=cp.log_id,
            tree_size=cp.tree_size,
            root_hash=cp.root,
            timestamp_ms=cp.timestamp_ms,
        ),
        cp.signature,
    )
    entries = list(stub.GetEntries(audit_pb2.AuditQuery(start=index, limit=1), metadata=metadata))
    if not entries:
        raise VerificationError(f"the coordinator has no audit entry {index}")
    proof = stub.GetInclusionProof(
        audit_pb2.InclusionQuery(index=index, tree_size=cp.tree_size), metadata=metadata
    )
    return entries[0].entry, list(proof.hashes), cp.tree_size, cp.root
