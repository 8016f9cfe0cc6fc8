"""Rebuild the coordinator's state from its audit log (the log is the event store).

A pure fold over the typed entries (:mod:`fedlora.events`): what the open round holds, its
stage, the newest global version, and whether the last round ended without the next one being
opened (a crash between the two), which the engine then finishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fedlora import events as ev
from fedlora.coordinator._settings import recorded_settings
from fedlora.coordinator._state import Contribution, RoundState
from fedlora.crypto import DecryptionProof
from fedlora.protocol import Stage
from fedlora.revocation import RevocationList


@dataclass
class Replayed:
    round: RoundState | None = None
    stage: Stage = Stage.COLLECTING
    global_version: int = 0
    ended: bool = False  # the open round closed or failed and no next round was opened
    settings: dict[str, Any] = field(default_factory=dict)  # as started, with accepted changes
    joined: set[str] = field(default_factory=set)  # parties that ever joined
    revocations: RevocationList | None = None  # the newest list accepted, and every party revoked


def _revoked(s: Replayed, e: ev.RevocationsLoaded | ev.PartyRevoked) -> RevocationList:
    """The recorded floor: the highest serial and every party ever revoked (never fewer)."""
    old = s.revocations or RevocationList(
        str(s.settings.get("federation_id", "")), 0, frozenset(), ""
    )
    named = set(e.revoked) if isinstance(e, ev.RevocationsLoaded) else {e.party}
    issued = e.issued_at if isinstance(e, ev.RevocationsLoaded) else old.issued_at
    return RevocationList(old.federation_id, max(old.serial, e.serial), old.revoked | named, issued)


def replay(entries: Iterable[dict[str, Any]]) -> Replayed:
    """Fold parsed audit lines (in log order) into the state they describe.

    Raises:
        VerificationError: an entry of a known kind with missing or mistyped fields.
    """
    s = Replayed()
    for entry in entries:
        e = ev.parse_event(entry)
        r = s.round
        match e:
            case ev.FederationStarted():
                s.settings, s.stage = recorded_settings(e), Stage.WAITING
            case ev.ConfigChanged():
                s.settings.update({name: new for name, (_, new) in e.changes.items()})
            case ev.ClientJoined():
                s.joined.add(e.client)
            case ev.RoundOpened():
                s.round = RoundState(
                    e.round,
                    e.global_version,
                    e.deadline_ms,
                    entry["time_ms"],
                    bytes.fromhex(e.global_digest),
                )
                s.stage, s.ended = Stage.COLLECTING, False
            case ev.GlobalPublished():
                s.global_version = e.version
            case ev.FederationFinished():
                s.stage = Stage.FINISHED
            case ev.RevocationsLoaded() | ev.PartyRevoked():
                s.revocations = _revoked(s, e)
        if r is None or getattr(e, "round", None) != r.number:
            continue
        match e:
            case ev.ContributionAccepted():
                r.contributions[e.client] = Contribution(
                    e.client,
                    e.weight,
                    e.record_count,
                    bytes.fromhex(e.ciphertexts_digest),
                    bytes.fromhex(e.contribution_digest),
                    bytes.fromhex(e.signature),
                    entry["index"],
                    entry["time_ms"],
                    bytes.fromhex(e.knowledge_proof),
                )
            case ev.Aggregated() if e.encryption == "homomorphic":
                r.participants = tuple(e.participants)
                r.aggregate_digest = bytes.fromhex(e.aggregate_digest)
                r.ticket = bytes.fromhex(e.ticket)
                r.aggregated_index = entry["index"]
                r.total_weight = e.total_weight
                r.decrypt_deadline_ms = e.decrypt_deadline_ms
                s.stage = Stage.TICKETING
            case ev.TicketSigned():
                r.ticket_signatures[e.party] = bytes.fromhex(e.signature)
            case ev.TicketQuorum():
                s.stage = Stage.DECRYPTING
            case ev.PartialAccepted():
                r.partials.setdefault(e.party, {})[e.first_record] = DecryptionProof(
                    int(e.challenge, 16), int(e.response, 16)
                )
            case ev.RoundClosed() | ev.RoundFailed():
                s.ended = True
    return s
