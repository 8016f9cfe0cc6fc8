"""What an operator watches: one log line per audited event, JSON logs, Prometheus metrics.

Every state change the coordinator makes is an audit entry, so the audit log's observers see all
of them in one place: :class:`EventLog` writes each as one log line (joins, contributions
accepted or refused, tickets, partials, failed rounds with their reason, configuration changes,
revocations, restarts), and :class:`Metrics` (opt-in, ``server.metrics``) counts them for
Prometheus, with the round, stage, quorum health and the share holders heard from recently.
Nothing here decides anything: the observers only read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from fedlora.events import REFUSALS, describe

log = logging.getLogger("fedlora.coordinator")

HOLDER_FRESH_S = 120.0  # a share holder heard from this recently counts as reachable


class EventLog:
    """An audit-log observer: each entry becomes one log line (warnings for refusals and
    failures), carrying the entry's fields for the JSON log format."""

    def __call__(self, kind: str, index: int, fields: Mapping[str, Any]) -> None:
        level = logging.INFO
        if kind in REFUSALS or kind == "rejections_repeated":
            level = logging.WARNING
        elif kind == "round_failed":
            level = logging.ERROR
        log.log(level, describe(kind, fields), extra={"event": kind, "index": index})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the audit
    entry's kind and index where the line reports one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("event", "index"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class Metrics:
    """Prometheus metrics for one coordinator, served on ``address`` (HOST:PORT).

    Counters follow the audit log (so they restart from zero with the process, as Prometheus
    expects); gauges are read from the engine when scraped. ``slot`` holds the engine, which does
    not exist yet while the holders generate the key (``keygen``): then the endpoint already
    serves, with ``fedlora_key_pending`` at 1 and the generation's progress.
    """

    def __init__(self, slot: Any, address: str, keygen: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.exposition import start_http_server

        self.slot, self.keygen = slot, keygen
        reg = self.registry = CollectorRegistry()
        self.events = Counter(
            "fedlora_audit_events", "Audit entries written, by kind", ["kind"], registry=reg
        )
        self.refusals = Counter(
            "fedlora_refusals", "Refused calls and submissions, by kind", ["kind"], registry=reg
        )
        self.contributions = Counter(
            "fedlora_contributions_accepted", "Contributions accepted", registry=reg
        )
        self.contribution_bytes = Counter(
            "fedlora_contribution_bytes", "Bytes of accepted contributions", registry=reg
        )
        self.rounds = Counter(
            "fedlora_rounds_ended", "Rounds ended, by outcome", ["outcome"], registry=reg
        )
        self.steps = Histogram(
            "fedlora_step_seconds",
            "Time from one stage of a round to the next",
            ["step"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=reg,
        )
        gauge: Callable[..., Any] = Gauge
        read = self._read
        gauge("fedlora_round", "The open round", registry=reg).set_function(
            read(lambda e: e.round.number if e.round else 0)
        )
        stage = gauge("fedlora_stage", "1 for the stage the round is in", ["stage"], registry=reg)
        from fedlora.protocol import Stage

        def is_stage(s: Stage) -> Callable[[Any], bool]:
            return lambda e: e.stage is s

        for s in Stage:
            stage.labels(s.value).set_function(read(is_stage(s)))
        gauge(
            "fedlora_round_contributions", "Contributions stored for the open round", registry=reg
        ).set_function(read(lambda e: len(e.round.contributions) if e.round else 0))
        gauge(
            "fedlora_quorum_reachable",
            "1 while the share holders not revoked can still reach the ticket quorum",
            registry=reg,
        ).set_function(read(lambda e: e.admission.blocked is None))
        gauge(
            "fedlora_holders_reachable",
            f"Share holders (not revoked) heard from in the last {HOLDER_FRESH_S:.0f} s",
            registry=reg,
        ).set_function(read(self._holders_reachable))
        gauge(
            "fedlora_key_pending",
            "1 while the share holders generate the federation's key (no round runs yet)",
            registry=reg,
        ).set_function(lambda: float(self.slot.engine is None))
        gauge(
            "fedlora_keygen_attempt",
            "The key generation attempt in progress (0: none)",
            registry=reg,
        ).set_function(self._keygen(lambda k: k.current.start.attempt if k.current else 0))
        gauge(
            "fedlora_keygen_holders_waiting",
            "Share holders that asked to start the next key generation attempt",
            registry=reg,
        ).set_function(self._keygen(lambda k: len(k.pending)))
        gauge(
            "fedlora_keygen_slowest_round",
            "The message round the slowest holder is in (the attempt in progress)",
            registry=reg,
        ).set_function(self._keygen(lambda k: min(k.current.posted.values()) if k.current else 0))
        gauge(
            "fedlora_keygen_relayed_bytes",
            "Bytes of sealed key generation messages relayed (every attempt)",
            registry=reg,
        ).set_function(self._keygen(lambda k: k.relayed))
        self._last: tuple[int, str, float] | None = None  # (round, event, time) of the last step
        self._lock = threading.Lock()
        host, _, port = address.rpartition(":")
        self.server, self.thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=reg
        )
        self.port = int(self.server.server_address[1])

    def _read(self, read: Callable[[Any], Any]) -> Callable[[], float]:
        """A gauge's reading of the engine, 0 while there is none (the key being generated)."""

        def value() -> float:
            engine = self.slot.engine
            return 0.0 if engine is None else float(read(engine))

        return value

    def _keygen(self, read: Callable[[Any], Any]) -> Callable[[], float]:
        """A gauge's reading of the key generation (read under its lock), 0 without one."""

        def value() -> float:
            keygen = self.keygen
            if keygen is None:
                return 0.0
            with keygen.changed:
                return float(read(keygen))

        return value

    def _holders_reachable(self, engine: Any) -> float:
        key = engine.key
        if key is None:
            return 0.0
        now = time.monotonic()
        seen = engine.admission.last_seen
        revoked = engine.admission.revoked
        return float(
            sum(
                1
                for p in key.party_ids
                if p not in revoked and now - seen.get(p, -1e18) <= HOLDER_FRESH_S
            )
        )

    def __call__(self, kind: str, index: int, fields: Mapping[str, Any]) -> None:
        self.events.labels(kind).inc()
        if kind in REFUSALS:
            self.refusals.labels(kind).inc()
        elif kind == "rejections_repeated":
            self.refusals.labels(str(fields.get("rejected_event"))).inc(int(fields.get("count", 0)))
        elif kind == "contribution_accepted":
            self.contributions.inc()
            records = fields.get("record_count")
            if isinstance(records, int):
                engine = self.slot.engine
                if engine is not None:
                    self.contribution_bytes.inc(records * engine.width)
        elif kind in ("round_closed", "round_failed"):
            self.rounds.labels("closed" if kind == "round_closed" else "failed").inc()
        if kind in _STEPS and "round" in fields:
            now = time.monotonic()
            with self._lock:
                last, self._last = self._last, (int(fields["round"]), kind, now)
            if last is not None and last[0] == fields["round"]:
                self.steps.labels(f"{last[1]} → {kind}").observe(now - last[2])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# The entries that mark a round's progress: the time between two of them is a step.
_STEPS = frozenset(
    {"round_opened", "aggregated", "ticket_quorum", "decrypted", "round_closed", "round_failed"}
)


class UndecodableMessages(logging.Filter):
    """gRPC logs a message it cannot parse with a multi-line traceback, once per message; a
    hostile client could fill the log with them. This turns each into one line naming the
    message type, and writes the same line at most once a minute (with a count of the rest)."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or "deserializ" not in record.getMessage():
            return True
        error = record.exc_info[1]
        what = str(error).split("type ", 1)[-1].strip("'") if error else "a message"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(what, -1e18) < self.every_s:
                self._skipped[what] = self._skipped.get(what, 0) + 1
                return False
            self._last[what] = now
            skipped = self._skipped.pop(what, 0)
        record.name = "fedlora.coordinator"
        record.msg = "refused an undecodable %s from a client (not valid protobuf)%s"
        more = f"; {skipped} more since the last such line" if skipped else ""
        record.args = (what, more)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def quiet_grpc_tracebacks() -> None:
    """Install :class:`UndecodableMessages` on gRPC's logger (once per process)."""
    logger = logging.getLogger("grpc._common")
    if not any(isinstance(f, UndecodableMessages) for f in logger.filters):
        logger.addFilter(UndecodableMessages())
