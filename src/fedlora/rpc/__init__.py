"""fedlora.rpc — the gRPC wire: protobuf ⇄ protocol messages, status codes, identity metadata.

The only home of the generated protobuf code besides the two gRPC adapters that use it
(:mod:`fedlora.coordinator._servicer` and :mod:`fedlora.client._grpc`). Every conversion exists
once here, in both directions, so the roles cannot read the wire differently.
"""

from __future__ import annotations

from typing import Any

import grpc

from fedlora.audit import SignedCheckpoint
from fedlora.crypto import CodecParams
from fedlora.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    CryptoError,
    FedLoraError,
    NotFoundError,
    OutOfRangeError,
    ProtocolError,
    RateLimitError,
    UnavailableError,
    VerificationError,
)
from fedlora.protocol import (
    ContributionHeader,
    DecryptionManifest,
    JoinInfo,
    ManifestEntry,
    PartialHeader,
    Receipt,
    RoundStatus,
    Stage,
)
from fedlora.v1 import common_pb2, federation_pb2

__all__ = [
    "INSECURE_IDENTITY_HEADER",
    "RETRYABLE",
    "STATUS",
    "checkpoint_from_proto",
    "checkpoint_to_proto",
    "codec_from_proto",
    "codec_to_proto",
    "contribution_header_from_proto",
    "contribution_header_to_proto",
    "join_from_proto",
    "join_to_proto",
    "manifest_from_proto",
    "manifest_to_proto",
    "partial_header_from_proto",
    "partial_header_to_proto",
    "receipt_from_proto",
    "receipt_to_proto",
    "status_for",
    "status_from_proto",
    "status_to_proto",
]

# The loopback demo's identity (insecure mode only): whatever the client claims in this header.
INSECURE_IDENTITY_HEADER = "x-fedlora-insecure-identity"

