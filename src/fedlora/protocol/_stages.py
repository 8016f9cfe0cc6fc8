"""The round state machine (STYLE.md §8): stages, the messages each allows, the transitions.

A round goes COLLECTING → AGGREGATING → TICKETING → DECRYPTING → COMBINING and then ends, closed
(global adapter published) or failed; either way the next round opens in COLLECTING, or the
federation is FINISHED. Any stage can end the round as failed (a deadline, a fault while
aggregating, combining or decoding): failure is a transition, never a state the engine retries
forever. AGGREGATING and COMBINING are the coordinator's own heavy work, done outside its lock;
nothing is accepted from clients meanwhile. Plaintext rounds go from AGGREGATING straight to the
end.
"""

from __future__ import annotations

import enum

from fedlora.errors import ProtocolError


class Stage(enum.Enum):
    WAITING = "waiting"  # before round 1: until min_clients parties have joined
    COLLECTING = "collecting"  # accepting contributions until all arrive or the deadline
    AGGREGATING = "aggregating"  # participants fixed; adding the ciphertexts
    TICKETING = "ticketing"  # share holders check the aggregate and sign its decryption ticket
    DECRYPTING = "decrypting"  # a quorum signed the ticket; waiting for t partial decryptions
    COMBINING = "combining"  # t proven partials in; combining and decoding
    FINISHED = "finished"  # every configured round is over


class Message(enum.Enum):
    JOIN = "join"
    ROUND_STATUS = "round_status"
    DOWNLOAD_GLOBAL = "download_global"
    CONTRIBUTION = "contribution"
    DECRYPTION_TASK = "decryption_task"
    TICKET = "ticket_signature"
    PARTIAL_DECRYPTION = "partial_decryption"


_ALWAYS = {Message.JOIN, Message.ROUND_STATUS, Message.DOWNLOAD_GLOBAL}

ALLOWED: dict[Stage, frozenset[Message]] = {
    Stage.WAITING: frozenset(_ALWAYS),
    Stage.COLLECTING: frozenset(_ALWAYS | {Message.CONTRIBUTION}),
    Stage.AGGREGATING: frozenset(_ALWAYS),
    Stage.TICKETING: frozenset(_ALWAYS | {Message.DECRYPTION_TASK, Message.TICKET}),
    Stage.DECRYPTING: frozenset(
        _ALWAYS | {Message.DECRYPTION_TASK, Message.TICKET, Message.PARTIAL_DECRYPTION}
    ),
    Stage.COMBINING: frozenset(_ALWAYS),
    Stage.FINISHED: frozenset(_ALWAYS),
}

_END = {Stage.COLLECTING, Stage.FINISHED}  # the round ended (closed or failed)

TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.WAITING: frozenset({Stage.COLLECTING}),
    Stage.COLLECTING: frozenset({Stage.AGGREGATING, *_END}),
    Stage.AGGREGATING: frozenset({Stage.TICKETING, *_END}),
    Stage.TICKETING: frozenset({Stage.DECRYPTING, *_END}),
    Stage.DECRYPTING: frozenset({Stage.COMBINING, *_END}),
    Stage.COMBINING: frozenset(_END),
    # More rounds on a finished federation: only with an accepted, audited configuration change.
    Stage.FINISHED: frozenset({Stage.COLLECTING}),
}


def check_message(stage: Stage, message: Message, round_number: int) -> None:
    """Refuse ``message`` unless the current stage allows it, before any work is done.

    Raises:
        ProtocolError: naming the stage and the message.
    """
    if message not in ALLOWED[stage]:
        raise ProtocolError(
            f"round {round_number} is {stage.value}: a {message.value.replace('_', ' ')} is not accepted now"
        )


def check_transition(current: Stage, target: Stage) -> None:
    if target not in TRANSITIONS[current]:
        raise ProtocolError(f"no transition from {current.value} to {target.value}")
