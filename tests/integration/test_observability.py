"""What an operator watches, on a real federation: the metrics endpoint scraped while rounds
run, and every line of the coordinator's JSON log parsed.

Real gRPC over mTLS, real clients, real keys; the coordinator of the JSON test is the
`fedlora coordinator` command in its own process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from fedlora._setup import free_port
from fedlora.config import load_coordinator_config
from tests.integration import helpers as h
from tests.integration.helpers import prepare_federation

BITS = 512


T = TypeVar("T")


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _scraped(port: int, run: Callable[[], T]) -> tuple[T, list[dict[str, float]], dict[str, float]]:
    """``run()`` while the endpoint on ``port`` is scraped every 0.1 s: what it returned, every
    scrape taken meanwhile, and one last scrape after it."""
    scrapes: list[dict[str, float]] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            scrapes.append(_scrape(port))
            time.sleep(0.1)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        done.set()
        thread.join(10)
    return result, scrapes, _scrape(port)


def _serve_with_metrics(layout):  # type: ignore[no-untyped-def]
    """The real coordinator of ``layout`` with its metrics endpoint on a free port."""
    config = load_coordinator_config(layout.coordinator_config)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, metrics="127.0.0.1:0")
    )
    running = h.serve(layout, config)
    assert running.metrics is not None
    return running, running.metrics.port


def test_the_metrics_endpoint_follows_a_real_round(tmp_path) -> None:
    layout = prepare_federation(tmp_path, bits=BITS, rounds=2, aggregation_frequency=5)
    running, port = _serve_with_metrics(layout)
    try:
        results, scrapes, final = _scraped(port, lambda: h.run_clients(layout))
    finally:
        running.stop(grace=1)
    assert results == {pid: 0 for pid in layout.client_configs}
    # While the rounds ran, the endpoint showed them: a round open, collecting, then deciding.
    assert any(s.get('fedlora_stage{stage="collecting"}') == 1 for s in scrapes)
    assert any(s.get("fedlora_round") == 1 for s in scrapes)
    assert any(
        s.get('fedlora_stage{stage="ticketing"}') == 1 or s.get('fedlora_stage{stage="decrypting"}')
        for s in scrapes
    )
    # At the end: every contribution, its bytes, both rounds closed, each step timed.
    n = len(layout.client_configs)
    assert final["fedlora_contributions_accepted_total"] == 2 * n
    assert final["fedlora_contribution_bytes_total"] > 0
    assert final['fedlora_rounds_ended_total{outcome="closed"}'] == 2
    assert final['fedlora_stage{stage="finished"}'] == 1
    assert final['fedlora_audit_events_total{kind="partial_accepted"}'] >= 2 * 3
    assert final['fedlora_step_seconds_count{step="round_opened → aggregated"}'] == 2
    assert final["fedlora_quorum_reachable"] == 1
    assert final["fedlora_holders_reachable"] == n


def test_every_line_of_the_json_log_parses_and_names_each_event(tmp_path) -> None:
    port = free_port()
    layout = prepare_federation(tmp_path, bits=BITS, rounds=1, aggregation_frequency=5, port=port)
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedlora",
            "coordinator",
            "--config",
            str(layout.coordinator_config),
            "--log-format",
            "json",
            "--exit-when-finished",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "coordinator-state" / ".lock").exists():
            assert time.monotonic() < deadline and coordinator.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        results = h.run_clients(layout)
        out, err = coordinator.communicate(timeout=120)
    finally:
        coordinator.kill()
    assert results == {pid: 0 for pid in layout.client_configs}
    assert coordinator.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in (out + err).splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(doc) for doc in lines)
    kinds = {doc.get("event") for doc in lines}
    for kind in (
        "federation_started",
        "client_joined",
        "contribution_accepted",
        "aggregated",
        "ticket_signed",
        "partial_accepted",
        "round_closed",
        "federation_finished",
    ):
        assert kind in kinds, kind
    joined = [doc for doc in lines if doc.get("event") == "client_joined"]
    assert {doc["message"].split()[0] for doc in joined} == set(layout.client_configs)


def test_audit_show_covers_every_event_with_times_failures_and_restarts(tmp_path) -> None:
    """A federation whose round 1 runs out of time (one contribution of three), restarted, then
    refused an unknown identity: `audit show` lists each with its UTC time, the failure with its
    stage and reason (table, JSON and plot), and counts every kind."""
    from rich.console import Console

    from fedlora.client import Client
    from fedlora.config import load_client_config
    from fedlora.coordinator import build_engine
    from fedlora.errors import AuthorizationError
    from fedlora.inprocess import GivenDelta, InProcessTransport

    class Clock:
        now = 1_800_000_000.0

        def __call__(self) -> float:
            return self.now

    layout = prepare_federation(
        tmp_path,
        bits=BITS,
        rounds=2,
        participant_threshold=3,
        decryption_threshold=3,
        round_timeout_s=60,
        insecure=True,
        model_kind="linear",
        min_clients=3,
    )
    config = load_coordinator_config(layout.coordinator_config)
    clock = Clock()
    engine = build_engine(config, clock=clock)
    clients = {
        pid: Client(
            load_client_config(layout.client_configs[pid]),
            trainer=GivenDelta(18, delta=__import__("numpy").full(18, 0.01)),
            console=Console(quiet=True),
            transport=InProcessTransport(engine, pid),
        )
        for pid in ("bank-a", "bank-b", "hospital-c")
    }
    feds = {pid: c.join() for pid, c in clients.items()}
    engine.tick()
    clients["bank-a"].contribute(feds["bank-a"], clients["bank-a"].transport.round_status())
    clock.now += 120  # the others never send: round 1 runs out of time
    engine.tick()
    engine = build_engine(config, clock=clock)  # a restart
    with contextlib.suppress(AuthorizationError):
        engine.authenticate("mallory", "Join")
    plot = tmp_path / "rounds.png"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedlora",
            "audit",
            "show",
            str(config.state_dir),
            "--public-key",
            layout.coordinator_public_key,
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    failed = doc["rounds"][0]
    assert failed["status"] == "failed" and failed["failed_at"] == "collecting"
    assert "1 contribution at the deadline, below participant_threshold 3" in failed["reason"]
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", failed["opened"])
    kinds = [e["event"] for e in doc["events"]]
    for kind in (
        "federation_started",
        "client_joined",
        "round_failed",
        "coordinator_restarted",
        "access_denied",
    ):
        assert kind in kinds, kinds
    assert all(e["time"] for e in doc["events"])
    denied = next(e for e in doc["events"] if e["event"] == "access_denied")
    assert "mallory" in denied["detail"] and "not enrolled" in denied["detail"]
    assert doc["entries_by_kind"]["contribution_accepted"] == 1
    assert sum(doc["entries_by_kind"].values()) == doc["entries"]
    assert plot.stat().st_size > 10_000
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedlora",
            "audit",
            "show",
            str(config.state_dir),
            "--public-key",
            layout.coordinator_public_key,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = " ".join(table.stdout.split())
    assert "at collecting:" in said and "coordinator_restarted" in said and "access_denied" in said


def test_the_metrics_endpoint_serves_while_the_holders_generate_the_key(tmp_path) -> None:
    # Arrange: a federation whose holders generate its key; the endpoint is on from the start.
    layout = prepare_federation(
        tmp_path, bits=BITS, decryption_threshold=2, rounds=1, min_clients=3, generate_key=True
    )
    running, port = _serve_with_metrics(layout)
    before = _scrape(port)  # nobody has come yet
    try:
        results, scrapes, final = _scraped(port, lambda: h.run_clients(layout, timeout=300))
    finally:
        running.stop(grace=1)
    assert results == {pid: 0 for pid in layout.client_configs}
    # Before the key: pending, no round; during: an attempt whose messages are relayed.
    assert before["fedlora_key_pending"] == 1 and before["fedlora_round"] == 0
    generating = [s for s in scrapes if s["fedlora_key_pending"] == 1]
    assert any(s["fedlora_keygen_attempt"] == 1 for s in generating)
    assert any(s["fedlora_keygen_relayed_bytes"] > 0 for s in generating)
    # After: the key is there, its entries counted, and the round ran on the same endpoint.
    assert final["fedlora_key_pending"] == 0
    assert final['fedlora_audit_events_total{kind="keygen_started"}'] == 1
    assert final['fedlora_audit_events_total{kind="key_generated"}'] == 1
    assert final['fedlora_rounds_ended_total{outcome="closed"}'] == 1
    assert final["fedlora_keygen_relayed_bytes"] > 0
