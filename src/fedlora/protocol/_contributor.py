"""The contributor pipeline: a trained delta becomes a signed contribution (DESIGN.md §4 step 2).

Pure: no transport, no files. The caller trains, calls :func:`build_contribution`, sends the
header and records any way it likes, and checks the answer with
:func:`fedlora.protocol.check_receipt`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import ObfuscatorSource, sign_digest
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
