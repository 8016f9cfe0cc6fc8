"""A round's start and end: opening it, failing it, publishing its mean, and what follows.

A round ends closed (its mean applied to the global adapter, published as a new version) or
failed (with the stage and the reason); either way the next round opens in COLLECTING, or the
federation is FINISHED. Called by the phases under the engine's lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedlora import events as ev
from fedlora.protocol import Stage

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator


def open_round(e: Coordinator, number: int) -> None:
    digest = e.global_digest(e.global_version)
    e.enter(
        Stage.COLLECTING,
        ev.RoundOpened(
            round=number,
            global_version=e.global_version,
            global_digest=digest.hex(),
            deadline_ms=e.now_ms() + int(e.fl.round_timeout_s * 1000),
        ),
    )
    e.opening.reset()


def end_round(e: Coordinator) -> None:
    """After a round closed or failed: open the next one, or finish the federation."""
    r = e.round
    assert r is not None
    for event, identity, reason, count in e.admission.limits.drain():
        e.record(
            ev.RejectionsRepeated(
                round=r.number,
                rejected_event=event,
                identity=identity,
                reason=reason,
                count=count,
            )
        )
    if r.number < e.fl.rounds:
        open_round(e, r.number + 1)
        return
    e.enter(
        Stage.FINISHED,
        ev.FederationFinished(
            rounds=e.fl.rounds,
            global_version=e.global_version,
            global_digest=e.global_digest(e.global_version).hex(),
        ),
    )


def fail_round(e: Coordinator, reason: str, *, party: str | None = None) -> None:
    r = e.round
    assert r is not None
    e.record(
        ev.RoundFailed(
            round=r.number,
            stage=e.stage.value,
            reason=reason,
            contributions=sorted(r.contributions),
            partials=sorted(r.partials),
            party=party,
        )
    )
    end_round(e)


def publish(
    e: Coordinator, mean_delta: np.ndarray, participants: tuple[str, ...], decryptors: list[str]
) -> None:
    """Apply the round's mean delta, publish the new global version and close the round."""
    r = e.round
    assert r is not None
    current = e.store.load_global(r.global_version).astype(np.float64)
    updated = e.secure_sum.rule.update(current, mean_delta)
    digest = save_and_publish(e, r.number, updated.astype(np.float32))
    e.record(
        ev.RoundClosed(
            round=r.number,
            global_version=r.number,
            global_digest=digest.hex(),
            participants=list(participants),
            decryptors=decryptors,
            duration_ms=e.now_ms() - r.opened_ms,
        )
    )
    end_round(e)


def save_and_publish(e: Coordinator, version: int, vector: np.ndarray) -> bytes:
    """Store a global version (and its peft adapter, with a template) and audit its digests."""
    digest = e.store.save_global(version, vector)
    e._digests[version] = digest
    adapter = None
    if e.template is not None:
        path = e.store.global_path(version).with_suffix(".adapter")
        adapter = e.template.write(vector, path).hex()
    e.record(
        ev.GlobalPublished(version=version, global_digest=digest.hex(), adapter_digest=adapter)
    )
    return digest
