"""Rebuild the coordinator's state from its audit log (the log is the event store).

A pure fold over the parsed entries: what the open round holds, its stage, the newest global
version, and whether the last round ended without the next one being opened (a crash between
the two), which the engine then finishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedlora.coordinator._state import Contribution, RoundState
from fedlora.crypto import DecryptionProof
from fedlora.protocol import Stage


@dataclass
class Replayed:
    round: RoundState | None = None
    stage: Stage = Stage.COLLECTING
    global_version: int = 0
    ended: bool = False  # the open round closed or failed and no next round was opened


def replay(events: Iterable[dict[str, Any]]) -> Replayed:
    """Fold audit entries (in log order) into the state they describe."""
    s = Replayed()
    for e in events:
        kind, number = e["event"], e.get("round")
        r = s.round
        current = r is not None and number == r.number
        if kind == "round_opened":
            s.round = RoundState(
                e["round"],
                e["global_version"],
                e["deadline_ms"],
                e["time_ms"],
                bytes.fromhex(e.get("global_digest", "")),
            )
            s.stage, s.ended = Stage.COLLECTING, False
        elif r is None or not current:
            if kind == "global_published":
                s.global_version = e["version"]
            elif kind == "federation_finished":
                s.stage = Stage.FINISHED
        elif kind == "contribution_accepted":
            r.contributions[e["client"]] = Contribution(
                e["client"],
                e["weight"],
                e["record_count"],
                bytes.fromhex(e["ciphertexts_digest"]),
                bytes.fromhex(e["contribution_digest"]),
                bytes.fromhex(e["signature"]),
                e["index"],
                e["time_ms"],
                bytes.fromhex(e.get("knowledge_proof", "")),
            )
        elif kind == "aggregated" and e.get("encryption") == "homomorphic":
            r.participants = tuple(e["participants"])
            r.aggregate_digest = bytes.fromhex(e["aggregate_digest"])
            r.ticket = bytes.fromhex(e.get("ticket", ""))
            r.aggregated_index = e["index"]
            r.total_weight = e["total_weight"]
            r.decrypt_deadline_ms = e["decrypt_deadline_ms"]
            s.stage = Stage.TICKETING
        elif kind == "ticket_signed":
            r.ticket_signatures[e["party"]] = bytes.fromhex(e["signature"])
        elif kind == "ticket_quorum":
            s.stage = Stage.DECRYPTING
        elif kind == "partial_accepted":
            r.partials[e["party"]] = DecryptionProof(
                int(e["challenge"], 16), int(e["response"], 16)
            )
        elif kind in ("round_closed", "round_failed"):
            s.ended = True
    return s
