"""Aggregating: the coordinator's own work once the participants are fixed.

The stored contributions are added one at a time (memory: the sum plus one contribution),
outside the engine's lock. Encrypted, the sum is stored and the round's decryption ticket named
(``aggregated``: TICKETING); in plaintext, the weighted mean is published at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedlora import events as ev
from fedlora.coordinator import _rounds
from fedlora.crypto import ciphertext_vector_digest
from fedlora.protocol import Stage, round_ticket, unpack_records

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator


def aggregate(e: Coordinator, number: int, participants: tuple[str, ...]) -> Callable[[], None]:
    """The AGGREGATING job (outside the lock); returns what to apply under it."""
    r = e.round
    assert r is not None
    contributions = {p: r.contributions[p] for p in participants}
    total_weight = sum(c.weight for c in contributions.values())
    total: bytes | None = None
    for p in participants:
        records = e.store.contribution_path(number, p).read_bytes()
        total = e.secure_sum.add(total, records, contributions[p].weight)
    assert total is not None
    digests = [contributions[p].ciphertexts_digest.hex() for p in participants]

    def aggregated(aggregate_digest: bytes = b"", ticket: bytes = b"", deadline: int = 0):  # type: ignore[no-untyped-def]
        return ev.Aggregated(
            round=number,
            participants=list(participants),
            total_weight=total_weight,
            contribution_digests=digests,
            aggregate_digest=aggregate_digest.hex(),
            ticket=ticket.hex(),
            ticket_quorum=e.quorum,
            decrypt_deadline_ms=deadline,
            encryption=e.fl.encryption_type,
        )

    if not e.secure_sum.needs_decryption:
        mean = e.secure_sum.mean(total, total_weight)

        def publish() -> None:
            e.record(aggregated())
            _rounds.publish(e, mean, participants, decryptors=[])

        return publish
    assert e.key is not None
    e.store.write_bytes(e.store.aggregate_path(number), total)
    ciphertexts = unpack_records(total, e.width)
    aggregate_digest = ciphertext_vector_digest(e.key.paillier, ciphertexts)
    ticket = round_ticket(
        federation_id=e.config.federation_id,
        round_number=number,
        key_fingerprint=e.fingerprint,
        aggregate_digest=aggregate_digest,
        global_version=r.global_version,
        global_digest=r.global_digest,
        statements=[(p, contributions[p].contribution_digest) for p in participants],
    )

    def ticketing() -> None:
        deadline = e.now_ms() + int(e.fl.decryption_timeout_s * 1000)
        e.enter(Stage.TICKETING, aggregated(aggregate_digest, ticket, deadline))
        e.opening.keep_aggregate(number, ciphertexts)

    return ticketing
