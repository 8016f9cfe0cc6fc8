"""The share holder's checks and answers (DESIGN.md §4 step 4), and the coordinator's check of
a partial decryption. Pure: the caller fetches the task, keeps the ledger and sends the answer.

A holder signs a round's ticket only after :func:`check_task` recomputed everything from the
records themselves, and :func:`check_ticket_logged` found the ticket in the coordinator's
anchored log; it releases :func:`make_partials` only once :func:`valid_ticket_signatures` counts
a quorum.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.audit import canonical_json, verify_entry_inclusion
from fedlora.crypto import (
    CodecParams,
    DecryptionProof,
    KeyShare,
    ModexpBackend,
    PartialDecryption,
    PlaintextProof,
    ThresholdPublicKey,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    partial_decrypt,
    proof_response_bound,
    sign_digest,
    validate_ciphertexts,
    verify_partial_decryption,
    verify_plaintext_knowledge_batch,
    verify_signature,
)
from fedlora.errors import VerificationError
from fedlora.events import Aggregated, parse_event
from fedlora.protocol._messages import DecryptionManifest, DecryptionTask, PartialHeader
from fedlora.protocol._records import pack_records, unpack_records
from fedlora.protocol._statements import (
    entry_statement,
    knowledge_context,
    partial_statement,
    round_ticket,
)

PROOF_GROUP = 4
"""Contributions whose proofs of plaintext knowledge a holder checks in one batch."""


@dataclass(frozen=True)
class HolderPolicy:
    """What a share holder trusts and requires, from its own files and configuration."""

    federation_id: str
    party_id: str
    key: ThresholdPublicKey
    codec: CodecParams
    peers: Mapping[str, bytes]  # pinned Ed25519 keys of the federation's parties
    min_participants: int
    ticket_quorum: int


@dataclass(frozen=True)
class CheckedAggregate:
    """An aggregate the holder recomputed and verified: the ticket it may sign, its ciphertexts."""

    round_number: int
    ticket: bytes
    ciphertexts: list[int]
    participants: tuple[str, ...]


def assemble_task(
    manifest: DecryptionManifest, parts: Iterable[tuple[str, bytes]]
) -> DecryptionTask:
    """A decryption task from the parts it streams in: ``(client id, bytes)`` of each
    contribution, then ``("", bytes)`` of the aggregate — every transport's one assembler.

    Bounded as it reads: a part for a contributor the manifest does not name, or more bytes than
    the manifest's records can hold (ciphertexts of its key size), stops it; what the bytes are
    is for :func:`check_task`, which also holds the manifest's sizes to the holder's own.

    Raises:
        VerificationError: naming the part that is not the manifest's.
    """
    width = (2 * manifest.codec.key_bits + 7) // 8  # at most the bytes of one ciphertext mod n²
    limit = manifest.record_count * width
    named = {e.client_id for e in manifest.entries}
    contributions: dict[str, bytearray] = {}
    aggregate = bytearray()
    for client_id, data in parts:
        if client_id and client_id not in named:
            raise VerificationError(
                f"the decryption task sends records of {client_id!r}, whom its manifest does not "
                "name"
            )
        buffer = contributions.setdefault(client_id, bytearray()) if client_id else aggregate
        if len(buffer) + len(data) > limit:
            whose = f"the contribution of {client_id!r}" if client_id else "the aggregate"
            raise VerificationError(
                f"the decryption task sends more of {whose} than the manifest's "
                f"{manifest.record_count} records hold"
            )
        buffer.extend(data)
    return DecryptionTask(
        manifest, {k: bytes(v) for k, v in contributions.items()}, bytes(aggregate)
    )


def check_task(
    policy: HolderPolicy,
    task: DecryptionTask,
    round_number: int,
    *,
    trained_from: tuple[int, bytes] | None = None,
    backend: ModexpBackend | None = None,
) -> CheckedAggregate:
    """Check a decryption task in full before its ticket is signed.

    The manifest must be for this federation, this round, this key and codec (and the global
    model this holder trained from, when it contributed); at least ``min_participants`` distinct
    pinned peers; every contribution's signature over the ciphertexts actually sent, with a valid
    proof of plaintext knowledge; the aggregate equal to their product.

    The proofs are checked :data:`PROOF_GROUP` contributions at a time in one batch on
    ``backend`` (``None``: the default), which spreads them over every core; at most that many
    contributions are held unpacked at once.

    Raises:
        VerificationError: naming what is wrong.
    """
    m, key = task.manifest, policy.key
    pk, width = key.paillier, ciphertext_width(key.paillier)
    check_task_round(m, round_number)
    if m.federation_id != policy.federation_id:
        raise VerificationError(
            f"the manifest is for federation {m.federation_id!r}, not {policy.federation_id!r}"
        )
    if not hmac.compare_digest(m.key_fingerprint, key.fingerprint):
        raise VerificationError("the aggregate is under another threshold key")
    if m.codec != policy.codec:
        raise VerificationError("the manifest's codec differs from the federation's")
    if trained_from is not None and trained_from != (m.global_version, bytes(m.global_digest)):
        raise VerificationError(
            f"round {round_number}'s contributions were trained from another global model than "
            "the one this client was served"
        )
    clients = [e.client_id for e in m.entries]
    if len(set(clients)) != len(clients):
        raise VerificationError("the manifest lists a contributor twice")
    if len(clients) < policy.min_participants:
        raise VerificationError(
            f"the aggregate has {len(clients)} contributors; policy.min_participants requires "
            f"{policy.min_participants}"
        )
    if set(task.contributions) != set(clients):
        raise VerificationError("the contributions sent do not match the manifest")
    total: list[int] | None = None
    statements: list[tuple[str, bytes]] = []
    group: list[tuple[str, list[int], PlaintextProof, bytes]] = []

    def check_group() -> None:
        nonlocal total
        claims = [(cts, proof, context) for _, cts, proof, context in group]
        outcome = verify_plaintext_knowledge_batch(pk, claims, backend=backend)
        for (client_id, cts, _, _), failure in zip(group, outcome):
            if failure is not None:  # a vector mauled from other contributions fails here
                raise VerificationError(
                    f"the contribution of {client_id!r} carries no valid proof that its sender "
                    f"knows its plaintexts ({failure})"
                )
            total = cts if total is None else add_ciphertext_vectors(pk, total, cts)
        group.clear()

    for entry in m.entries:
        if entry.client_id not in policy.peers:
            raise VerificationError(
                f"contributor {entry.client_id!r} is not one of this client's pinned peers"
            )
        data = task.contributions[entry.client_id]
        if len(data) != entry.record_count * width or entry.record_count != m.record_count:
            raise VerificationError(f"the contribution of {entry.client_id!r} has the wrong size")
        cts = validate_ciphertexts(pk, unpack_records(data, width))
        statement = entry_statement(m, entry, policy.codec, ciphertext_vector_digest(pk, cts))
        try:
            verify_signature(policy.peers[entry.client_id], statement, entry.signature)
        except VerificationError:
            raise VerificationError(
                f"the contribution of {entry.client_id!r} is not signed by that peer's key "
                "(over these ciphertexts, this round and this global model)"
            ) from None
        try:
            proof = PlaintextProof.from_bytes(pk, entry.knowledge_proof)
        except VerificationError as exc:
            raise VerificationError(
                f"the contribution of {entry.client_id!r} carries no valid proof that its sender "
                f"knows its plaintexts ({exc})"
            ) from None
        context = knowledge_context(
            m.federation_id, m.round_number, entry.client_id, key.fingerprint
        )
        group.append((entry.client_id, cts, proof, context))
        statements.append((entry.client_id, statement))
        if len(group) == PROOF_GROUP:
            check_group()
    if group:
        check_group()
    assert total is not None  # min_participants >= 2
    if len(task.aggregate) % width or unpack_records(task.aggregate, width) != total:
        raise VerificationError("the aggregate is not the product of the listed contributions")
    aggregate_digest = ciphertext_vector_digest(pk, total)
    if not hmac.compare_digest(aggregate_digest, m.aggregate_digest):
        raise VerificationError("the aggregate digest in the manifest is wrong")
    ticket = round_ticket(
        federation_id=policy.federation_id,
        round_number=round_number,
        key_fingerprint=key.fingerprint,
        aggregate_digest=aggregate_digest,
        global_version=m.global_version,
        global_digest=m.global_digest,
        statements=statements,
    )
    return CheckedAggregate(round_number, ticket, total, tuple(sorted(clients)))


def manifest_ticket(policy: HolderPolicy, manifest: DecryptionManifest) -> bytes:
    """Recompute the ticket from a manifest's own fields (for a task already checked in full)."""
    return round_ticket(
        federation_id=policy.federation_id,
        round_number=manifest.round_number,
        key_fingerprint=policy.key.fingerprint,
        aggregate_digest=manifest.aggregate_digest,
        global_version=manifest.global_version,
        global_digest=manifest.global_digest,
        statements=[
            (e.client_id, entry_statement(manifest, e, policy.codec, e.ciphertexts_digest))
            for e in manifest.entries
        ],
    )


