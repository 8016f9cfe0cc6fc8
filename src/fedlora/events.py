"""The audit log's event kinds, typed: one dataclass per kind, written and read through here.

The coordinator writes :class:`Event` objects (:meth:`fedlora.audit.AuditLog.record`); replay, the
share holders' ticket check and the auditors read them back with :func:`parse_event`, which checks
every field's type and names the entry that is wrong; a field with a default may be absent from
an entry (an empty note, no party to blame). ``index`` and ``time_ms`` are the log's own and live
on every entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedlora.errors import VerificationError

__all__ = [
    "EVENTS",
    "REFUSALS",
    "AccessDenied",
    "Aggregated",
    "ClientJoined",
    "ConfigChanged",
    "ContributionAccepted",
    "ContributionRejected",
    "CoordinatorRestarted",
    "Decrypted",
    "Event",
    "FederationFinished",
    "FederationStarted",
    "GlobalPublished",
    "JoinRefused",
    "KeyGenerated",
    "KeygenAborted",
    "KeygenStarted",
    "PartialAccepted",
    "PartialRejected",
    "PartyRevoked",
    "RejectionsRepeated",
    "RevocationsLoaded",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "SubmissionThrottled",
    "TicketQuorum",
    "TicketRejected",
    "TicketSigned",
    "describe",
    "parse_event",
]


@dataclass(frozen=True)
class Event:
    """Base of every event kind; ``kind`` is the ``event`` field of the log line."""

    kind: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The entry's fields (without ``event``, ``index`` and ``time_ms``); ``None`` omitted."""
        return {
            _key(f): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class FederationStarted(Event):
    kind: ClassVar[str] = "federation_started"
    federation_id: str
    encryption_type: str
    key_fingerprint: str
    codec: dict[str, Any]
    participant_threshold: int
    decryption_threshold: int
    rounds: int
    aggregation_frequency: int
    num_parameters: int
    parties: list[dict[str, Any]]
    ticket_quorum: int
    # Every setting a restart must match (dotted YAML names; fedlora.coordinator._settings).
    settings: dict[str, Any]


@dataclass(frozen=True)
class GlobalPublished(Event):
    kind: ClassVar[str] = "global_published"
    version: int
    global_digest: str
    adapter_digest: str | None = None


@dataclass(frozen=True)
class RoundOpened(Event):
    kind: ClassVar[str] = "round_opened"
    round: int
    global_version: int
    deadline_ms: int
    global_digest: str = ""


@dataclass(frozen=True)
class ClientJoined(Event):
    kind: ClassVar[str] = "client_joined"
    client: str
    role: str


@dataclass(frozen=True)
class ContributionAccepted(Event):
    kind: ClassVar[str] = "contribution_accepted"
    round: int
    client: str
    weight: int
    record_count: int
    ciphertexts_digest: str
    contribution_digest: str
    signature: str
    knowledge_proof: str = ""


@dataclass(frozen=True)
class ContributionRejected(Event):
    kind: ClassVar[str] = "contribution_rejected"
    reason: str
    round: int
    client: str


@dataclass(frozen=True)
class CollectionClosed(Event):
    """A push transport (Flower) collected every contribution it will get before the deadline:
    the round aggregates now, or fails as it would at the deadline; ``note`` says what the
    parties that did not contribute answered."""

    kind: ClassVar[str] = "collection_closed"
    round: int
    note: str = ""


@dataclass(frozen=True)
class Aggregated(Event):
    kind: ClassVar[str] = "aggregated"
    round: int
    participants: list[str]
    total_weight: int
    contribution_digests: list[str]
    aggregate_digest: str
    ticket: str = ""
    ticket_quorum: int = 0
    decrypt_deadline_ms: int = 0
    encryption: str = "homomorphic"


@dataclass(frozen=True)
class TicketSigned(Event):
    kind: ClassVar[str] = "ticket_signed"
    round: int
    party: str
    ticket: str
    signature: str


@dataclass(frozen=True)
class TicketRejected(Event):
    kind: ClassVar[str] = "ticket_rejected"
    reason: str
    round: int
    party: str


@dataclass(frozen=True)
class TicketQuorum(Event):
    kind: ClassVar[str] = "ticket_quorum"
    round: int
    ticket: str
    signers: list[str]
    quorum: int


@dataclass(frozen=True)
class PartialAccepted(Event):
    """One chunk of a holder's partial decryption (the records from ``first_record``)."""

    kind: ClassVar[str] = "partial_accepted"
    round: int
    party: str
    challenge: str
    response: str
    ticket: str = ""
    statement_signature: str = ""
    first_record: int = 0
    ciphertexts_digest: str = ""  # of the chunk answered; with values_digest, what was signed
    values_digest: str = ""


@dataclass(frozen=True)
class PartialRejected(Event):
    kind: ClassVar[str] = "partial_rejected"
    reason: str
    round: int
    party: str


@dataclass(frozen=True)
class Decrypted(Event):
    kind: ClassVar[str] = "decrypted"
    round: int
    decryptors: list[str]


@dataclass(frozen=True)
class RoundClosed(Event):
    kind: ClassVar[str] = "round_closed"
    round: int
    global_version: int
    global_digest: str
    participants: list[str]
    decryptors: list[str]
    duration_ms: int


@dataclass(frozen=True)
class RoundFailed(Event):
    kind: ClassVar[str] = "round_failed"
    round: int
    stage: str
    reason: str
    contributions: list[str]
    partials: list[str]
    party: str | None = None


@dataclass(frozen=True)
class FederationFinished(Event):
    kind: ClassVar[str] = "federation_finished"
    rounds: int
    global_version: int
    global_digest: str  # the final version's digest


@dataclass(frozen=True)
class CoordinatorRestarted(Event):
    kind: ClassVar[str] = "coordinator_restarted"
    round: int
    stage: str
    contributions: list[str]


@dataclass(frozen=True)
class JoinRefused(Event):
    """A client whose model does not match the federation's spec (the reason names the settings)."""

    kind: ClassVar[str] = "join_refused"
    client: str
    reason: str


@dataclass(frozen=True)
class PartyRevoked(Event):
    """A party the CA's revocation list names; its calls are refused from now on."""

    kind: ClassVar[str] = "party_revoked"
    party: str
    serial: int


@dataclass(frozen=True)
class RevocationsLoaded(Event):
    """The coordinator accepted a CA-signed revocation list: its serial and every party it names.

    Replayed at start-up, so a restart cannot go back to an older list or to none.
    """

    kind: ClassVar[str] = "revocations_loaded"
    serial: int
    revoked: list[str]
    issued_at: str


@dataclass(frozen=True)
class ConfigChanged(Event):
    """A restart with a changed configuration, accepted by the operator (``--accept-config-change``)."""

    kind: ClassVar[str] = "config_changed"
    changes: dict[str, Any]  # dotted name -> [old, new]


@dataclass(frozen=True)
class AccessDenied(Event):
    kind: ClassVar[str] = "access_denied"
    reason: str
    identity: str
    method: str


@dataclass(frozen=True)
class SubmissionThrottled(Event):
    kind: ClassVar[str] = "submission_throttled"
    reason: str
    round: int
    party: str
    kind_of: str = dataclasses.field(default="", metadata={"key": "kind"})


@dataclass(frozen=True)
class RejectionsRepeated(Event):
    kind: ClassVar[str] = "rejections_repeated"
    round: int
    rejected_event: str
    identity: str
    reason: str
    count: int


@dataclass(frozen=True)
class KeygenStarted(Event):
    """The holders began generating the federation's key (no dealer): attempt, session, who."""

    kind: ClassVar[str] = "keygen_started"
    attempt: int
    session: str
    holders: list[str]
    threshold: int
    bits: int


@dataclass(frozen=True)
class KeygenAborted(Event):
    """A key generation attempt stopped; nothing of it is kept. ``party``: whom it blames (a
    holder, or ``relay``); ``reported_by``: the holder that stopped it (none: the coordinator)."""

    kind: ClassVar[str] = "keygen_aborted"
    attempt: int
    session: str
    reason: str
    party: str | None = None
    reported_by: str | None = None


@dataclass(frozen=True)
class KeyGenerated(Event):
    """The generated key, the digest of the public values the holders saw, and the holders'
    signatures of the key statement (:class:`fedlora.ceremony.KeyStatement`) — a quorum of them."""

    kind: ClassVar[str] = "key_generated"
    attempt: int
    session: str
    key_fingerprint: str
    public_key: dict[str, Any]
    transcript: str
    signatures: dict[str, Any]  # holder id -> hex signature
    replaces: str | None = None  # a re-key: the fingerprint of the key this one succeeds


EVENTS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        FederationStarted,
        GlobalPublished,
        RoundOpened,
        ClientJoined,
        ContributionAccepted,
        ContributionRejected,
        CollectionClosed,
        Aggregated,
        TicketSigned,
        TicketRejected,
        TicketQuorum,
        PartialAccepted,
        PartialRejected,
        Decrypted,
        RoundClosed,
        RoundFailed,
        FederationFinished,
        CoordinatorRestarted,
        ConfigChanged,
        JoinRefused,
        PartyRevoked,
        RevocationsLoaded,
        AccessDenied,
        SubmissionThrottled,
        RejectionsRepeated,
        KeygenStarted,
        KeygenAborted,
        KeyGenerated,
    )
}

