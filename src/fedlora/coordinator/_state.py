"""The coordinator's in-memory state of the open round (rebuilt from the audit log on restart)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedlora.crypto import DecryptionProof


@dataclass(frozen=True)
class Contribution:
    """An accepted contribution, as its ``contribution_accepted`` entry records it."""

    client_id: str
    weight: int
    record_count: int
    ciphertexts_digest: bytes
    contribution_digest: bytes
    signature: bytes
    log_index: int
    received_at_ms: int
    knowledge_proof: bytes = b""


@dataclass
class RoundState:
    number: int
    global_version: int
    deadline_ms: int
    opened_ms: int
    global_digest: bytes = b""
    contributions: dict[str, Contribution] = field(default_factory=dict)
    participants: tuple[str, ...] = ()
    aggregate_digest: bytes = b""
    ticket: bytes = b""
    aggregated_index: int = -1  # audit index of the `aggregated` entry that names the ticket
    total_weight: int = 0
    decrypt_deadline_ms: int = 0
    ticket_signatures: dict[str, bytes] = field(default_factory=dict)
    # party -> first record of each chunk of its partial decryption accepted -> its proof
    partials: dict[str, dict[int, DecryptionProof]] = field(default_factory=dict)
    # first record -> the chunk's plaintexts and who decrypted it (in memory: redone on restart)
    combined: dict[int, tuple[list[int], tuple[str, ...]]] = field(default_factory=dict)