def check_round_in_log(round_number: int, tree_size: int) -> None:
    """A round number the anchored log could hold: every round takes at least two entries (opened,
    then closed or failed) after the federation's first two, so a log of ``tree_size`` entries
    holds rounds up to ``tree_size // 2``. A holder that signed a ticket for round 10¹² would
    refuse every honest round after it as "old"; this refuses such a round first.

    Raises:
        VerificationError: ``round_number`` below 1 or ahead of what the log can hold.
    """
    if not 1 <= round_number <= tree_size // 2:
        raise VerificationError(
            f"round {round_number} runs ahead of the coordinator's audit log ({tree_size} entries "
            f"hold at most round {tree_size // 2}): refusing a round the log cannot have opened"
        )


def check_task_round(manifest: DecryptionManifest, round_number: int) -> None:
    """Every check a holder makes of a task's round number, in one place: the manifest is for
    the round asked, and the round is one the anchored log can hold, both in the checkpoint and
    before the round's ``aggregated`` entry (see :func:`check_round_in_log`).

    Raises:
        VerificationError: naming the round and what it contradicts.
    """
    if manifest.round_number != round_number:
        raise VerificationError(
            f"the manifest is for round {manifest.round_number}, but the task is round "
            f"{round_number}"
        )
    check_round_in_log(
        round_number, min(manifest.checkpoint.tree_size, max(0, manifest.aggregated_index))
    )


