"""What a restart must match: the federation's settings, recorded once and compared on restart.

A coordinator restarted on an existing state folder with another configuration must not carry on
silently under the new one. The settings that define the federation are written into its
``federation_started`` entry; on restart the current configuration is compared with them (and
with every accepted ``config_changed`` since), and a difference is refused with the keys named.
``--accept-config-change`` applies the changes that are safe mid-federation (schedule, thresholds,
enrolment) and audits them; the ones that would make earlier rounds and the running clients
disagree (federation id, encryption, key, codec, model) are refused even then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.config import CoordinatorConfig
from fedlora.crypto import CodecParams, ThresholdPublicKey
from fedlora.errors import ConfigError
from fedlora.protocol import PARTIAL_CHUNK, PLAINTEXT_FINGERPRINT, check_key_safety
from fedlora.protocol import spec_digest as protocol_spec_digest

RISE_ONLY = ("federated_learning.participant_threshold", "federated_learning.ticket_quorum")

IMMUTABLE = (
    "federation_id",
    "federated_learning.encryption_type",
    "keys.threshold_public_key",
    "codec.",
    "model.",
    "flower.",  # a Flower run's array layout: the versions members keep are read with it
    "protocol.",  # how holders cut their partial decryptions; the coordinator combines by it
)


@dataclass(frozen=True)
class FederationParameters:
    """What a coordinator derives from its configuration, threshold key and federation spec —
    once, here, for the engine and for ``config check`` alike: the codec, the ticket quorum,
    ``min_clients``, the partial-decryption chunk size, the key fingerprint contributions name, the spec's digest, and the settings
    ``federation_started`` records (and a restart must match). Members are told them in
    ``JoinInfo`` and check them against their own pins."""

    codec: CodecParams
    ticket_quorum: int
    min_clients: int
    partial_chunk: int  # ciphertexts per partial decryption chunk (protocol.PARTIAL_CHUNK)
    key_fingerprint: bytes
    spec_digest: str
    settings: dict[str, Any]


def federation_parameters(
    config: CoordinatorConfig,
    key: ThresholdPublicKey | None,
    spec: dict[str, Any] | None,
    extra_settings: Mapping[str, Any] | None = None,
) -> FederationParameters:
    """Derive :class:`FederationParameters`; ``extra_settings`` are recorded besides (Flower's
    array layout).

    Raises:
        ConfigError: a threshold key that does not fit the configuration (see
            :func:`check_threshold_key`).
    """
    fl = config.federated_learning
    quorum = check_threshold_key(config, key)
    codec = CodecParams(
        clip=config.codec.clip,
        value_bits=config.codec.value_bits,
        max_total_weight=config.codec.max_weight * len(config.parties),
        key_bits=key.n.bit_length() if key else 2048,
    )
    homomorphic = fl.encryption_type == "homomorphic" and key is not None
    fingerprint = key.fingerprint if homomorphic and key else PLAINTEXT_FINGERPRINT
    digest = protocol_spec_digest(spec) if spec is not None else ""
    min_clients = fl.min_clients or fl.participant_threshold
    settings = settings_of(
        config,
        key_fingerprint=fingerprint,
        codec=codec,
        ticket_quorum=quorum,
        min_clients=min_clients,
        spec_digest=digest,
    )
    settings.update(extra_settings or {})
    return FederationParameters(
        codec, quorum, min_clients, PARTIAL_CHUNK, fingerprint, digest, settings
    )


def settings_of(
    config: CoordinatorConfig,
    *,
    key_fingerprint: bytes,
    codec: CodecParams,
    ticket_quorum: int,
    min_clients: int,
    spec_digest: str = "",
) -> dict[str, Any]:
    """The settings a restart must match, by dotted YAML name (JSON values)."""
    fl = config.federated_learning
    out: dict[str, Any] = {
        "federation_id": config.federation_id,
        "federated_learning.encryption_type": fl.encryption_type,
        "keys.threshold_public_key": key_fingerprint.hex(),
        "codec.clip": codec.clip,
        "codec.value_bits": codec.value_bits,
        "codec.max_total_weight": codec.max_total_weight,
        "codec.max_weight": config.codec.max_weight,
        "federated_learning.participant_threshold": fl.participant_threshold,
        "federated_learning.decryption_threshold": fl.decryption_threshold,
        "federated_learning.ticket_quorum": ticket_quorum,
        "federated_learning.min_clients": min_clients,
        "federated_learning.rounds": fl.rounds,
        "federated_learning.aggregation_frequency": fl.aggregation_frequency,
        "federated_learning.round_timeout_s": fl.round_timeout_s,
        "federated_learning.decryption_timeout_s": fl.decryption_timeout_s,
        "model.num_parameters": config.model.num_parameters,
        "model.spec": spec_digest,  # the federation spec every client's model must match
        "protocol.partial_chunk": PARTIAL_CHUNK,  # ciphertexts per partial decryption chunk
    }
    for p in config.parties:
        out[f"parties.{p.id}"] = {
            "role": p.role,
            "signing_public_key": p.signing_public_key,
            "revoked": p.revoked,
        }
    return out


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """``{name: [recorded, current]}`` for every setting that differs or was not recorded.

    A setting the federation did not record (one a newer fedlora added) counts as a difference
    (``None`` → value): it takes ``--accept-config-change`` once, which records it.
    """
    names = set(recorded) | set(current)
    return {
        n: [recorded.get(n), current.get(n)]
        for n in sorted(names)
        if recorded.get(n) != current.get(n)
    }


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def check_changes(
    changes: dict[str, list[Any]],
    *,
    accept: bool,
    state_dir: str,
    round_number: int,
    rekeyed: bool = False,
) -> None:
    """Refuse a configuration that differs from the federation's, naming each difference.
    ``rekeyed``: the key changed to one the holders generated and signed (``key_generated``
    in the log), the one way the key may change within a federation.

    Raises:
        ConfigError: a difference without ``accept``, an immutable one, or fewer rounds than
            the federation has already opened.
    """
    if not changes:
        return
    listed = "; ".join(f"{n}: {_show(a)} → {_show(b)}" for n, (a, b) in changes.items())
    # An immutable setting may not change; one the federation never recorded may be recorded now.
    fixed = [
        n
        for n, (old, _) in changes.items()
        if n.startswith(IMMUTABLE)
        and old is not None
        and not (rekeyed and n == "keys.threshold_public_key")
    ]
    if fixed:
        raise ConfigError(
            f"the configuration differs from the federation in {state_dir} ({listed}); "
            f"{', '.join(fixed)} cannot change within a federation — restore the old value, or "
            "start a new federation with a new federation_id and state_dir"
        )
    for name in RISE_ONLY:
        change = changes.get(name)
        if change is not None and None not in change and change[1] < change[0]:
            raise ConfigError(
                f"{name}: {change[0]} → {change[1]} would lower a privacy threshold that the "
                "members' contributions were sent under; it may only be raised"
            )
    rounds = changes.get("federated_learning.rounds")
    if rounds is not None and int(rounds[1]) < round_number:
        raise ConfigError(
            f"federated_learning.rounds: {rounds[1]} is below round {round_number}, which the "
            "federation has already opened"
        )
    if not accept:
        raise ConfigError(
            f"the configuration differs from the federation in {state_dir} ({listed}); restore it, "
            "or start with --accept-config-change to apply the change (it is audited)"
        )


def check_threshold_key(config: CoordinatorConfig, key: ThresholdPublicKey | None) -> int:
    """Check the threshold key against the configuration; return the ticket quorum (0: plaintext).

    Raises:
        ConfigError: no key for an encrypted federation, a small key without the testing option,
            another decryption threshold, t < 2, holders who are not enrolled, or a ticket quorum
            outside ⌈(n + t)/2⌉..n.
    """
    fl = config.federated_learning
    if fl.encryption_type != "homomorphic":
        return 0
    if key is None:
        raise ConfigError(
            "keys.threshold_public_key is required when encryption_type is homomorphic"
        )
    if key.threshold != fl.decryption_threshold:
        raise ConfigError(
            f"federated_learning.decryption_threshold is {fl.decryption_threshold} but the "
            f"threshold key needs {key.threshold} partial decryptions"
        )
    unknown = [p for p in key.party_ids if config.party(p) is None]
    if unknown:
        raise ConfigError(f"threshold key share holders {unknown} are not enrolled in parties")
    return check_key_safety(
        key, config.testing, fl.ticket_quorum, "federated_learning.ticket_quorum"
    )
