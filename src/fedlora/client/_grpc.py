"""The client's gRPC transport: channel (mTLS, keepalive), retries with backoff, stubs.

A thin adapter (STYLE.md §3): protocol messages in and out through :mod:`fedlora.rpc`, gRPC
status codes turned into fedlora errors, nothing decided here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from fedlora import rpc
from fedlora._files import check_private
from fedlora.audit import SignedCheckpoint
from fedlora.ceremony._exchange import MAX_MESSAGE
from fedlora.ceremony._generate import KeygenOutcome, KeygenStart
from fedlora.certs import check_certificate
from fedlora.client._diagnose import diagnose
from fedlora.client._transport import Progress
from fedlora.config import ClientConfig
from fedlora.crypto import ThresholdPublicKey
from fedlora.errors import ConfigError, FedLoraError, RemoteError, TransportError, VerificationError
from fedlora.protocol import (
    ContributionHeader,
    DecryptionTask,
    JoinInfo,
    PartialHeader,
    Receipt,
    RoundStatus,
    TicketAck,
    assemble_task,
)
from fedlora.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    keygen_pb2,
    keygen_pb2_grpc,
)

T = TypeVar("T")

_REASONS = {code: kind for kind, code in reversed(rpc.STATUS)}  # the most specific class wins


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def channel_for(config: ClientConfig) -> grpc.Channel:
    """A channel to the configured coordinator (mTLS unless ``coordinator.insecure``)."""
    c = config.coordinator
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.max_send_message_length", 8 << 20),
        # Notice a dead connection in ~40 s rather than hours (an upload then retries).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if c.insecure:
        return grpc.insecure_channel(c.address, options=options)
    assert c.tls is not None
    # Refuse here, in one line, what the coordinator would refuse with "unavailable".
    check_certificate(c.tls.cert, c.tls.ca, "coordinator.tls.cert", name=config.id)
    check_private(c.tls.key, "coordinator.tls.key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(c.tls.ca, "coordinator.tls.ca"),
        private_key=_read(c.tls.key, "coordinator.tls.key"),
        certificate_chain=_read(c.tls.cert, "coordinator.tls.cert"),
    )
    if c.server_name:
        options.append(("grpc.ssl_target_name_override", c.server_name))
    return grpc.secure_channel(c.address, credentials, options=options)


def _error(what: str, exc: grpc.RpcError, address: str) -> FedLoraError:
    code = exc.code()
    details = exc.details() or code.name.lower()
    if code in rpc.RETRYABLE or code == grpc.StatusCode.UNKNOWN:
        return TransportError(f"{what}: coordinator {address} {code.name.lower()}: {details}")
    return RemoteError(f"{what}: {details}", _REASONS.get(code, FedLoraError))


class GrpcTransport:
    """:class:`fedlora.client.Transport` over gRPC, retrying transient failures."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        on_retry: Callable[[str], None] | None = None,
        channel: grpc.Channel | None = None,
        budget_s: float | None = None,
    ) -> None:
        """``budget_s``: give up retrying once this much time has passed (``fedlora status``
        answers within it); None: ``retry.max_attempts`` alone decides."""
        self.config = config
        self.budget_s = budget_s
        self.address = config.coordinator.address
        self.channel = channel or channel_for(config)
        self.stub = federation_pb2_grpc.FederationStub(self.channel)
        self.audit_stub = audit_pb2_grpc.AuditStub(self.channel)
        self.metadata = (
            [(rpc.INSECURE_IDENTITY_HEADER, config.id)] if config.coordinator.insecure else None
        )
        self.on_retry = on_retry or (lambda message: None)
        self.chunk_bytes = 1 << 20  # the coordinator's chunk size, learnt at join

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``, retrying transport failures with exponential backoff.

        Raises:
            RemoteError: the coordinator refused; TransportError: unreachable after all tries.
        """
        r = self.config.retry
        delay = r.initial_backoff_s
        cause = ""
        started = time.monotonic()
        for attempt in range(1, r.max_attempts + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                unreachable = code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if unreachable and attempt == 1:
                    # gRPC says only "unavailable"; find out why, and stop at once when
                    # retrying cannot help (a certificate problem).
                    found = diagnose(self.config.coordinator)
                    if found.permanent:
                        raise TransportError(f"{what}: {found.message}") from None
                    cause = f": {found.message}"
                spent = self.budget_s is not None and (
                    time.monotonic() - started + delay > self.budget_s
                )
                if code not in rpc.RETRYABLE or attempt == r.max_attempts or spent:
                    if unreachable and cause:
                        raise TransportError(
                            f"{what}: coordinator {self.address} unavailable after "
                            f"{attempt} attempts{cause}"
                        ) from None
                    raise _error(what, exc, self.address) from None
                self.on_retry(
                    f"{what}: {code.name.lower()}{cause}; retrying in {delay:.1f}s "
                    f"({attempt}/{r.max_attempts})"
                )
                time.sleep(delay)
                delay = min(delay * 2, r.max_backoff_s)
        raise AssertionError("unreachable")

    def join(self, spec_json: str = "") -> JoinInfo:
        request = federation_pb2.JoinRequest(client_id=self.config.id, spec_json=spec_json)
        timeout = self.config.retry.call_timeout_s
        response = self._retry(
            "join", lambda: self.stub.Join(request, metadata=self.metadata, timeout=timeout)
        )
        info = rpc.join_from_proto(response)
        self.chunk_bytes = info.chunk_bytes
        return info

    def round_status(self) -> RoundStatus:
        status = self._retry(
            "round status",
            lambda: self.stub.GetRound(
                federation_pb2.RoundQuery(),
                metadata=self.metadata,
                timeout=self.config.retry.call_timeout_s,
            ),
        )
        return rpc.status_from_proto(status)

    def download_global(self, version: int, max_bytes: int | None = None) -> tuple[bytes, bytes]:
        def fetch() -> tuple[bytes, bytes]:
            data, digest = bytearray(), b""
            call = self.stub.DownloadGlobal(
                federation_pb2.GlobalRequest(version=version), metadata=self.metadata
            )
            for chunk in call:
                data += chunk.data
                digest = chunk.digest
                if max_bytes is not None and len(data) > max_bytes:
                    call.cancel()
                    raise VerificationError(
                        f"global adapter v{version} is larger than the model ({max_bytes} bytes)"
                    )
            return bytes(data), digest

        return self._retry("download global adapter", fetch)

    def upload_contribution(
        self, header: ContributionHeader, records: bytes, on_progress: Progress | None = None
    ) -> Receipt:
        size = self.chunk_bytes

        def upload() -> Any:
            def messages() -> Iterator[federation_pb2.ContributionChunk]:
                yield federation_pb2.ContributionChunk(
                    header=rpc.contribution_header_to_proto(header)
                )
                for i in range(0, len(records), size):
                    if on_progress is not None:
                        on_progress(min(len(records), i + size))
                    yield federation_pb2.ContributionChunk(data=records[i : i + size])

            return self.stub.UploadContribution(messages(), metadata=self.metadata)

        return rpc.receipt_from_proto(self._retry("upload", upload))

    def decryption_task(self, round_number: int, *, manifest_only: bool) -> DecryptionTask:
        def fetch() -> DecryptionTask:
            call = self.stub.GetDecryptionTask(
                federation_pb2.DecryptionTaskRequest(
                    round=round_number, manifest_only=manifest_only
                ),
                metadata=self.metadata,
            )

            def parts() -> Iterator[tuple[str, bytes]]:
                for chunk in call:
                    part = chunk.WhichOneof("part")
                    if part == "manifest":
                        raise VerificationError("the decryption task sends a second manifest")
                    if part == "contribution":
                        yield chunk.contribution.client_id, chunk.contribution.data
                    else:
                        yield "", chunk.aggregate

            try:
                first = next(call, None)
                if first is None or first.WhichOneof("part") != "manifest":
                    raise VerificationError("the decryption task does not start with its manifest")
                return assemble_task(rpc.manifest_from_proto(first.manifest), parts())
            except VerificationError:
                call.cancel()  # nothing more of a refused stream is read
                raise

        return self._retry("decryption task", fetch)

    def submit_ticket(self, round_number: int, ticket: bytes, signature: bytes) -> TicketAck:
        ack = self._retry(
            "ticket signature",
            lambda: self.stub.SubmitTicket(
                federation_pb2.TicketSubmission(
                    round=round_number, ticket_digest=ticket, signature=signature
                ),
                metadata=self.metadata,
            ),
        )
        return TicketAck(ack.signatures, ack.quorum)

    def submit_partial(self, header: PartialHeader, values: bytes) -> None:
        size = self.chunk_bytes

        def messages() -> Iterator[federation_pb2.PartialChunk]:
            yield federation_pb2.PartialChunk(header=rpc.partial_header_to_proto(header))
            for i in range(0, len(values), size):
                yield federation_pb2.PartialChunk(data=values[i : i + size])

        self._retry(
            "partial decryption upload",
            lambda: self.stub.SubmitPartialDecryption(messages(), metadata=self.metadata),
        )

    def checkpoint(self) -> SignedCheckpoint:
        cp = self._retry(
            "audit checkpoint",
            lambda: self.audit_stub.GetCheckpoint(
                audit_pb2.CheckpointQuery(), metadata=self.metadata
            ),
        )
        return rpc.checkpoint_from_proto(cp)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        proof = self._retry(
            "audit consistency proof",
            lambda: self.audit_stub.GetConsistencyProof(
                audit_pb2.ConsistencyQuery(from_size=old_size, to_size=new_size),
                metadata=self.metadata,
            ),
        )
        return list(proof.hashes)

    def audit_entries(self, start: int, limit: int) -> list[bytes]:
        def fetch() -> list[bytes]:
            query = audit_pb2.AuditQuery(start=start, limit=limit)
            return [e.entry for e in self.audit_stub.GetEntries(query, metadata=self.metadata)]

        return self._retry("audit entries", fetch)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        proof = self._retry(
            "audit inclusion proof",
            lambda: self.audit_stub.GetInclusionProof(
                audit_pb2.InclusionQuery(index=index, tree_size=tree_size), metadata=self.metadata
            ),
        )
        return list(proof.hashes)

    def keygen(self) -> GrpcKeygen:
        """The coordinator's Keygen relay (``keys.generation``)."""
        return GrpcKeygen(self)

    def close(self) -> None:
        self.channel.close()