def check_ticket_logged(
    manifest: DecryptionManifest, round_number: int, ticket: bytes, participants: Sequence[str]
) -> None:
    """The ticket must be in the coordinator's anchored log before a holder signs it.

    The manifest carries the round's ``aggregated`` entry and its inclusion proof in the signed
    checkpoint (which the caller checked against the one it kept): a coordinator that shows two
    holders two tickets for one round must log both, where any auditor sees them.

    Raises:
        VerificationError: no such entry, another round's or ticket's, or not in the log.
    """
    try:
        entry = json.loads(manifest.aggregated_entry)
        event = parse_event(entry) if isinstance(entry, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError, VerificationError):
        raise VerificationError("the manifest carries no audit entry for its ticket") from None
    if (
        not isinstance(event, Aggregated)
        or canonical_json(entry) != manifest.aggregated_entry
        or entry.get("index") != manifest.aggregated_index
        or event.round != round_number
        or event.ticket != ticket.hex()
        or event.aggregate_digest != manifest.aggregate_digest.hex()
        or event.participants != list(participants)
    ):
        raise VerificationError(
            f"the audit entry sent for round {round_number}'s ticket does not record this ticket"
        )
    verify_entry_inclusion(
        manifest.aggregated_entry,
        manifest.aggregated_index,
        list(manifest.aggregated_inclusion),
        manifest.checkpoint,
    )


