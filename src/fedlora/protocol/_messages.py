"""The protocol's messages, typed: what client and coordinator say to each other.

Both roles and every transport speak these (the gRPC adapters translate them to and from
protobuf; the in-process transport passes them as they are). Bytes are raw, integers are Python
ints; nothing here knows a wire format.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.audit import SignedCheckpoint
from fedlora.crypto import CodecParams
from fedlora.protocol._stages import Stage

PLAINTEXT_FINGERPRINT = b"\x00" * 32  # the key fingerprint a plaintext-mode contribution names


@dataclass(frozen=True)
class JoinInfo:
    """The coordinator's answer to Join: the federation's parameters as it runs them."""

    federation_id: str
    role: str
    key_fingerprint: bytes
    codec: CodecParams
    encryption_type: str  # "homomorphic", or "none" (the plaintext baseline)
    aggregation_frequency: int
    participant_threshold: int
    decryption_threshold: int
    rounds: int
    num_parameters: int
    coordinator_signing_key: bytes
    chunk_bytes: int
    max_weight: int
    ticket_quorum: int
    min_clients: int  # contributions a round waits for before it closes
    partial_chunk: int  # ciphertexts per partial decryption chunk (protocol.partial_chunk)
    spec_json: str = ""  # the federation spec (canonical JSON) every client must match; "": none

    @property
    def homomorphic(self) -> bool:
        return self.encryption_type == "homomorphic"


@dataclass(frozen=True)
class RoundStatus:
    """The open round as one party sees it."""

    round: int
    stage: Stage
    global_version: int
    global_digest: bytes
    deadline_unix_s: float
    contributions: int
    contributed: bool
    partial_submitted: bool
    rounds_total: int
    decryptor: bool
    ticket_signed: bool
    ticket_signatures: int
    contributors: tuple[str, ...] = ()  # who has contributed to this round (also in the audit log)
    joined: tuple[str, ...] = ()  # enrolled parties that have joined the federation so far
    min_clients: int = 0  # parties that must join before round 1 opens
    warning: str = ""  # one line when no round can succeed as things stand (revoked holders)


@dataclass(frozen=True)
class ContributionHeader:
    """What precedes a contribution's records: the signed statement's fields and the proof."""

    round_number: int
    weight: int
    value_count: int
    record_count: int
    ciphertexts_digest: bytes
    key_fingerprint: bytes
    codec_digest: bytes
    signature: bytes
    global_version: int = 0
    global_digest: bytes = b""
    knowledge_proof: bytes = b""


@dataclass(frozen=True)
class ManifestEntry:
    """One contribution of the aggregate, as a share holder needs it to re-check the signature."""

    client_id: str
    weight: int
    record_count: int
    ciphertexts_digest: bytes
    signature: bytes
    knowledge_proof: bytes = b""


@dataclass(frozen=True)
class DecryptionManifest:
    """What a share holder needs to check a round's aggregate and sign its ticket."""

    federation_id: str
    round_number: int
    value_count: int
    codec: CodecParams
    key_fingerprint: bytes
    aggregate_digest: bytes
    record_count: int
    global_version: int
    global_digest: bytes
    entries: tuple[ManifestEntry, ...]
    ticket_signatures: tuple[tuple[str, bytes], ...]
    checkpoint: SignedCheckpoint
    aggregated_entry: bytes = b""
    aggregated_index: int = 0
    aggregated_inclusion: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class DecryptionTask:
    """A manifest with the records it names: each contribution's, then the aggregate's."""

    manifest: DecryptionManifest
    contributions: dict[str, bytes]
    aggregate: bytes


@dataclass(frozen=True)
class TicketAck:
    signatures: int
    quorum: int


@dataclass(frozen=True)
class PartialHeader:
    """What precedes one chunk of a partial decryption's records: which of the aggregate's
    ciphertexts it answers (``record_count`` of them from ``first_record``, and their digest),
    its batch proof and the signed statement."""

    round_number: int
    ciphertexts_digest: bytes
    challenge: int
    response: int
    record_count: int
    ticket_digest: bytes = b""
    statement_signature: bytes = b""
    first_record: int = 0
