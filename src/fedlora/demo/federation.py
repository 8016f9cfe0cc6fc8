"""``fedlora demo``: a whole federation on loopback, as separate processes, with mTLS.

Generates a throwaway CA, certificates, signing keys and a 3-of-5 threshold key (2048 bits by
default), starts ``fedlora coordinator`` and five ``fedlora client`` processes (banks and
hospitals), shows the rounds as they happen, verifies the audit log, and checks that each
homomorphically aggregated update equals the plaintext weighted average of the same deltas within
one quantization step. The clients keep their plaintext deltas only because the demo tells them
to (``debug.save_plaintext_deltas``), so that this comparison is possible.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fedlora._setup import DEFAULT_PARTIES, Layout, free_port, prepare_federation
from fedlora.audit import SignedCheckpoint, events_by_round, read_log_files, verify_log
from fedlora.ceremony._generate import check_logged_keys
from fedlora.config import MIN_KEY_BITS, load_coordinator_config
from fedlora.errors import FedLoraError

# Not a terminal (a pipe, a CI log): rich would assume 80 columns and break the tables' borders.
console = Console(width=None if Console().is_terminal else 132)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedLoraError(
                f"the coordinator exited early with status {proc.returncode}; see coordinator.log"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FedLoraError(f"the coordinator did not open port {port} within {timeout:.0f}s")


def _progress_table(events: list[dict[str, Any]], rounds: int) -> Table:
    table = Table(title="rounds")
    for col in ("round", "stage", "contributions", "partial decryptions", "global adapter"):
        table.add_column(col)
    for number in range(1, rounds + 1):
        evs = events_by_round(events).get(number, [])
        kinds = [e["event"] for e in evs]
        stage = (
            "closed"
            if "round_closed" in kinds
            else "failed"
            if "round_failed" in kinds
            else "decrypting"
            if "aggregated" in kinds
            else "collecting"
            if "round_opened" in kinds
            else "waiting"
        )
        closed = next((e for e in evs if e["event"] == "round_closed"), {})
        table.add_row(
            str(number),
            stage,
            str(kinds.count("contribution_accepted")),
            str(len({e["party"] for e in evs if e["event"] == "partial_accepted"})),
            closed.get("global_digest", "")[:16],
        )
    return table


def _events(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit" / "entries.log"
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines if line.endswith(b"}")]


# Local steps per round and records per client, where a workload's default would be slow.
DEMO_STEPS = {"clinical-notes": 15, "fraud-cases": 4}
DEMO_ROWS = {"clinical-notes": 150, "fraud-cases": 120}
# A language model per bank: three of them (a 2-of-3 key) on a small machine, not five.
FRAUD_BANKS = [(f"bank-{c}", "bank") for c in "abc"]
DEMO_LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def run_demo(
    *,
    bits: int,
    rounds: int,
    directory: Path | None,
    insecure: bool,
    timeout: float,
    workload: str = "synthetic",
    base_model: Path | None = None,
    dealer: bool = False,
) -> int:
    if base_model is not None and workload != "fraud-cases":
        raise FedLoraError("--base-model is for --workload fraud-cases (a causal language model)")
    if base_model is not None and not (base_model / "config.json").is_file():
        raise FedLoraError(
            f"--base-model: {base_model} is not a model folder; make one with `fedlora model "
            "causal-base --from smollm2 --out DIR`"
        )
    root = directory or Path(tempfile.mkdtemp(prefix="fedlora-demo-"))
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise FedLoraError(f"{directory} is not empty; give an empty or new folder")
    console.rule("[bold]fedlora demo")
    if insecure:
        console.print("[yellow]WARNING: --insecure turns TLS off; use it only on loopback[/]")
    if bits < MIN_KEY_BITS:
        console.print(
            f"[bold red]WARNING: a {bits}-bit key is INSECURE; the demo's configs allow it with "
            "testing.insecure_small_keys (never in production)[/]",
            soft_wrap=True,
        )
    started = time.monotonic()
    shape = "2-of-3" if workload == "fraud-cases" else "3-of-5"
    with console.status(
        "generating a CA, certificates and signing keys"
        + (f", and dealing a {bits}-bit {shape} threshold key…" if dealer else "…")
    ):
        layout = prepare_federation(
            root,
            port=free_port(),
            bits=bits,
            rounds=rounds,
            insecure=insecure,
            save_plaintext_deltas=True,
            workload=workload,
            aggregation_frequency=DEMO_STEPS.get(workload, 30),
            rows=DEMO_ROWS.get(workload, 400),
            base_model=base_model,
            parties=FRAUD_BANKS if workload == "fraud-cases" else DEFAULT_PARTIES,
            decryption_threshold=2 if workload == "fraud-cases" else 3,
            participant_threshold=2 if workload == "fraud-cases" else 3,
            # A round closes as soon as every member contributed; its deadline only has to
            # leave three language models on a small machine time to train and encrypt.
            round_timeout_s=1800.0 if base_model is not None else 120.0,
            # A real model's adapter on the attention projections only (368,640 values for
            # SmolLM2): the demo shows the protocol in minutes; benchmarks/ measure the rest.
            lora_targets=DEMO_LM_TARGETS if base_model is not None else (),
            generate_key=not dealer,
        )
    console.print(f"federation materials in {root} ({time.monotonic() - started:.1f}s)")
    config = load_coordinator_config(layout.coordinator_config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fedlora = [sys.executable, "-m", "fedlora"]
    logs = root / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with open(logs / "coordinator.log", "wb") as log:
            procs["coordinator"] = subprocess.Popen(
                [*fedlora, "coordinator", "--config", str(layout.coordinator_config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        _wait_port(layout.port, procs["coordinator"], 60)
        console.print(
            f"coordinator listening on 127.0.0.1:{layout.port} ({'insecure' if insecure else 'mTLS'})"
        )
        for pid, path in layout.client_configs.items():
            with open(logs / f"{pid}.log", "wb") as log:
                procs[pid] = subprocess.Popen(
                    [*fedlora, "client", "--config", str(path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        console.print(
            f"started {len(layout.client_configs)} clients: {', '.join(layout.client_configs)}"
        )
        if not dealer:
            console.print(
                f"no dealer: the {len(layout.client_configs)} clients generate the {bits}-bit "
                f"{shape} key among themselves first, relayed by the coordinator (typically "
                "15–60 s for 2048 bits on 2 cores)"
            )
        deadline = time.monotonic() + timeout
        with Live(_progress_table([], rounds), console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                live.update(_progress_table(_events(config.state_dir), rounds))
                # The coordinator serves on after the last round (clients may fetch the final
                # adapter later); the demo stops it once every client is done.
                clients = [p for name, p in procs.items() if name != "coordinator"]
                if all(p.poll() is not None for p in clients) or procs["coordinator"].poll():
                    break
                time.sleep(0.25)
        clients = [p for name, p in procs.items() if name != "coordinator"]
        if time.monotonic() >= deadline and any(p.poll() is None for p in clients):
            raise FedLoraError(
                f"the federation did not finish within --timeout {timeout:.0f}s (a language "
                f"model on a small machine takes longer: raise it); logs are in {logs}"
            )
        coordinator = procs["coordinator"]
        if coordinator.poll() is None:
            coordinator.terminate()  # SIGTERM: a graceful stop, exit status 0
            coordinator.wait(timeout=30)
        failed = {name: p.returncode for name, p in procs.items() if p.returncode not in (0,)}
        if failed:
            raise FedLoraError(f"processes did not finish cleanly: {failed}; logs are in {logs}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    return _report(layout, config, root, started)


def _report(layout: Layout, config, root: Path, started: float) -> int:  # type: ignore[no-untyped-def]
    entries, checkpoints, _ = read_log_files(config.state_dir)
    # Anchor the log with what the clients kept: their receipts and their newest checkpoints.
    clients = root / "clients"
    receipts = [json.loads(p.read_bytes()) for p in sorted(clients.glob("*/receipts/*.json"))]
    kept = [
        SignedCheckpoint.from_dict(json.loads(p.read_bytes()))
        for p in sorted(clients.glob("*/checkpoint.json"))
    ]
    summary = verify_log(
        entries,
        checkpoints,
        bytes.fromhex(layout.coordinator_public_key),
        trusted=kept,
        receipts=receipts,
    )
    console.print(
        f"\n[green]audit log verified[/]: {summary.entries} entries, each followed by a signed checkpoint; "
        f"consistent with the clients' {len(receipts)} receipts and {len(kept)} kept checkpoints"
    )
    for line in check_logged_keys(summary.events, summary.log_id):
        console.print(f"[green]no dealer[/]: {line}", soft_wrap=True)
    started_at = [e["time_ms"] for e in summary.events if e["event"] == "keygen_started"]
    generated = [e["time_ms"] for e in summary.events if e["event"] == "key_generated"]
    if started_at and generated:
        console.print(
            f"key generation took {(generated[-1] - started_at[-1]) / 1000:.1f}s "
            f"({len(started_at)} attempt(s))"
        )
    clip, bits = config.codec.clip, config.codec.value_bits
    step = 2 * clip / ((1 << bits) - 1)
    table = Table(title="encrypted aggregate vs plaintext average of the same deltas")
    for col in (
        "round",
        "participants",
        "max |difference|",
        "bound (one quantization step)",
        "result",
    ):
        table.add_column(col)
    ok = True
    for number, evs in sorted(events_by_round(summary.events).items()):
        closed = next((e for e in evs if e["event"] == "round_closed"), None)
        if closed is None:
            continue
        previous = np.fromfile(
            config.state_dir / "globals" / f"v{number - 1:05d}.f32", dtype="<f4"
        ).astype(np.float64)
        current = np.fromfile(
            config.state_dir / "globals" / f"v{number:05d}.f32", dtype="<f4"
        ).astype(np.float64)
        deltas, weights = [], []
        for pid in closed["participants"]:
            folder = root / "clients" / pid / "deltas"
            deltas.append(np.clip(np.load(folder / f"round-{number:05d}.npy"), -clip, clip))
            weights.append(json.loads((folder / f"round-{number:05d}.json").read_text())["weight"])
        expected = sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
        # float32 storage of the global adapter adds rounding on top of the codec's step.
        tolerance = step + 4 * np.finfo(np.float32).eps * (np.abs(current).max() + 1)
        diff = float(np.max(np.abs((current - previous) - expected)))
        good = diff <= tolerance
        ok &= good
        table.add_row(
            str(number),
            ", ".join(closed["participants"]),
            f"{diff:.2e}",
            f"{step:.2e}",
            "[green]equal[/]" if good else "[red]DIFFERENT[/]",
        )
    console.print(table)
    console.print(
        f"\neverything is in {root}:\n"
        f"  configs      {layout.coordinator_config.name}, {', '.join(p.name for p in layout.client_configs.values())}\n"
        f"  logs         {root / 'logs'}\n"
        f"  coordinator  {config.state_dir} (global adapters in globals/, audit log in audit/)\n"
        f"  receipts     {root / 'clients'}/<id>/receipts/\n"
        f"  models       {root / 'clients'}/<id>/models/ (every global version each client kept, verified)\n"
        f"try:\n"
        + (
            f"  fedlora model eval --config {layout.client_configs['bank-a']} --data "
            f"{root / 'data' / 'bank-b.jsonl'} --limit 40   (add --base for the base model alone)\n"
            if "bank-b" in layout.client_configs and (root / "data" / "bank-b.jsonl").exists()
            else ""
        )
        + f"  fedlora export --config {layout.client_configs['bank-a']} --out {root / 'bank-a-model'}\n"
        f"  fedlora audit verify {config.state_dir} --public-key {layout.coordinator_public_key} --receipts {clients / 'bank-a' / 'receipts'}\n"
        f"  fedlora audit show {config.state_dir} --public-key {layout.coordinator_public_key} --plot {root / 'rounds.png'}\n"
        f"  fedlora audit prove {clients / 'bank-a' / 'receipts' / 'round-00001.json'}\n"
        f"finished in {time.monotonic() - started:.1f}s",
        soft_wrap=True,  # commands stay on one line, ready to copy
    )
    if not ok:
        console.print(
            "[red]the encrypted aggregate differs from the plaintext average beyond the codec's bound[/]"
        )
    return 0 if ok else 1