def decryption_blocked(
    holders: Sequence[str], quorum: int, threshold: int, revoked: Iterable[str]
) -> str | None:
    """Why no round can be decrypted with these share holders revoked, in one line, or None.

    A round's aggregate is released to the holders only with ``quorum`` ticket signatures from
    distinct holders, and decrypted with ``threshold`` partial decryptions; a revoked holder gives
    neither, and only a new key for the remaining holders (a re-key) brings them back.
    """
    gone = sorted(set(holders) & set(revoked))
    left = len(holders) - len(gone)
    need = max(quorum, threshold)
    if left >= need:
        return None
    return (
        f"decryption cannot succeed until the federation re-keys: {len(gone)} of "
        f"{len(holders)} share holders are revoked ({', '.join(gone)}), {left} remain and every "
        f"round needs {need} (ticket quorum {quorum}, threshold {threshold}); see "
        "docs/operations.md#re-keying"
    )


def valid_ticket_signatures(
    policy: HolderPolicy, manifest: DecryptionManifest, ticket: bytes
) -> dict[str, bytes]:
    """The manifest's ticket signatures that verify: distinct share holders, pinned keys."""
    valid: dict[str, bytes] = {}
    for party_id, signature in manifest.ticket_signatures:
        if party_id not in policy.key.party_ids or party_id not in policy.peers:
            continue
        try:
            verify_signature(policy.peers[party_id], ticket, signature)
        except VerificationError:
            continue
        valid[party_id] = signature
    return valid


PARTIAL_CHUNK = 1024
"""Ciphertexts per chunk of a partial decryption. A holder releases its partial decryption chunk
by chunk, each with its own batch proof and signed statement, so the coordinator verifies and
combines chunk ``k`` while the holders compute chunk ``k + 1`` (a pipelined round), and holds
only chunks in memory. Chunk ``k`` is the aggregate's ciphertexts ``k·PARTIAL_CHUNK`` up to the
next multiple or the end."""


def chunk_ranges(count: int, size: int | None = None) -> list[tuple[int, int]]:
    """``(first, stop)`` of each chunk of a vector of ``count`` ciphertexts (chunks of ``size``;
    ``None``: :data:`PARTIAL_CHUNK`)."""
    size = PARTIAL_CHUNK if size is None else size
    return [(first, min(count, first + size)) for first in range(0, count, size)]


def make_partials(
    policy: HolderPolicy,
    share: KeyShare,
    signing_key: Ed25519PrivateKey,
    checked: CheckedAggregate,
    *,
    backend: ModexpBackend | None = None,
    chunk: int | None = None,
    skip: Container[int] = (),
) -> Iterator[tuple[PartialHeader, bytes]]:
    """This holder's proven partial decryption of a checked aggregate, chunk by chunk as each is
    computed, each with its proof and signed statement (the exponentiations by the key share
    run on ``backend``); chunks whose first record is in ``skip`` (delivered already) are
    neither computed nor sent. Every chunk answers the holder's own verified aggregate."""
    key = policy.key
    width = ciphertext_width(key.paillier)
    for first, stop in chunk_ranges(len(checked.ciphertexts), chunk):
        if first in skip:
            continue
        partial = partial_decrypt(key, share, checked.ciphertexts[first:stop], backend=backend)
        unsigned = PartialHeader(
            round_number=checked.round_number,
            ciphertexts_digest=partial.ciphertexts_digest,
            challenge=partial.proof.challenge,
            response=partial.proof.response,
            record_count=len(partial.values),
            ticket_digest=checked.ticket,
            first_record=first,
        )
        statement = partial_statement(
            policy.federation_id,
            policy.party_id,
            unsigned,
            ciphertext_vector_digest(key.paillier, partial.values),
        )
        header = replace(unsigned, statement_signature=sign_digest(signing_key, statement))
        yield header, pack_records(partial.values, width)


