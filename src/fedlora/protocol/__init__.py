"""fedlora.protocol — the protocol both roles speak, pure and transport-free.

Typed messages, the one record (un)packing, the signed statements, the round's stage table, the
secure-sum strategies and aggregation rules, the contributor pipeline ("delta → signed
contribution") and the share holder's checks ("task → partial decryption or refusal"). The
coordinator, the client and every transport (gRPC, in-process, Flower) build on these names; no
protobuf, sockets, files or torch here.
"""

from __future__ import annotations

from fedlora.audit import Receipt
from fedlora.protocol._contributor import (
    ContributionRules,
    SignedContribution,
    build_contribution,
    check_contribution_header,
)
from fedlora.protocol._decryptor import (
    PARTIAL_CHUNK,
    CheckedAggregate,
    HolderPolicy,
    assemble_task,
    check_partial_header,
    check_round_in_log,
    check_task,
    check_task_round,
    check_ticket_logged,
    chunk_ranges,
    decryption_blocked,
    make_partial,
    make_partials,
    manifest_ticket,
    valid_ticket_signatures,
    verify_partial,
)
from fedlora.protocol._joining import (
    Joined,
    JoinExpectations,
    check_announced,
    check_join,
    check_key_safety,
)
from fedlora.protocol._messages import (
    PLAINTEXT_FINGERPRINT,
    ContributionHeader,
    DecryptionManifest,
    DecryptionTask,
    JoinInfo,
    ManifestEntry,
    PartialHeader,
    RoundStatus,
    TicketAck,
)
from fedlora.protocol._receipts import check_receipt
from fedlora.protocol._records import RecordSplitter, pack_records, unpack_records
from fedlora.protocol._rules import AggregationRule, FedAvg, LinearRule
from fedlora.protocol._secure_sum import (
    PaillierSum,
    PlaintextSum,
    Sealed,
    SecureSum,
    secure_sum_for,
)
from fedlora.protocol._spec import (
    FLOWER_LAYOUT,
    SPEC_FILE,
    canonical_spec,
    check_spec,
    parse_spec,
    spec_differences,
    spec_digest,
)
from fedlora.protocol._stages import (
    ALLOWED,
    TRANSITIONS,
    Message,
    Stage,
    check_message,
    check_transition,
)
from fedlora.protocol._statements import (
    contribution_statement,
    entry_statement,
    knowledge_context,
    partial_statement,
    round_ticket,
)

__all__ = [
    "ALLOWED",
    "FLOWER_LAYOUT",
    "PARTIAL_CHUNK",
    "PLAINTEXT_FINGERPRINT",
    "SPEC_FILE",
    "TRANSITIONS",
    "AggregationRule",
    "CheckedAggregate",
    "ContributionHeader",
    "ContributionRules",
    "DecryptionManifest",
    "DecryptionTask",
    "FedAvg",
    "HolderPolicy",
    "JoinExpectations",
    "JoinInfo",
    "Joined",
    "LinearRule",
    "ManifestEntry",
    "Message",
    "PaillierSum",
    "PartialHeader",
    "PlaintextSum",
    "Receipt",
    "RecordSplitter",
    "RoundStatus",
    "Sealed",
    "SecureSum",
    "SignedContribution",
    "Stage",
    "TicketAck",
    "assemble_task",
    "build_contribution",
    "canonical_spec",
    "check_announced",
    "check_contribution_header",
    "check_join",
    "check_key_safety",
    "check_message",
    "check_partial_header",
    "check_receipt",
    "check_round_in_log",
    "check_spec",
    "check_task",
    "check_task_round",
    "check_ticket_logged",
    "check_transition",
    "chunk_ranges",
    "contribution_statement",
    "decryption_blocked",
    "entry_statement",
    "knowledge_context",
    "make_partial",
    "make_partials",
    "manifest_ticket",
    "pack_records",
    "parse_spec",
    "partial_statement",
    "round_ticket",
    "secure_sum_for",
    "spec_differences",
    "spec_digest",
    "unpack_records",
    "valid_ticket_signatures",
    "verify_partial",
]
