"""Start-up: a new federation's first entries, or a restart's replay of the log.

A restart whose configuration differs from the federation's is refused before anything is
written, unless accepted (then the change is audited); so is one whose revocation list is
missing or older than the log's, and one given other initial arrays. A key the holders
generated (:mod:`fedlora.coordinator._keygen`) precedes ``federation_started`` in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlora import events as ev
from fedlora.config import CoordinatorConfig
from fedlora.coordinator import _rounds
from fedlora.coordinator._settings import check_changes, differences
from fedlora.coordinator._state import replay
from fedlora.errors import ConfigError
from fedlora.protocol import SPEC_FILE, Stage, parse_spec

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator


def start(e: Coordinator, accept_config_change: bool) -> None:
    """Rebuild ``e``'s state from its audit log; start the federation if the log is empty."""
    events = [json.loads(line) for line in e.audit.entries()]
    holders = (e.key.party_ids, e.quorum, e.key.threshold) if e.key else ()
    if not any(entry.get("event") == "federation_started" for entry in events):
        # a new federation (the log may hold its key generation: keygen_*, key_generated)
        e.admission.start(None, *holders)
        e.record(
            ev.FederationStarted(
                federation_id=e.config.federation_id,
                encryption_type=e.fl.encryption_type,
                key_fingerprint=e.fingerprint.hex(),
                codec=e.codec.to_dict(),
                participant_threshold=e.fl.participant_threshold,
                decryption_threshold=e.fl.decryption_threshold,
                ticket_quorum=e.quorum,
                rounds=e.fl.rounds,
                aggregation_frequency=e.fl.aggregation_frequency,
                num_parameters=e.num_parameters,
                parties=[
                    {"id": p.id, "role": p.role, "signing_public_key": p.signing_public_key}
                    for p in e.config.parties
                ],
                settings=e.settings,
            )
        )
        _rounds.save_and_publish(e, 0, e.initial)
        e.admission.announce()
        return  # WAITING: round 1 opens once min_clients parties have joined
    state = replay(events)
    changes = differences(state.settings, e.settings)
    generated = [x.get("key_fingerprint") for x in events if x.get("event") == "key_generated"]
    key_change = changes.get("keys.threshold_public_key")
    rekeyed = key_change is not None and bool(generated) and key_change[1] == generated[-1]
    check_changes(
        changes,
        accept=accept_config_change,
        state_dir=str(e.config.state_dir),
        round_number=state.round.number if state.round else 0,
        rekeyed=rekeyed,
    )
    e.admission.start(state.revocations, *holders)
    initial = hashlib.sha256(e.initial.astype("<f4").tobytes()).digest()
    if e.store.global_path(0).exists() and not hmac.compare_digest(initial, e.global_digest(0)):
        raise ConfigError(
            f"{e.config.state_dir} holds a federation that started from other initial arrays "
            "(global version 0 differs); give the same initial model, or a new state folder "
            "for a new federation"
        )
    e.state = state
    if changes:
        e.record(ev.ConfigChanged(changes=changes))
    r = e.round
    e.record(
        ev.CoordinatorRestarted(
            round=r.number if r else 0,
            stage=e.stage.value,
            contributions=sorted(r.contributions) if r else [],
        )
    )
    e.admission.announce()
    if rekeyed and r is not None and not state.ended and e.stage is not Stage.FINISHED:
        # contributions under the old key cannot be added to ones under the new key
        _rounds.fail_round(e, "the federation re-keyed; the next round opens under the new key")
    elif state.ended and e.stage is not Stage.FINISHED:
        _rounds.end_round(e)  # it crashed between ending a round and opening the next
    elif e.stage is Stage.FINISHED and r and r.number < e.fl.rounds:
        _rounds.open_round(e, r.number + 1)  # more rounds, accepted above


def spec_source(config: CoordinatorConfig) -> tuple[Path, str] | None:
    """Where the federation spec is, and the setting that names it: ``model.spec``, else the
    adapter template folder's (``fedlora model template`` writes both), else none.

    Raises:
        ConfigError: a template folder without its spec.
    """
    if config.model.spec is not None:
        return config.model.spec, "model.spec"
    template = config.model.adapter_template
    if template is None:
        return None
    path = template / SPEC_FILE
    if not path.exists():
        raise ConfigError(
            f"model.adapter_template: {template} has no {SPEC_FILE}; write the template and its "
            "spec again with `fedlora model template`, or name the spec with model.spec"
        )
    return path, "model.adapter_template"


def load_spec(config: CoordinatorConfig) -> dict[str, Any] | None:
    """The federation spec (see :func:`spec_source`), checked against the model's size."""
    source = spec_source(config)
    if source is None:
        return None
    path, where = source
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    spec = parse_spec(text, f"{where}: {path}")
    count = spec.get("model.num_parameters")
    if count is not None and count != config.model.num_parameters:
        raise ConfigError(
            f"{where}: {path} describes a model of {count} parameters, model.num_parameters is "
            f"{config.model.num_parameters}"
        )
    return spec
