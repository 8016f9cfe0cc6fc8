"""The signed statements, built from the protocol's messages (one expansion of each).

Contributors sign :func:`contribution_statement`; the coordinator and every share holder
recompute it from the header or manifest entry they hold. A round's decryption ticket and a
partial decryption's statement are built here too, so the three parties cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.crypto import (
    CodecParams,
    contribution_digest,
    partial_statement_digest,
    proof_context,
    ticket_digest,
)
from fedlora.protocol._messages import (
    ContributionHeader,
    DecryptionManifest,
    ManifestEntry,
    PartialHeader,
)


def contribution_statement(
    federation_id: str, client_id: str, header: ContributionHeader, ciphertexts_digest: bytes
) -> bytes:
    """The digest a contributor signs, over the records' digest as the verifier computed it."""
    return contribution_digest(
        federation_id=federation_id,
        round_number=header.round_number,
        client_id=client_id,
        codec_digest=header.codec_digest,
        key_fingerprint=header.key_fingerprint,
        weight=header.weight,
        ciphertexts_digest=ciphertexts_digest,
        value_count=header.value_count,
        global_version=header.global_version,
        global_digest=header.global_digest,
    )


def entry_statement(
    manifest: DecryptionManifest,
    entry: ManifestEntry,
    codec: CodecParams,
    ciphertexts_digest: bytes,
) -> bytes:
    """The contribution statement of one manifest entry, under the codec the holder expects."""
    header = ContributionHeader(
        round_number=manifest.round_number,
        weight=entry.weight,
        value_count=manifest.value_count,
        record_count=entry.record_count,
        ciphertexts_digest=entry.ciphertexts_digest,
        key_fingerprint=manifest.key_fingerprint,
        codec_digest=codec.digest(),
        signature=entry.signature,
        global_version=manifest.global_version,
        global_digest=manifest.global_digest,
    )
    return contribution_statement(
        manifest.federation_id, entry.client_id, header, ciphertexts_digest
    )


def knowledge_context(
    federation_id: str, round_number: int, client_id: str, key_fingerprint: bytes
) -> bytes:
    """The context a contribution's proof of plaintext knowledge is bound to."""
    return proof_context(
        federation_id=federation_id,
        round_number=round_number,
        client_id=client_id,
        key_fingerprint=key_fingerprint,
    )


def round_ticket(
    *,
    federation_id: str,
    round_number: int,
    key_fingerprint: bytes,
    aggregate_digest: bytes,
    global_version: int,
    global_digest: bytes,
    statements: Sequence[tuple[str, bytes]],
) -> bytes:
    """A round's decryption ticket over its aggregate and its (client, statement) pairs."""
    return ticket_digest(
        federation_id=federation_id,
        round_number=round_number,
        key_fingerprint=key_fingerprint,
        aggregate_digest=aggregate_digest,
        global_version=global_version,
        global_digest=global_digest,
        contributions=sorted(statements),
    )


def partial_statement(
    federation_id: str, party_id: str, header: PartialHeader, values_digest: bytes
) -> bytes:
    """What a share holder signs with a chunk of its partial decryption (over the values as
    received)."""
    return partial_statement_digest(
        federation_id=federation_id,
        round_number=header.round_number,
        party_id=party_id,
        ticket=header.ticket_digest,
        first_record=header.first_record,
        ciphertexts_digest=header.ciphertexts_digest,
        values_digest=values_digest,
        challenge=header.challenge,
        response=header.response,
    )
