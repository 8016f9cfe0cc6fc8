"""Thin gRPC servicers: protobuf ⇄ domain objects, domain errors → status codes in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from fedlora.audit import SignedCheckpoint
from fedlora.config import Party
from fedlora.coordinator._engine import ContributionHeader, Coordinator, PartialHeader
from fedlora.coordinator._rounds import Stage
from fedlora.crypto import CodecParams
from fedlora.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    CryptoError,
    FedLoraError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    VerificationError,
)
from fedlora.v1 import audit_pb2, audit_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc

T = TypeVar("T")

STATUS: list[tuple[type[FedLoraError], grpc.StatusCode]] = [
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (AuthorizationError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ProtocolError, grpc.StatusCode.FAILED_PRECONDITION),
    (RateLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (VerificationError, grpc.StatusCode.INVALID_ARGUMENT),
    (CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (FedLoraError, grpc.StatusCode.INTERNAL),
]

STAGES = {
    Stage.COLLECTING: common_pb2.ROUND_STAGE_COLLECTING,
    Stage.AGGREGATING: common_pb2.ROUND_STAGE_AGGREGATING,
    Stage.TICKETING: common_pb2.ROUND_STAGE_TICKETING,
    Stage.DECRYPTING: common_pb2.ROUND_STAGE_DECRYPTING,
    Stage.COMBINING: common_pb2.ROUND_STAGE_COMBINING,
    Stage.FINISHED: common_pb2.ROUND_STAGE_FINISHED,
}

INSECURE_IDENTITY_HEADER = "x-fedlora-insecure-identity"


def status_for(error: FedLoraError) -> grpc.StatusCode:
    return next(code for kind, code in STATUS if isinstance(error, kind))


def _abort(context: grpc.ServicerContext, error: FedLoraError) -> None:
    context.abort(status_for(error), str(error))


def codec_to_proto(codec: CodecParams) -> common_pb2.CodecParams:
    return common_pb2.CodecParams(
        clip=codec.clip,
        value_bits=codec.value_bits,
        max_total_weight=codec.max_total_weight,
        key_bits=codec.key_bits,
    )


def checkpoint_to_proto(cp: SignedCheckpoint) -> common_pb2.Checkpoint:
    return common_pb2.Checkpoint(
        log_id=cp.log_id,
        tree_size=cp.tree_size,
        root=cp.root,
        timestamp_ms=cp.timestamp_ms,
        signature=cp.signature,
    )


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


class _Base:
    def __init__(self, engine: Coordinator, insecure: bool) -> None:
        self.engine = engine
        self.insecure = insecure

    def _identity(self, context: grpc.ServicerContext) -> str | None:
        if self.insecure:  # loopback demo only: the identity is whatever the client claims
            return dict(context.invocation_metadata()).get(INSECURE_IDENTITY_HEADER)
        names = context.auth_context().get("x509_common_name") or []
        return names[0].decode() if names else None

    def _call(self, context: grpc.ServicerContext, method: str, body: Callable[[Party], T]) -> T:
        try:
            party = self.engine.authenticate(self._identity(context), method)
            return body(party)
        except FedLoraError as exc:
            _abort(context, exc)
            raise AssertionError("unreachable") from exc


class FederationServicer(_Base, federation_pb2_grpc.FederationServicer):
    def Join(self, request: Any, context: grpc.ServicerContext) -> federation_pb2.JoinResponse:
        def body(party: Party) -> federation_pb2.JoinResponse:
            if request.client_id and request.client_id != party.id:
                raise AuthorizationError(
                    f"claimed id {request.client_id!r} differs from the certificate's {party.id!r}"
                )
            info = self.engine.join_info(party)
            info["codec"] = codec_to_proto(info["codec"])
            return federation_pb2.JoinResponse(**info)

        return self._call(context, "Join", body)

    def GetRound(self, request: Any, context: grpc.ServicerContext) -> federation_pb2.RoundStatus:
        def body(party: Party) -> federation_pb2.RoundStatus:
            status = self.engine.status(party)
            status["stage"] = STAGES[status["stage"]]
            return federation_pb2.RoundStatus(**status)

        return self._call(context, "GetRound", body)

    def DownloadGlobal(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.GlobalChunk]:
        digest, chunks = self._call(
            context, "DownloadGlobal", lambda party: self.engine.global_chunks(request.version)
        )
        n = self.engine.num_parameters
        for chunk in chunks:
            yield federation_pb2.GlobalChunk(
                version=request.version, digest=digest, num_parameters=n, data=chunk
            )

    def UploadContribution(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> common_pb2.Receipt:
        def body(party: Party) -> common_pb2.Receipt:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise self.engine.reject_malformed_upload(
                    party, "the first message of an upload must be its header"
                )
            h = first.header
            header = ContributionHeader(
                h.round,
                h.weight,
                h.value_count,
                h.record_count,
                h.ciphertexts_digest,
                h.key_fingerprint,
                h.codec_digest,
                h.signature,
                h.global_version,
                h.global_digest,
                h.knowledge_proof,
            )
            receipt = self.engine.accept_contribution(party, header, _data(request_iterator))
            return common_pb2.Receipt(
                federation_id=receipt.federation_id,
                round=receipt.round_number,
                client_id=receipt.client_id,
                contribution_digest=receipt.contribution_digest,
                log_index=receipt.log_index,
                received_at_ms=receipt.received_at_ms,
                signature=receipt.signature,
                duplicate=receipt.duplicate,
                entry=receipt.entry,
                checkpoint=checkpoint_to_proto(receipt.checkpoint) if receipt.checkpoint else None,
                inclusion=list(receipt.inclusion),
            )

        return self._call(context, "UploadContribution", body)

    def GetDecryptionTask(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.DecryptionTaskChunk]:
        manifest, stream = self._call(
            context,
            "GetDecryptionTask",
            lambda party: self.engine.decryption_task(
                party, request.round, manifest_only=request.manifest_only
            ),
        )
        yield federation_pb2.DecryptionTaskChunk(
            manifest=federation_pb2.DecryptionManifest(
                federation_id=manifest.federation_id,
                round=manifest.round_number,
                value_count=manifest.value_count,
                codec=codec_to_proto(manifest.codec),
                key_fingerprint=manifest.key_fingerprint,
                aggregate_digest=manifest.aggregate_digest,
                record_count=manifest.record_count,
                global_version=manifest.global_version,
                global_digest=manifest.global_digest,
                entries=[federation_pb2.ManifestEntry(**e) for e in manifest.entries],
                ticket_signatures=[
                    federation_pb2.TicketSignature(party_id=p, signature=sig)
                    for p, sig in manifest.ticket_signatures
                ],
                checkpoint=checkpoint_to_proto(manifest.checkpoint),
                aggregated_entry=manifest.aggregated_entry,
                aggregated_index=manifest.aggregated_index,
                aggregated_inclusion=list(manifest.aggregated_inclusion),
            )
        )
        for client_id, chunk in stream:
            if client_id:
                yield federation_pb2.DecryptionTaskChunk(
                    contribution=federation_pb2.ContributionData(client_id=client_id, data=chunk)
                )
            else:
                yield federation_pb2.DecryptionTaskChunk(aggregate=chunk)

    def SubmitTicket(self, request: Any, context: grpc.ServicerContext) -> federation_pb2.TicketAck:
        def body(party: Party) -> federation_pb2.TicketAck:
            signatures, quorum = self.engine.accept_ticket(
                party, request.round, request.ticket_digest, request.signature
            )
            return federation_pb2.TicketAck(signatures=signatures, quorum=quorum)

        return self._call(context, "SubmitTicket", body)

    def SubmitPartialDecryption(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> federation_pb2.PartialAck:
        def body(party: Party) -> federation_pb2.PartialAck:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise VerificationError(
                    "the first message of a partial decryption must be its header"
                )
            h = first.header
            header = PartialHeader(
                h.round,
                h.ciphertexts_digest,
                _int(h.proof_challenge),
                _int(h.proof_response),
                h.record_count,
                h.ticket_digest,
                h.statement_signature,
            )
            self.engine.accept_partial(party, header, _data(request_iterator))
            return federation_pb2.PartialAck(accepted=True, message="accepted")

        return self._call(context, "SubmitPartialDecryption", body)


def _data(request_iterator: Iterator[Any]) -> Iterator[bytes]:
    for message in request_iterator:
        if message.WhichOneof("part") != "data":
            raise VerificationError("only data chunks may follow the header")
        yield message.data


class AuditServicer(_Base, audit_pb2_grpc.AuditServicer):
    """Read-only audit access for enrolled parties."""

    def GetEntries(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.AuditEntry]:
        lines = self._call(
            context,
            "GetEntries",
            lambda party: self.engine.audit.entries(request.start, request.limit),
        )
        for offset, line in enumerate(lines):
            yield audit_pb2.AuditEntry(index=request.start + offset, entry=line)

    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> common_pb2.Checkpoint:
        return checkpoint_to_proto(
            self._call(context, "GetCheckpoint", lambda party: self.engine.checkpoint())
        )

    def GetConsistencyProof(
        self, request: Any, context: grpc.ServicerContext
    ) -> audit_pb2.ConsistencyProof:
        hashes = self._call(
            context,
            "GetConsistencyProof",
            lambda party: self.engine.audit.consistency(request.from_size, request.to_size),
        )
        return audit_pb2.ConsistencyProof(
            from_size=request.from_size, to_size=request.to_size, hashes=hashes
        )

    def GetInclusionProof(
        self, request: Any, context: grpc.ServicerContext
    ) -> audit_pb2.InclusionProof:
        leaf, path = self._call(
            context,
            "GetInclusionProof",
            lambda party: self.engine.audit.inclusion(request.index, request.tree_size),
        )
        return audit_pb2.InclusionProof(
            index=request.index, tree_size=request.tree_size, leaf_hash=leaf, hashes=path
        )
