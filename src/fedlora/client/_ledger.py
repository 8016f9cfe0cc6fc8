"""What a client remembers durably so that a lying coordinator cannot use it twice.

:class:`DecryptorLedger` is the share holder's promise (DESIGN.md §4 invariants): one decryption
ticket per round, rounds only ever increasing, and a partial decryption only for a ticket it
signed. Each record is fsynced *before* the signature or the partial decryption it allows leaves
the process, so a crash or a restart cannot make the holder forget what it already released. The
client's refusals are written to the same file: when the coordinator is the adversary, its own
audit log cannot be trusted to say what it tried.

:class:`CheckpointAnchor` keeps the newest signed checkpoint of the coordinator's audit log that
the client has seen, and accepts a newer one only with a consistency proof: a log that shrank or
forked stops the client.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedlora._files import replace_file
from fedlora.audit import (
    SignedCheckpoint,
    canonical_json,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from fedlora.errors import ConfigError, VerificationError

LEDGER = "decryptor-ledger.jsonl"
REFUSALS_WRITTEN = "ledger-refusals.json"  # when each kind of refusal was last written
CHECKPOINT = "checkpoint.json"


class AnchorError(VerificationError):
    """The coordinator's audit log shrank, forked or is not signed by it: the client stops."""


def _append_durably(path: Path, record: dict[str, Any]) -> None:
    with open(path, "ab") as fh:
        fh.write(canonical_json(record) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


class DecryptorLedger:
    """A share holder's durable record of the tickets it signed and the partials it released."""

    def __init__(
        self, state_dir: Path, federation_id: str, *, refusal_interval_s: float = 0.0
    ) -> None:
        """``refusal_interval_s``: write at most one refusal of each kind per that many seconds
        and count the others into the next one (0: write each). A push transport (Flower)
        sets it: there the server decides how many messages a node answers, and a hostile one
        could otherwise grow the ledger, fsynced, without end."""
        self.path = state_dir / LEDGER
        self.federation_id = federation_id
        self.refusal_interval_s = refusal_interval_s
        self.tickets: dict[int, dict[str, Any]] = {}
        self.released: dict[int, str] = {}
        data = self.path.read_bytes() if self.path.exists() else b""
        if data and not data.endswith(b"\n"):  # a torn last line was never acted on
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                os.fsync(fh.fileno())
            data = data[: data.rfind(b"\n") + 1]
        for number, line in enumerate(data.splitlines(), 1):
            try:
                rec = json.loads(line)
                kind, fed = rec["kind"], rec["federation_id"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f"{self.path}: line {number} is not a ledger record; restore the file from a "
                    "backup (deleting it would let a coordinator obtain a second decryption)"
                ) from None
            if fed != federation_id:
                raise ConfigError(
                    f"{self.path} belongs to federation {fed!r}, not {federation_id!r}: "
                    "give each federation its own state_dir"
                )
            if kind == "ticket_signed":
                self.tickets[rec["round"]] = rec
            elif kind == "partial_released":
                self.released[rec["round"]] = rec["ticket"]

    @property
    def highest_round(self) -> int:
        return max(self.tickets, default=0)

    def check_ticket(self, round_number: int, ticket: bytes) -> None:
        """Refuse a ticket that would break the one-aggregate-per-round promise.

        Raises:
            VerificationError: another ticket was signed for this round, or the round is at or
                below the highest round this holder already signed a ticket for.
        """
        known = self.tickets.get(round_number)
        if known is not None:
            if known["ticket"] != ticket.hex():
                raise VerificationError(
                    f"this holder already signed a different decryption ticket for round {round_number}: "
                    "refusing to decrypt a second aggregate of the same round"
                )
            return
        if round_number <= self.highest_round:
            raise VerificationError(
                f"round {round_number} is at or below round {self.highest_round}, which this holder "
                "already signed a ticket for: refusing an old round replayed as new"
            )

    def record_ticket(
        self,
        round_number: int,
        ticket: bytes,
        aggregate_digest: bytes,
        participants: Sequence[str],
    ) -> None:
        """Check and durably record a ticket before its signature is released (idempotent)."""
        self.check_ticket(round_number, ticket)
        if round_number in self.tickets:
            return
        rec = {
            "kind": "ticket_signed",
            "federation_id": self.federation_id,
            "round": round_number,
            "ticket": ticket.hex(),
            "aggregate_digest": aggregate_digest.hex(),
            "participants": sorted(participants),
            "time_ms": int(time.time() * 1000),
        }
        _append_durably(self.path, rec)
        self.tickets[round_number] = rec

    def record_release(self, round_number: int, ticket: bytes) -> None:
        """Durably record a partial decryption before it leaves (only for a ticket signed here).

        Raises:
            VerificationError: no ticket, or another ticket, was signed here for this round.
        """
        known = self.tickets.get(round_number)
        if known is None or known["ticket"] != ticket.hex():
            raise VerificationError(
                f"no signed ticket for this aggregate of round {round_number}: refusing to release "
                "a partial decryption"
            )
        if self.released.get(round_number) == ticket.hex():
            return
        _append_durably(
            self.path,
            {
                "kind": "partial_released",
                "federation_id": self.federation_id,
                "round": round_number,
                "ticket": ticket.hex(),
                "aggregate_digest": known["aggregate_digest"],
                "participants": known["participants"],
                "time_ms": int(time.time() * 1000),
            },
        )
        self.released[round_number] = ticket.hex()

    def record_refusal(self, round_number: int, what: str, reason: str) -> None:
        """The client's own audit entry for a refusal (the coordinator's log may lie).

        ``what`` names the kind of refusal (a fixed name such as ``"global model"``); with a
        ``refusal_interval_s``, refusals of a kind within it of the last one written are only
        counted, and the next one written says how many there were."""
        more = self._throttled(what)
        if more is None:
            return
        _append_durably(
            self.path,
            {
                "kind": "refused",
                "federation_id": self.federation_id,
                "round": round_number,
                "what": what,
                "reason": reason + (f" ({more} more refused since the last entry)" if more else ""),
                "time_ms": int(time.time() * 1000),
            },
        )

    def _throttled(self, what: str) -> int | None:
        """How many refusals of this kind went unwritten since the last one written, or None
        when this one is not to be written either (it is counted)."""
        if self.refusal_interval_s <= 0:
            return 0
        path = self.path.parent / REFUSALS_WRITTEN
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        try:
            last, unwritten = int(doc[what]["written_ms"]), int(doc[what]["unwritten"])
        except (KeyError, TypeError, ValueError):
            last, unwritten = 0, 0
        now_ms = int(time.time() * 1000)
        due = not 0 <= now_ms - last < self.refusal_interval_s * 1000
        doc[what] = {
            "written_ms": now_ms if due else last,
            "unwritten": 0 if due else unwritten + 1,
        }
        replace_file(path, json.dumps(doc).encode())
        return unwritten if due else None

    def refusals(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes() if self.path.exists() else b""
        return [r for r in map(json.loads, data.splitlines()) if r["kind"] == "refused"]


class CheckpointAnchor:
    """The newest audit-log checkpoint this client has seen, advanced only by consistency proofs."""

    def __init__(self, state_dir: Path, log_id: str, public_key: bytes) -> None:
        self.path = state_dir / CHECKPOINT
        self.log_id, self.public_key = log_id, public_key
        self.current: SignedCheckpoint | None = None
        if self.path.exists():
            try:
                self.current = SignedCheckpoint.from_dict(json.loads(self.path.read_bytes()))
                verify_checkpoint(self.current, public_key, log_id=log_id)
            except (json.JSONDecodeError, UnicodeDecodeError, VerificationError) as exc:
                raise ConfigError(
                    f"{self.path}: the kept audit checkpoint is unreadable or not the coordinator's "
                    f"({exc}); restore it from a backup"
                ) from None

    def observe(
        self, cp: SignedCheckpoint, consistency: Callable[[int, int], Sequence[bytes]]
    ) -> None:
        """Check ``cp`` against the kept checkpoint and keep it if it is newer.

        ``consistency(old_size, new_size)`` asks the coordinator for the RFC 6962 proof.

        Raises:
            VerificationError: a bad signature, another log, or a log that shrank or forked.
        """
        verify_checkpoint(cp, self.public_key, log_id=self.log_id)
        old = self.current
        if old is None:
            self._keep(cp)
            return
        if cp.tree_size < old.tree_size:  # an older checkpoint must be a prefix of the kept one
            verify_checkpoint_consistency(cp, old, consistency(cp.tree_size, old.tree_size))
            return
        proof = consistency(old.tree_size, cp.tree_size) if cp.tree_size > old.tree_size else ()
        verify_checkpoint_consistency(old, cp, proof)
        if cp.tree_size > old.tree_size:
            self._keep(cp)

    def _keep(self, cp: SignedCheckpoint) -> None:
        temp = self.path.with_name(f".{self.path.name}.tmp")
        with open(temp, "wb") as fh:
            fh.write(json.dumps(cp.to_dict(), indent=2).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.path)
        self.current = cp