def make_partial(
    policy: HolderPolicy,
    share: KeyShare,
    signing_key: Ed25519PrivateKey,
    checked: CheckedAggregate,
    *,
    backend: ModexpBackend | None = None,
) -> tuple[PartialHeader, bytes]:
    """The whole partial decryption as one chunk (tests and tools; holders send
    :func:`make_partials`)."""
    return next(
        make_partials(
            policy,
            share,
            signing_key,
            checked,
            backend=backend,
            chunk=max(1, len(checked.ciphertexts)),
        )
    )


def check_partial_header(
    header: PartialHeader,
    *,
    key: ThresholdPublicKey,
    ticket: bytes,
    chunk_digest: bytes,
    chunk_length: int,
) -> None:
    """The cheap checks of a partial decryption chunk's header, before any of its records are
    read: the caller looked up the chunk that starts at ``header.first_record`` (its digest and
    length) in the aggregate it holds.

    Raises:
        VerificationError: another ticket or other ciphertexts, the wrong length, a proof
            response above the public bound (so no exponentiation is ever spent on it), or a
            malformed statement signature.
    """
    if not hmac.compare_digest(header.ticket_digest, ticket):
        raise VerificationError("partial decryption answers a different ticket")
    if not hmac.compare_digest(header.ciphertexts_digest, chunk_digest):
        raise VerificationError(
            f"partial decryption of the ciphertexts from {header.first_record} answers a "
            "different aggregate"
        )
    if header.record_count != chunk_length:
        raise VerificationError(
            f"partial decryption chunk from {header.first_record} has {header.record_count} "
            f"records, the chunk has {chunk_length}"
        )
    bound = proof_response_bound(key)
    if not 0 <= header.response < bound:
        raise VerificationError(
            f"proof response has {header.response.bit_length()} bits, above the public "
            f"bound of {bound.bit_length() - 1}"
        )
    if len(header.statement_signature) != 64:
        raise VerificationError("statement_signature must be 64 bytes")


def verify_partial(
    *,
    federation_id: str,
    key: ThresholdPublicKey,
    party_id: str,
    signing_public_key: bytes,
    header: PartialHeader,
    values: bytes,
    ciphertexts: Sequence[int],
    chunk_digest: bytes,
    ticket: bytes,
    backend: ModexpBackend | None = None,
) -> PartialDecryption:
    """The coordinator's check of one chunk of a holder's partial decryption: ``ciphertexts``
    are the aggregate's chunk from ``header.first_record``, ``chunk_digest`` their digest
    (bounds before any modexp).

    Raises:
        VerificationError: what :func:`check_partial_header` refuses, the wrong size, a
            statement not signed by the holder, or a failing proof (the party is named).
    """
    check_partial_header(
        header, key=key, ticket=ticket, chunk_digest=chunk_digest, chunk_length=len(ciphertexts)
    )
    width = ciphertext_width(key.paillier)
    expected = len(ciphertexts) * width
    if len(values) != expected:
        raise VerificationError(f"partial decryption has {len(values)} bytes, expected {expected}")
    decrypted = tuple(unpack_records(values, width))
    statement = partial_statement(
        federation_id, party_id, header, ciphertext_vector_digest(key.paillier, decrypted)
    )
    verify_signature(signing_public_key, statement, header.statement_signature)
    partial = PartialDecryption(
        party_id,
        key.index_of(party_id),
        key.fingerprint,
        chunk_digest,
        decrypted,
        DecryptionProof(header.challenge, header.response),
    )
    verify_partial_decryption(
        key, ciphertexts, partial, ciphertexts_digest=chunk_digest, backend=backend
    )
    return partial
