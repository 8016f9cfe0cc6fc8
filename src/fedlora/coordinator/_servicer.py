"""Thin gRPC servicers: protobuf ⇄ domain objects, domain errors → status codes in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from fedlora import rpc
from fedlora.config import Party
from fedlora.coordinator._engine import Coordinator
from fedlora.errors import AuthorizationError, FedLoraError, VerificationError
from fedlora.v1 import audit_pb2, audit_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc

T = TypeVar("T")


def _abort(context: grpc.ServicerContext, error: FedLoraError) -> None:
    context.abort(rpc.status_for(error), str(error))


class _Base:
    def __init__(self, engine: Coordinator, insecure: bool) -> None:
        self.engine = engine
        self.insecure = insecure

    def _identity(self, context: grpc.ServicerContext) -> str | None:
        if self.insecure:  # loopback demo only: the identity is whatever the client claims
            return dict(context.invocation_metadata()).get(rpc.INSECURE_IDENTITY_HEADER)
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
            return rpc.join_to_proto(self.engine.join_info(party, request.spec_json))

        return self._call(context, "Join", body)

    def GetRound(self, request: Any, context: grpc.ServicerContext) -> federation_pb2.RoundStatus:
        def body(party: Party) -> federation_pb2.RoundStatus:
            return rpc.status_to_proto(self.engine.status(party))

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
            header = rpc.contribution_header_from_proto(first.header)
            receipt = self.engine.accept_contribution(party, header, _data(request_iterator))
            return rpc.receipt_to_proto(receipt)

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
        yield federation_pb2.DecryptionTaskChunk(manifest=rpc.manifest_to_proto(manifest))
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
            header = rpc.partial_header_from_proto(first.header)
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
        return rpc.checkpoint_to_proto(
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
