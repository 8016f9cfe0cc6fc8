"""How a client talks to its coordinator: the :class:`Transport` protocol.

:class:`fedlora.client.GrpcTransport` is the networked one (mTLS, retries); the in-process
transport in :mod:`fedlora.inprocess` calls a coordinator engine directly (tests, the crypto
demo, the accuracy benchmark); a Flower transport carries the same messages in Flower's records.
A transport retries what is worth retrying and raises only fedlora errors: :class:`RemoteError`
when the coordinator refused, :class:`TransportError` when it could not be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fedlora.audit import SignedCheckpoint
from fedlora.protocol import (
    ContributionHeader,
    DecryptionTask,
    JoinInfo,
    PartialHeader,
    Receipt,
    RoundStatus,
    TicketAck,
)

Progress = Callable[[int], None]  # called with the bytes sent so far


class MemberTransport(Protocol):
    """What every member needs of its coordinator, whichever way the messages travel: pulled
    (gRPC, in-process) or pushed, one message and its reply at a time (Flower)."""

    def join(self, spec_json: str = "") -> JoinInfo:
        """Join; ``spec_json`` is this client's federation spec (canonical JSON)."""
        ...

    def round_status(self) -> RoundStatus: ...

    def download_global(self, version: int, max_bytes: int | None = None) -> tuple[bytes, bytes]:
        """The global adapter's float32 bytes and the digest the coordinator sent with them.

        Raises VerificationError as soon as more than ``max_bytes`` arrive."""
        ...

    def decryption_task(self, round_number: int, *, manifest_only: bool) -> DecryptionTask: ...

    def submit_ticket(self, round_number: int, ticket: bytes, signature: bytes) -> TicketAck: ...

    def submit_partial(self, header: PartialHeader, values: bytes) -> None: ...

    def checkpoint(self) -> SignedCheckpoint: ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    def audit_entries(self, start: int, limit: int) -> list[bytes]:
        """Canonical JSON lines ``start .. start + limit - 1`` of the audit log (unverified)."""
        ...

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]: ...


class Transport(MemberTransport, Protocol):
    """A transport the client drives: it polls, uploads its contribution and closes the line.
    (On Flower the contribution is the train message's reply, so there is no upload.)"""

    def upload_contribution(
        self, header: ContributionHeader, records: bytes, on_progress: Progress | None = None
    ) -> Receipt: ...

    def close(self) -> None: ...
