"""What the coordinator tells a member: the round's status and the federation's parameters.

Read views of the engine's state, plus joining (the one message that may write: a first join
per identity and round is audited). A joining member's model spec is compared with the
federation's here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fedlora import events as ev
from fedlora.config import Party
from fedlora.errors import ConfigError, ProtocolError
from fedlora.protocol import (
    JoinInfo,
    Message,
    RoundStatus,
    Stage,
    canonical_spec,
    check_message,
    check_spec,
    parse_spec,
)

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator

MAX_SPEC_CHARS = 64 << 10


def describe_stage(e: Coordinator) -> str:
    """One line for the operator's log: the stage and what it waits for."""
    with e.lock:
        if e.stage is Stage.WAITING:
            return (
                f"waiting for {e.min_clients} parties to join before round 1 opens "
                f"({len(e.joined)} joined: {', '.join(sorted(e.joined)) or 'none yet'})"
            )
        return str(e.stage.value)


def status(e: Coordinator, party: Party) -> RoundStatus:
    with e.lock:
        check_message(e.stage, Message.ROUND_STATUS, e.round_number)
        waiting = RoundStatus(  # WAITING: no round yet
            round=0,
            stage=e.stage,
            global_version=e.global_version,
            global_digest=e.global_digest(e.global_version),
            deadline_unix_s=0.0,
            contributions=0,
            contributed=False,
            partial_submitted=False,
            rounds_total=e.fl.rounds,
            decryptor=bool(e.key and party.id in e.key.party_ids),
            ticket_signed=False,
            ticket_signatures=0,
            joined=tuple(sorted(e.joined - e.admission.revoked)),
            min_clients=e.min_clients,
            warning=e.admission.blocked or "",
        )
        r = e.round
        if r is None:
            return waiting
        version = e.global_version if e.stage is Stage.FINISHED else r.global_version
        deciding = e.stage in (Stage.TICKETING, Stage.DECRYPTING, Stage.COMBINING)
        return replace(
            waiting,
            round=r.number,
            global_version=version,
            global_digest=e.global_digest(version),
            deadline_unix_s=(r.decrypt_deadline_ms if deciding else r.deadline_ms) / 1000,
            contributions=len(r.contributions),
            contributed=party.id in r.contributions,
            partial_submitted=party.id in e.opening.complete_partials(),
            ticket_signed=party.id in r.ticket_signatures,
            ticket_signatures=len(r.ticket_signatures),
            contributors=tuple(sorted(r.contributions)),
        )


def join_info(e: Coordinator, party: Party, spec_json: str = "") -> JoinInfo:
    """The federation's parameters; refuses a client whose model spec differs.

    Raises:
        ProtocolError: the client's spec differs (audited as ``join_refused``, naming the
            settings); RateLimitError: its rejection budget is spent.
    """
    if e.spec is not None:
        e.admission.throttle(party, "join", e.round_number)
        try:
            if not spec_json:
                raise ConfigError(
                    f"{party.id} sent no model spec, and this federation compares every "
                    "client's model at join: upgrade the client's fedlora"
                )
            if len(spec_json) > MAX_SPEC_CHARS:
                raise ConfigError(f"the model spec is over {MAX_SPEC_CHARS} characters")
            check_spec(e.spec, parse_spec(spec_json, "the client's spec"), party.id)
        except ConfigError as exc:
            e.admission.rejected(party.id, ev.JoinRefused(client=party.id, reason=str(exc)))
            raise ProtocolError(str(exc)) from None
    return member_info(e, party)


def member_info(e: Coordinator, party: Party) -> JoinInfo:
    """The federation's parameters for a party already admitted (its spec compared by
    :func:`join_info`): a push transport sends them with every message. Counts the party as
    joined in the current round."""
    with e.lock:
        number = e.round_number
        check_message(e.stage, Message.JOIN, number)
        e.note_join(party, number)
    return JoinInfo(
        federation_id=e.config.federation_id,
        role=party.role,
        key_fingerprint=e.fingerprint,
        codec=e.codec,
        encryption_type=e.fl.encryption_type,
        aggregation_frequency=e.fl.aggregation_frequency,
        participant_threshold=e.fl.participant_threshold,
        decryption_threshold=e.fl.decryption_threshold,
        rounds=e.fl.rounds,
        num_parameters=e.num_parameters,
        coordinator_signing_key=e.public_key,
        chunk_bytes=e.config.server.chunk_bytes,
        max_weight=e.config.codec.max_weight,
        ticket_quorum=e.quorum,
        min_clients=e.min_clients,
        partial_chunk=e.params.partial_chunk,
        spec_json=canonical_spec(e.spec) if e.spec is not None else "",
    )