class GrpcKeygen:
    """:class:`fedlora.client._keygen.KeygenClient` over the coordinator's Keygen service. The
    coordinator answers a long poll within ~15 s ("not yet" included); each call asks again."""

    def __init__(self, transport: GrpcTransport) -> None:
        self.t = transport
        self.stub = keygen_pb2_grpc.KeygenStub(transport.channel)
        self.timeout = max(transport.config.retry.call_timeout_s, 60.0)
        self.chunk_bytes = 1 << 20  # the coordinator's, learnt from its announcement
        self._waiting: list[str] = []

    def _call(self, what: str, method: Callable[..., T], request: Any) -> T:
        return self.t._retry(
            what, lambda: method(request, metadata=self.t.metadata, timeout=self.timeout)
        )

    def hello(self, nonce: bytes) -> KeygenStart:
        while True:
            reply = self._call(
                "key generation", self.stub.Hello, keygen_pb2.KeygenHello(nonce=nonce)
            )
            if reply.attempt:
                self.chunk_bytes = reply.chunk_bytes or self.chunk_bytes
                return KeygenStart(
                    reply.federation_id,
                    reply.attempt,
                    tuple(reply.holders),
                    tuple(reply.nonces),
                    reply.threshold,
                    reply.bits,
                )
            if list(reply.holders) != self._waiting:
                self._waiting = list(reply.holders)
                self.t.on_retry(f"key generation: waiting for {', '.join(self._waiting)}")

    def post(self, session: bytes, number: int, recipient: str, message: bytes) -> None:
        for offset in range(0, len(message), self.chunk_bytes):
            piece = keygen_pb2.KeygenPiece(
                session=session,
                round=number,
                peer=recipient,
                offset=offset,
                total=len(message),
                data=message[offset : offset + self.chunk_bytes],
            )
            self._call("key generation", self.stub.Post, piece)

    def collect(self, session: bytes, number: int, sender: str) -> bytes:
        out = bytearray()
        while True:
            want = keygen_pb2.KeygenWant(
                session=session, round=number, sender=sender, offset=len(out)
            )
            piece = self._call("key generation", self.stub.Collect, want)
            if piece.total == 0:
                continue  # not yet
            if piece.total > MAX_MESSAGE or len(out) + len(piece.data) > piece.total:
                raise VerificationError("the relay sent a key generation message out of bounds")
            out += piece.data
            if len(out) == piece.total:
                return bytes(out)
            if not piece.data:
                raise VerificationError("the relay sent an empty chunk")

    def done(
        self, session: bytes, public_key: ThresholdPublicKey, transcript: bytes, signature: bytes
    ) -> KeygenOutcome:
        request = keygen_pb2.KeygenSigned(
            session=session,
            public_key_json=public_key.to_json().decode(),
            transcript=transcript,
            signature=signature,
        )
        while (outcome := _outcome(self._call("key generation", self.stub.Done, request))) is None:
            pass
        return outcome

    def abort(self, session: bytes, reason: str, party: str | None) -> None:
        request = keygen_pb2.KeygenStop(session=session, reason=reason[:500], party=party or "")
        self._call("key generation", self.stub.Abort, request)

    def result(self) -> KeygenOutcome | None:
        return _outcome(self._call("key generation", self.stub.Result, keygen_pb2.KeygenQuery()))


def _outcome(reply: Any) -> KeygenOutcome | None:
    """A Keygen outcome off the wire (None: not yet); the key is parsed and checked here, its
    signatures by the member (:func:`fedlora.ceremony._generate.accept_outcome`)."""
    if not reply.public_key_json:
        return None
    try:
        key = ThresholdPublicKey.from_json(reply.public_key_json.encode())
    except FedLoraError as exc:
        raise VerificationError(f"the relay sent a malformed key: {exc}") from None
    return KeygenOutcome(reply.session, key, reply.transcript, dict(reply.signatures))
