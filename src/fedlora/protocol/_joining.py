"""What a client requires of the federation it joins, before it sends anything.

Pure: the caller fetches the coordinator's :class:`JoinInfo` over any transport and loads the
pinned threshold key from its own files; :func:`check_join` compares them with the client's own
configuration (:class:`fedlora.config.ClientPolicy` and the pinned keys) and returns what the
rounds will need, or refuses.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.config import ClientPolicy, TestingOptions, check_key_size
from fedlora.crypto import ThresholdPublicKey, ticket_quorum
from fedlora.errors import ConfigError, ProtocolError, VerificationError
from fedlora.protocol._decryptor import PARTIAL_CHUNK
from fedlora.protocol._messages import JoinInfo
from fedlora.protocol._spec import check_spec, parse_spec, spec_digest


@dataclass(frozen=True)
class JoinExpectations:
    """The client's side of joining: its own files and settings."""

    federation_id: str
    coordinator_key: bytes  # pinned Ed25519 public key
    policy: ClientPolicy
    testing: TestingOptions
    num_parameters: int  # of this client's model
    spec: dict[str, Any] | None = None  # this client's federation spec (fedlora.protocol._spec)
    client_id: str = "this client"


@dataclass(frozen=True)
class Joined:
    """A federation the client agreed to: the announcement, and the limits it applies itself."""

    info: JoinInfo
    min_participants: int  # the smallest aggregate this client helps decrypt
    ticket_quorum: int  # ticket signatures it requires before releasing a partial (0: plaintext)


def check_join(info: JoinInfo, expect: JoinExpectations, key: ThresholdPublicKey | None) -> Joined:
    """Accept the coordinator's announcement only if it is the federation this client pinned.

    ``key`` is the pinned threshold key (needed when the federation is encrypted).

    Raises:
        ProtocolError: another federation.
        VerificationError: another coordinator key or threshold key, plaintext without
            ``policy.allow_plaintext``, a codec for another modulus size.
            A partial-decryption chunk size other than this client's.
        ConfigError: a small key without the testing option, t < 2, a ticket quorum outside
            ⌈(n + t)/2⌉..n, or a model of another size.
    """
    if info.federation_id != expect.federation_id:
        raise ProtocolError(
            f"coordinator serves federation {info.federation_id!r}, this client expects {expect.federation_id!r}"
        )
    if not hmac.compare_digest(info.coordinator_signing_key, expect.coordinator_key):
        raise VerificationError(
            "the coordinator's signing key differs from keys.coordinator_signing_public_key"
        )
    if not info.homomorphic and not expect.policy.allow_plaintext:
        raise VerificationError(
            f"the coordinator announces encryption_type {info.encryption_type!r}: this client "
            "sends updates only encrypted (set policy.allow_plaintext: true for a plaintext "
            "baseline federation)"
        )
    quorum = 0
    if info.homomorphic:
        if key is None:
            raise ConfigError("keys.threshold_public_key is required for an encrypted federation")
        if not hmac.compare_digest(key.fingerprint, info.key_fingerprint):
            raise VerificationError(
                "the coordinator uses a different threshold key than keys.threshold_public_key"
            )
        quorum = _check_key(info, expect, key)
        if info.partial_chunk != PARTIAL_CHUNK:
            raise VerificationError(
                f"the coordinator announces partial decryptions in chunks of {info.partial_chunk} "
                f"ciphertexts, this client's fedlora sends chunks of {PARTIAL_CHUNK}: run the "
                "coordinator's fedlora version"
            )
    if info.spec_json and expect.spec is not None:
        check_spec(
            parse_spec(info.spec_json, "the federation's spec"), expect.spec, expect.client_id
        )
    if info.num_parameters != expect.num_parameters:
        raise ConfigError(
            f"the federation's model has {info.num_parameters} parameters, this client's has {expect.num_parameters}"
        )
    min_participants = expect.policy.min_participants or max(2, info.participant_threshold)
    return Joined(info, min_participants, quorum)


def check_announced(info: JoinInfo, settings: Mapping[str, Any]) -> None:
    """What the coordinator announced at join must be what it recorded in its signed log's
    ``federation_started`` entry (the settings every restart must match): the codec, the
    thresholds, the ticket quorum, ``min_clients``, the partial-decryption chunk size, the model
    size and spec. A coordinator that tells one member other parameters than it logged (another
    codec, say, or another model spec) is caught by the member itself.

    Raises:
        VerificationError: naming each announced setting that differs from the log's.
    """
    spec = (
        spec_digest(parse_spec(info.spec_json, "the federation's spec")) if info.spec_json else ""
    )
    announced: dict[str, Any] = {
        "federation_id": info.federation_id,
        "federated_learning.encryption_type": info.encryption_type,
        "keys.threshold_public_key": info.key_fingerprint.hex(),
        "codec.clip": info.codec.clip,
        "codec.value_bits": info.codec.value_bits,
        "codec.max_total_weight": info.codec.max_total_weight,
        "codec.max_weight": info.max_weight,
        "federated_learning.participant_threshold": info.participant_threshold,
        "federated_learning.decryption_threshold": info.decryption_threshold,
        "federated_learning.ticket_quorum": info.ticket_quorum,
        "federated_learning.min_clients": info.min_clients,
        "federated_learning.rounds": info.rounds,
        "federated_learning.aggregation_frequency": info.aggregation_frequency,
        "model.num_parameters": info.num_parameters,
        "model.spec": spec,
        "protocol.partial_chunk": info.partial_chunk,
    }
    differ = [name for name, value in announced.items() if settings.get(name) != value]
    if differ:
        shown = ", ".join(
            f"{name} {announced[name]!r} (logged {settings.get(name)!r})" for name in differ[:4]
        )
        raise VerificationError(
            f"the coordinator announced other settings than its audit log records: {shown}"
        )


def check_key_safety(
    key: ThresholdPublicKey, testing: TestingOptions, quorum: int | None, quorum_key: str
) -> int:
    """The rules every party applies to a threshold key, in one place: at least 2048 bits (unless
    ``testing`` allows small keys), ``t ≥ 2``, and a ticket quorum (``quorum``, or the safe
    default when None) within ``⌈(ℓ + t)/2⌉..ℓ``. Returns the quorum.

    Raises:
        ConfigError: naming ``keys.threshold_public_key`` or ``quorum_key``, and the fix.
    """
    check_key_size(key.n.bit_length(), testing, "keys.threshold_public_key")
    if key.threshold < 2:
        raise ConfigError(
            "keys.threshold_public_key: a 1-of-n key lets any single holder decrypt every "
            "contribution; deal a key with threshold >= 2"
        )
    safe = ticket_quorum(key.parties, key.threshold)
    chosen = quorum or safe
    if not safe <= chosen <= key.parties:
        raise ConfigError(
            f"{quorum_key}: {chosen} is outside {safe}..{key.parties}; below "
            f"⌈(holders + t)/2⌉ = {safe} two different aggregates of one round could both be "
            "decrypted (a split view)"
        )
    return chosen


def _check_key(info: JoinInfo, expect: JoinExpectations, key: ThresholdPublicKey) -> int:
    """Refuse unsafe keys and a codec that does not fit the pinned key; return the quorum."""
    quorum = check_key_safety(
        key, expect.testing, expect.policy.ticket_quorum, "policy.ticket_quorum"
    )
    bits = key.n.bit_length()
    if info.codec.key_bits != bits:
        raise VerificationError(
            f"the coordinator announces a codec for {info.codec.key_bits}-bit keys, but the pinned "
            f"threshold key has {bits} bits"
        )
    return quorum
