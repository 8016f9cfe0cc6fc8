"""Contributions: a trained delta becomes a signed contribution (DESIGN.md §4 step 2), and
what the receiving side requires of its header before it reads a single record.

Pure: no transport, no files. The caller trains, calls :func:`build_contribution`, sends the
header and records any way it likes, and checks the answer with
:func:`fedlora.protocol.check_receipt`. The coordinator (or any aggregator) first runs
:func:`check_contribution_header`, then reads the records through the secure sum's checks.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import ObfuscatorSource, sign_digest
from fedlora.errors import ProtocolError, VerificationError
from fedlora.protocol._messages import ContributionHeader
from fedlora.protocol._secure_sum import SecureSum
from fedlora.protocol._statements import contribution_statement, knowledge_context


@dataclass(frozen=True)
class SignedContribution:
    header: ContributionHeader
    records: bytes
    statement: bytes  # the digest the header's signature covers


def build_contribution(
    *,
    federation_id: str,
    client_id: str,
    round_number: int,
    global_version: int,
    global_digest: bytes,
    delta: npt.NDArray[np.float64],
    weight: int,
    secure_sum: SecureSum,
    signing_key: Ed25519PrivateKey,
    obfuscators: ObfuscatorSource | None = None,
) -> SignedContribution:
    """Seal ``delta`` (weighted by ``weight``) and sign it for this round and global model.

    Raises:
        CryptoError: a value that cannot be encoded (NaN, infinity) or a weight out of range.
    """
    sealed = secure_sum.seal(
        delta,
        weight=weight,
        context=knowledge_context(federation_id, round_number, client_id, secure_sum.fingerprint),
        obfuscators=obfuscators,
    )
    unsigned = ContributionHeader(
        round_number=round_number,
        weight=weight,
        value_count=int(np.asarray(delta).size),
        record_count=sealed.count,
        ciphertexts_digest=sealed.digest,
        key_fingerprint=secure_sum.fingerprint,
        codec_digest=secure_sum.codec.digest(),
        signature=b"",
        global_version=global_version,
        global_digest=global_digest,
        knowledge_proof=sealed.proof,
    )
    statement = contribution_statement(federation_id, client_id, unsigned, sealed.digest)
    header = replace(unsigned, signature=sign_digest(signing_key, statement))
    return SignedContribution(header, sealed.records, statement)


@dataclass(frozen=True)
class ContributionRules:
    """What the open round accepts: set by the receiving side from its own state."""

    round_number: int
    global_version: int
    global_digest: bytes
    max_weight: int
    value_count: int
    record_count: int
    key_fingerprint: bytes
    codec_digest: bytes


def check_contribution_header(h: ContributionHeader, rules: ContributionRules) -> None:
    """Refuse a header the open round cannot accept, before any of its records are read.

    Raises:
        ProtocolError: another round; VerificationError: weight, sizes, key, codec or global
            model other than the round's, or malformed digest or signature fields.
    """
    if h.round_number != rules.round_number:
        raise ProtocolError(
            f"contribution is for round {h.round_number}, but round {rules.round_number} is open"
        )
    if not 1 <= h.weight <= rules.max_weight:
        raise VerificationError(f"weight must be in 1..{rules.max_weight}, got {h.weight}")
    if h.value_count != rules.value_count:
        raise VerificationError(f"value_count must be {rules.value_count}, got {h.value_count}")
    if h.record_count != rules.record_count:
        raise VerificationError(f"record_count must be {rules.record_count}, got {h.record_count}")
    if not hmac.compare_digest(h.key_fingerprint, rules.key_fingerprint):
        raise VerificationError(
            "contribution is encrypted under another key (fingerprint mismatch)"
        )
    if not hmac.compare_digest(h.codec_digest, rules.codec_digest):
        raise VerificationError("contribution uses other codec parameters")
    if h.global_version != rules.global_version or not hmac.compare_digest(
        h.global_digest, rules.global_digest
    ):
        raise VerificationError(
            f"contribution was trained from another global model (round {rules.round_number} "
            f"trains from version {rules.global_version})"
        )
    if len(h.ciphertexts_digest) != 32 or len(h.signature) != 64:
        raise VerificationError("ciphertexts_digest must be 32 bytes and signature 64 bytes")
