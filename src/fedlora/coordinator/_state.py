"""The coordinator's state, and the one function that changes it.

Every change of state is an audited event (:mod:`fedlora.events`): the live engine appends the
event to the log and then :func:`apply` s it (``Coordinator._record``), and a restart folds the
same :func:`apply` over the log (:func:`replay`). Live and replayed state therefore cannot
drift: there is no second copy of how an event changes the state.

Two stages are never recorded: AGGREGATING and COMBINING are the coordinator's own work between
two entries. The engine enters them with :class:`Began` (applied, not logged); replayed, the
``aggregated`` entry that opens the ticketing implies the aggregation began. A job whose outcome
was not fully logged when the coordinator stopped (the entries it writes last: ``decrypted``,
``global_published``, ``round_closed``) leaves the replayed round in the stage before the job,
and the restarted engine does the job again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fedlora import events as ev
from fedlora.crypto import DecryptionProof
from fedlora.errors import ProtocolError
from fedlora.protocol import Stage, check_transition
from fedlora.revocation import RevocationList


@dataclass(frozen=True)
class Contribution:
    """An accepted contribution, as its ``contribution_accepted`` entry records it."""

    client_id: str
    weight: int
    record_count: int
    ciphertexts_digest: bytes
    contribution_digest: bytes
    signature: bytes
    log_index: int
    received_at_ms: int
    knowledge_proof: bytes = b""


@dataclass
class RoundState:
    number: int
    global_version: int
    deadline_ms: int
    opened_ms: int
    global_digest: bytes = b""
    contributions: dict[str, Contribution] = field(default_factory=dict)
    collection_note: str = ""  # a push transport's account of who did not contribute, and why
    participants: tuple[str, ...] = ()
    aggregate_digest: bytes = b""
    ticket: bytes = b""
    aggregated_index: int = -1  # audit index of the `aggregated` entry that names the ticket
    total_weight: int = 0
    decrypt_deadline_ms: int = 0
    ticket_signatures: dict[str, bytes] = field(default_factory=dict)
    # party -> first record of each chunk of its partial decryption accepted -> its proof
    partials: dict[str, dict[int, DecryptionProof]] = field(default_factory=dict)


@dataclass
class FederationState:
    stage: Stage | None = None  # None: the log is empty, the federation has not started
    round: RoundState | None = None
    global_version: int = 0
    ended: bool = False  # the open round closed or failed and no next round was opened
    settings: dict[str, Any] = field(default_factory=dict)  # as started, with accepted changes
    joined: set[str] = field(default_factory=set)  # parties that ever joined
    revocations: RevocationList | None = None  # the newest list accepted, and every party revoked


@dataclass(frozen=True)
class Began:
    """The engine began its own work in ``stage`` (AGGREGATING or COMBINING): applied, never
    logged (see the module's docstring)."""

    stage: Stage


def enter(state: FederationState, stage: Stage) -> None:
    """Move to ``stage``, as the transition table allows (the only place a stage is set).

    Raises:
        ProtocolError: a transition the table does not allow.
    """
    if state.stage is None:
        if stage is not Stage.WAITING:
            raise ProtocolError(f"the federation has not started: no transition to {stage.value}")
    else:
        check_transition(state.stage, stage)
    state.stage = stage


def _revoked(s: FederationState, e: ev.RevocationsLoaded | ev.PartyRevoked) -> RevocationList:
    """The recorded floor: the highest serial and every party ever revoked (never fewer)."""
    old = s.revocations or RevocationList(
        str(s.settings.get("federation_id", "")), 0, frozenset(), ""
    )
    named = set(e.revoked) if isinstance(e, ev.RevocationsLoaded) else {e.party}
    issued = e.issued_at if isinstance(e, ev.RevocationsLoaded) else old.issued_at
    return RevocationList(old.federation_id, max(old.serial, e.serial), old.revoked | named, issued)


def apply(s: FederationState, e: ev.Event | Began, index: int = -1, time_ms: int = 0) -> None:
    """Change ``s`` as event ``e`` (entry ``index`` of the log, stamped ``time_ms``) says.

    Events that change nothing (refusals, restarts) are ignored; events of a round other than
    the open one change nothing either.

    Raises:
        ProtocolError: an event whose stage change the transition table does not allow.
    """
    r = s.round
    match e:
        case Began():
            enter(s, e.stage)
        case ev.FederationStarted():
            enter(s, Stage.WAITING)
            s.settings = dict(e.settings)
        case ev.ConfigChanged():
            s.settings.update({name: new for name, (_, new) in e.changes.items()})
        case ev.ClientJoined():
            s.joined.add(e.client)
        case ev.RoundOpened():
            enter(s, Stage.COLLECTING)
            s.round = RoundState(
                e.round, e.global_version, e.deadline_ms, time_ms, bytes.fromhex(e.global_digest)
            )
            s.ended = False
        case ev.GlobalPublished():
            s.global_version = e.version
        case ev.FederationFinished():
            enter(s, Stage.FINISHED)
        case ev.RevocationsLoaded() | ev.PartyRevoked():
            s.revocations = _revoked(s, e)
    if r is None or getattr(e, "round", None) != r.number:
        return
    match e:
        case ev.ContributionAccepted():
            r.contributions[e.client] = Contribution(
                e.client,
                e.weight,
                e.record_count,
                bytes.fromhex(e.ciphertexts_digest),
                bytes.fromhex(e.contribution_digest),
                bytes.fromhex(e.signature),
                index,
                time_ms,
                bytes.fromhex(e.knowledge_proof),
            )
            s.joined.add(e.client)  # contributing is taking part
        case ev.CollectionClosed():
            r.deadline_ms = min(r.deadline_ms, time_ms)
            r.collection_note = e.note
        case ev.Aggregated() if e.encryption == "homomorphic":
            if s.stage is Stage.COLLECTING:  # replayed: the job's outcome implies it began
                enter(s, Stage.AGGREGATING)
            r.participants = tuple(e.participants)
            r.aggregate_digest = bytes.fromhex(e.aggregate_digest)
            r.ticket = bytes.fromhex(e.ticket)
            r.aggregated_index = index
            r.total_weight = e.total_weight
            r.decrypt_deadline_ms = e.decrypt_deadline_ms
            enter(s, Stage.TICKETING)
        case ev.TicketSigned():
            r.ticket_signatures[e.party] = bytes.fromhex(e.signature)
        case ev.TicketQuorum():
            enter(s, Stage.DECRYPTING)
        case ev.PartialAccepted():
            r.partials.setdefault(e.party, {})[e.first_record] = DecryptionProof(
                int(e.challenge, 16), int(e.response, 16)
            )
        case ev.RoundClosed() | ev.RoundFailed():
            s.ended = True


def replay(entries: Iterable[dict[str, Any]]) -> FederationState:
    """Fold parsed audit lines (in log order) into the state they describe: :func:`apply` over
    each typed entry, exactly as the live engine applied them.

    Raises:
        VerificationError: an entry of a known kind with missing or mistyped fields.
        ProtocolError: entries whose stage changes the transition table does not allow.
    """
    s = FederationState()
    for entry in entries:
        e = ev.parse_event(entry)
        if e is not None:
            apply(s, e, entry["index"], entry["time_ms"])
    return s