_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[dict[str, Any]]": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "dict[str, Any]": lambda v: isinstance(v, dict),
    "dict[str, Any] | None": lambda v: v is None or isinstance(v, dict),
}


def _key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def parse_event(entry: dict[str, Any]) -> Event | None:
    """The typed event of a parsed log line; ``None`` for a kind this version does not know.

    Raises:
        VerificationError: a known kind with a missing field or a field of the wrong type
            (naming the entry's index, kind and field).
    """
    cls = EVENTS.get(entry.get("event", ""))
    if cls is None:
        return None
    where = f"audit entry {entry.get('index', '?')} ({cls.kind})"
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _key(f)
        if key not in entry:
            if f.default is dataclasses.MISSING:
                raise VerificationError(f"{where} has no {key!r}")
            continue
        if not _CHECKS[str(f.type)](entry[key]):
            raise VerificationError(f"{where} has a {key!r} of the wrong type")
        values[f.name] = entry[key]
    return cls(**values)


# Refusals: counted by kind in the metrics, logged as warnings.
REFUSALS = (
    "access_denied",
    "contribution_rejected",
    "join_refused",
    "partial_rejected",
    "submission_throttled",
    "ticket_rejected",
)


def describe(kind: str, f: Mapping[str, Any]) -> str:
    """One line for an audit entry, for a person reading the coordinator's log."""
    r = f"round {f['round']}: " if "round" in f else ""
    who = f.get("client") or f.get("party") or f.get("identity") or ""
    match kind:
        case "federation_started":
            return (
                f"federation {f.get('federation_id')!r} started: {f.get('rounds')} rounds, "
                f"{len(f.get('parties', []))} parties, encryption {f.get('encryption_type')}"
            )
        case "client_joined":
            return f"{who} joined"
        case "round_opened":
            return f"{r}opened from global version {f.get('global_version')}"
        case "contribution_accepted":
            return f"{r}contribution from {who} accepted (weight {f.get('weight')})"
        case "collection_closed":
            return f"{r}collection closed by the push transport" + (
                f" ({f['note']})" if f.get("note") else ""
            )
        case "aggregated":
            return f"{r}aggregated {len(f.get('participants', []))} contributions; ticketing"
        case "ticket_signed":
            return f"{r}ticket signed by {who}"
        case "ticket_quorum":
            return f"{r}ticket quorum reached ({len(f.get('signers', []))} signatures); decrypting"
        case "partial_accepted":
            return (
                f"{r}partial decryption from {who} accepted (from record {f.get('first_record')})"
            )
        case "decrypted":
            return f"{r}aggregate decrypted"
        case "global_published":
            return f"global version {f.get('version')} published"
        case "round_closed":
            return f"{r}closed with {len(f.get('participants', []))} contributions"
        case "round_failed":
            return f"{r}FAILED at {f.get('stage')}: {f.get('reason')}"
        case "federation_finished":
            return "federation finished"
        case "coordinator_restarted":
            return f"restarted in round {f.get('round')} ({f.get('stage')})"
        case "config_changed":
            changes = f.get("changes", {})
            return "configuration changed: " + ", ".join(
                f"{k} {v[0]!r} → {v[1]!r}" for k, v in sorted(changes.items())
            )
        case "party_revoked":
            return f"{who} revoked (revocation list serial {f.get('serial')})"
        case "revocations_loaded":
            return f"revocation list serial {f.get('serial')} loaded"
        case "keygen_started":
            return (
                f"key generation attempt {f.get('attempt')} started: "
                f"{f.get('threshold')}-of-{len(f.get('holders', []))}, {f.get('bits')} bits"
            )
        case "keygen_aborted":
            blame = f" (blames {f['party']})" if f.get("party") else ""
            return f"key generation attempt {f.get('attempt')} aborted{blame}: {f.get('reason')}"
        case "key_generated":
            again = f" (re-key of {str(f['replaces'])[:16]}…)" if f.get("replaces") else ""
            return (
                f"key {str(f.get('key_fingerprint'))[:16]}… generated{again}, signed by "
                f"{', '.join(sorted(f.get('signatures', {})))}"
            )
        case "rejections_repeated":
            return (
                f"{r}{f.get('count')} more {f.get('rejected_event')} from {who} ({f.get('reason')})"
            )
        case _ if kind in REFUSALS:
            return f"{r}{kind.replace('_', ' ')}: {who}: {f.get('reason')}"
    return f"{r}{kind}"