# Domain errors → gRPC status codes; the first matching class wins.
STATUS: list[tuple[type[FedLoraError], grpc.StatusCode]] = [
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (AuthorizationError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (ProtocolError, grpc.StatusCode.FAILED_PRECONDITION),
    (RateLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (VerificationError, grpc.StatusCode.INVALID_ARGUMENT),
    (CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (FedLoraError, grpc.StatusCode.INTERNAL),
]

# Status codes a client retries with backoff: the coordinator is away, slow or busy.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

_STAGES = {
    Stage.WAITING: common_pb2.ROUND_STAGE_WAITING,
    Stage.COLLECTING: common_pb2.ROUND_STAGE_COLLECTING,
    Stage.AGGREGATING: common_pb2.ROUND_STAGE_AGGREGATING,
    Stage.TICKETING: common_pb2.ROUND_STAGE_TICKETING,
    Stage.DECRYPTING: common_pb2.ROUND_STAGE_DECRYPTING,
    Stage.COMBINING: common_pb2.ROUND_STAGE_COMBINING,
    Stage.FINISHED: common_pb2.ROUND_STAGE_FINISHED,
}
_STAGES_BACK = {v: k for k, v in _STAGES.items()}


def status_for(error: FedLoraError) -> grpc.StatusCode:
    return next(code for kind, code in STATUS if isinstance(error, kind))


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def codec_to_proto(codec: CodecParams) -> common_pb2.CodecParams:
    return common_pb2.CodecParams(
        clip=codec.clip,
        value_bits=codec.value_bits,
        max_total_weight=codec.max_total_weight,
        key_bits=codec.key_bits,
    )


def codec_from_proto(c: Any) -> CodecParams:
    """Raises CryptoError for parameters no codec accepts."""
    return CodecParams(
        clip=c.clip,
        value_bits=c.value_bits,
        max_total_weight=c.max_total_weight,
        key_bits=c.key_bits,
    )


def checkpoint_to_proto(cp: SignedCheckpoint) -> common_pb2.Checkpoint:
    return common_pb2.Checkpoint(
        log_id=cp.log_id,
        tree_size=cp.tree_size,
        root=cp.root,
        timestamp_ms=cp.timestamp_ms,
        signature=cp.signature,
    )


def checkpoint_from_proto(cp: Any) -> SignedCheckpoint:
    return SignedCheckpoint(cp.log_id, cp.tree_size, cp.root, cp.timestamp_ms, cp.signature)


def join_to_proto(info: JoinInfo) -> federation_pb2.JoinResponse:
    return federation_pb2.JoinResponse(
        federation_id=info.federation_id,
        role=info.role,
        key_fingerprint=info.key_fingerprint,
        codec=codec_to_proto(info.codec),
        encryption_type=info.encryption_type,
        aggregation_frequency=info.aggregation_frequency,
        participant_threshold=info.participant_threshold,
        decryption_threshold=info.decryption_threshold,
        rounds=info.rounds,
        num_parameters=info.num_parameters,
        coordinator_signing_key=info.coordinator_signing_key,
        chunk_bytes=info.chunk_bytes,
        max_weight=info.max_weight,
        ticket_quorum=info.ticket_quorum,
        spec_json=info.spec_json,
        min_clients=info.min_clients,
        partial_chunk=info.partial_chunk,
    )


def join_from_proto(r: Any) -> JoinInfo:
    return JoinInfo(
        federation_id=r.federation_id,
        role=r.role,
        key_fingerprint=r.key_fingerprint,
        codec=codec_from_proto(r.codec),
        encryption_type=r.encryption_type,
        aggregation_frequency=r.aggregation_frequency,
        participant_threshold=r.participant_threshold,
        decryption_threshold=r.decryption_threshold,
        rounds=r.rounds,
        num_parameters=r.num_parameters,
        coordinator_signing_key=r.coordinator_signing_key,
        chunk_bytes=r.chunk_bytes or (1 << 20),
        max_weight=r.max_weight or 1,
        ticket_quorum=r.ticket_quorum,
        spec_json=r.spec_json,
        min_clients=r.min_clients,
        partial_chunk=r.partial_chunk,
    )


def status_to_proto(s: RoundStatus) -> federation_pb2.RoundStatus:
    return federation_pb2.RoundStatus(
        round=s.round,
        stage=_STAGES[s.stage],
        global_version=s.global_version,
        global_digest=s.global_digest,
        deadline_unix_s=s.deadline_unix_s,
        contributions=s.contributions,
        contributed=s.contributed,
        partial_submitted=s.partial_submitted,
        rounds_total=s.rounds_total,
        decryptor=s.decryptor,
        ticket_signed=s.ticket_signed,
        ticket_signatures=s.ticket_signatures,
        contributors=list(s.contributors),
        joined=len(s.joined),
        joined_parties=list(s.joined),
        min_clients=s.min_clients,
        warning=s.warning,
    )


def status_from_proto(s: Any) -> RoundStatus:
    """Raises ProtocolError for a stage this client does not know."""
    stage = _STAGES_BACK.get(s.stage)
    if stage is None:
        raise ProtocolError(f"the coordinator reports an unknown round stage ({s.stage})")
    return RoundStatus(
        round=s.round,
        stage=stage,
        global_version=s.global_version,
        global_digest=s.global_digest,
        deadline_unix_s=s.deadline_unix_s,
        contributions=s.contributions,
        contributed=s.contributed,
        partial_submitted=s.partial_submitted,
        rounds_total=s.rounds_total,
        decryptor=s.decryptor,
        ticket_signed=s.ticket_signed,
        ticket_signatures=s.ticket_signatures,
        contributors=tuple(s.contributors),
        joined=tuple(s.joined_parties),
        min_clients=s.min_clients,
        warning=s.warning,
    )


def contribution_header_to_proto(h: ContributionHeader) -> federation_pb2.ContributionHeader:
    return federation_pb2.ContributionHeader(
        round=h.round_number,
        weight=h.weight,
        value_count=h.value_count,
        record_count=h.record_count,
        ciphertexts_digest=h.ciphertexts_digest,
        key_fingerprint=h.key_fingerprint,
        codec_digest=h.codec_digest,
        signature=h.signature,
        global_version=h.global_version,
        global_digest=h.global_digest,
        knowledge_proof=h.knowledge_proof,
    )


def contribution_header_from_proto(h: Any) -> ContributionHeader:
    return ContributionHeader(
        round_number=h.round,
        weight=h.weight,
        value_count=h.value_count,
        record_count=h.record_count,
        ciphertexts_digest=h.ciphertexts_digest,
        key_fingerprint=h.key_fingerprint,
        codec_digest=h.codec_digest,
        signature=h.signature,
        global_version=h.global_version,
        global_digest=h.global_digest,
        knowledge_proof=h.knowledge_proof,
    )


def receipt_to_proto(r: Receipt) -> common_pb2.Receipt:
    return common_pb2.Receipt(
        federation_id=r.federation_id,
        round=r.round_number,
        client_id=r.client_id,
        contribution_digest=r.contribution_digest,
        log_index=r.log_index,
        received_at_ms=r.received_at_ms,
        signature=r.signature,
        duplicate=r.duplicate,
        entry=r.entry,
        checkpoint=checkpoint_to_proto(r.checkpoint),
        inclusion=list(r.inclusion),
    )


def receipt_from_proto(r: Any) -> Receipt:
    """Raises VerificationError: a receipt without its signed checkpoint."""
    if not r.HasField("checkpoint"):
        raise VerificationError("the receipt carries no signed audit checkpoint")
    return Receipt(
        federation_id=r.federation_id,
        round_number=r.round,
        client_id=r.client_id,
        contribution_digest=r.contribution_digest,
        log_index=r.log_index,
        received_at_ms=r.received_at_ms,
        signature=r.signature,
        entry=r.entry,
        inclusion=tuple(r.inclusion),
        checkpoint=checkpoint_from_proto(r.checkpoint),
        duplicate=r.duplicate,
    )


def manifest_to_proto(m: DecryptionManifest) -> federation_pb2.DecryptionManifest:
    return federation_pb2.DecryptionManifest(
        federation_id=m.federation_id,
        round=m.round_number,
        value_count=m.value_count,
        codec=codec_to_proto(m.codec),
        key_fingerprint=m.key_fingerprint,
        aggregate_digest=m.aggregate_digest,
        record_count=m.record_count,
        global_version=m.global_version,
        global_digest=m.global_digest,
        entries=[
            federation_pb2.ManifestEntry(
                client_id=e.client_id,
                weight=e.weight,
                record_count=e.record_count,
                ciphertexts_digest=e.ciphertexts_digest,
                signature=e.signature,
                knowledge_proof=e.knowledge_proof,
            )
            for e in m.entries
        ],
        ticket_signatures=[
            federation_pb2.TicketSignature(party_id=p, signature=sig)
            for p, sig in m.ticket_signatures
        ],
        checkpoint=checkpoint_to_proto(m.checkpoint),
        aggregated_entry=m.aggregated_entry,
        aggregated_index=m.aggregated_index,
        aggregated_inclusion=list(m.aggregated_inclusion),
    )


def manifest_from_proto(m: Any) -> DecryptionManifest:
    """Raises CryptoError for a codec no holder accepts."""
    return DecryptionManifest(
        federation_id=m.federation_id,
        round_number=m.round,
        value_count=m.value_count,
        codec=codec_from_proto(m.codec),
        key_fingerprint=m.key_fingerprint,
        aggregate_digest=m.aggregate_digest,
        record_count=m.record_count,
        global_version=m.global_version,
        global_digest=m.global_digest,
        entries=tuple(
            ManifestEntry(
                client_id=e.client_id,
                weight=e.weight,
                record_count=e.record_count,
                ciphertexts_digest=e.ciphertexts_digest,
                signature=e.signature,
                knowledge_proof=e.knowledge_proof,
            )
            for e in m.entries
        ),
        ticket_signatures=tuple((s.party_id, s.signature) for s in m.ticket_signatures),
        checkpoint=checkpoint_from_proto(m.checkpoint),
        aggregated_entry=m.aggregated_entry,
        aggregated_index=m.aggregated_index,
        aggregated_inclusion=tuple(m.aggregated_inclusion),
    )


def partial_header_to_proto(h: PartialHeader) -> federation_pb2.PartialHeader:
    return federation_pb2.PartialHeader(
        round=h.round_number,
        ciphertexts_digest=h.ciphertexts_digest,
        proof_challenge=_bytes(h.challenge),
        proof_response=_bytes(h.response),
        record_count=h.record_count,
        ticket_digest=h.ticket_digest,
        statement_signature=h.statement_signature,
        first_record=h.first_record,
    )


def partial_header_from_proto(h: Any) -> PartialHeader:
    return PartialHeader(
        round_number=h.round,
        ciphertexts_digest=h.ciphertexts_digest,
        challenge=_int(h.proof_challenge),
        response=_int(h.proof_response),
        record_count=h.record_count,
        ticket_digest=h.ticket_digest,
        statement_signature=h.statement_signature,
        first_record=h.first_record,
    )
