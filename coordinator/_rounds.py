"""The round state machine (STYLE.md §8): stages, the messages each allows, the transitions."""

from __future__ import annotations

import enum

from fedlora.errors import ProtocolError


class Stage(enum.Enum):
    COLLECTING = "collecting"  # accepting contributions until all arrive or the deadline
    DECRYPTING = "decrypting"  # aggregate fixed; waiting for t partial decryptions
    FINISHED = "finished"  # every configured round is over


class Message(enum.Enum):
    JOIN = "join"
    ROUND_STATUS = "round_status"
    DOWNLOAD_GLOBAL = "download_global"
    CONTRIBUTION = "contribution"
    DECRYPTION_TASK = "decryption_task"
    PARTIAL_DECRYPTION = "partial_decryption"


_ALWAYS = {Message.JOIN, Message.ROUND_STATUS, Message.DOWNLOAD_GLOBAL}

ALLOWED: dict[Stage, frozenset[Message]] = {
    Stage.COLLECTING: frozenset(_ALWAYS | {Message.CONTRIBUTION}),
    Stage.DECRYPTING: frozenset(_ALWAYS | {Message.DECRYPTION_TASK, Message.PARTIAL_DECRYPTION}),
    Stage.FINISHED: frozenset(_ALWAYS),
}

# A round ends as closed (global adapter published) or failed; either way the next round opens
# in COLLECTING, or the federation is FINISHED. Plaintext rounds skip DECRYPTING.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.COLLECTING: frozenset({Stage.DECRYPTING, Stage.COLLECTING, Stage.FINISHED}),
    Stage.DECRYPTING: frozenset({Stage.COLLECTING, Stage.FINISHED}),
    Stage.FINISHED: frozenset(),
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
