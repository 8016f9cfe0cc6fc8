"""Collecting: contributions stream in until every joined party sent one, or the deadline.

A contribution counts once its file is fsynced and its ``contribution_accepted`` entry is
fsynced, and only then is it acknowledged with a receipt that carries that entry, a checkpoint
and the inclusion proof. Every refusal is audited (once per reason code and round).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from fedlora import events as ev
from fedlora.config import Party
from fedlora.coordinator import _rounds
from fedlora.coordinator._aggregating import aggregate
from fedlora.coordinator._intake import receive_contribution
from fedlora.coordinator._state import Contribution
from fedlora.crypto import sign_digest, verify_signature
from fedlora.errors import FedLoraError, ProtocolError
from fedlora.protocol import (
    ContributionHeader,
    ContributionRules,
    Message,
    Receipt,
    Stage,
    check_contribution_header,
    check_message,
    contribution_statement,
    knowledge_context,
)

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator, Job


class Collecting:
    def __init__(self, engine: Coordinator) -> None:
        self.e = engine

    def tick(self, now_ms: int) -> Job | None:
        """Aggregate once every party that joined (and is not revoked) has contributed, or at the
        deadline with ``participant_threshold`` contributions; fail the round below it."""
        e, r = self.e, self.e.round
        assert r is not None
        revoked = e.admission.reload_revocations()
        expected = {p.id for p in e.config.parties if not p.revoked} & e.joined - revoked
        count, threshold = len(r.contributions), e.fl.participant_threshold
        if count >= threshold and (expected <= set(r.contributions) or now_ms >= r.deadline_ms):
            e.enter(Stage.AGGREGATING)
            number, participants = r.number, tuple(sorted(r.contributions))
            return Stage.AGGREGATING, number, lambda: aggregate(e, number, participants)
        if now_ms >= r.deadline_ms:
            why = f" ({r.collection_note})" if r.collection_note else ""
            _rounds.fail_round(
                e,
                f"{count} contribution{'s' * (count != 1)} at the deadline, below "
                f"participant_threshold {threshold}; nothing was decrypted{why}",
            )
        return None

    def close(self, note: str) -> None:
        """End collection now (a push transport collected all it will get): the next tick
        aggregates or fails the round as at the deadline; ``note`` goes into the reason."""
        e = self.e
        with e.lock:
            r = e.round
            if r is not None and e.stage is Stage.COLLECTING and r.deadline_ms > e.now_ms():
                e.record(ev.CollectionClosed(round=r.number, note=note[:2000]))

    # -- contributions ---------------------------------------------------------------------------
    def reject(self, party: Party, round_number: int, error: FedLoraError) -> FedLoraError:
        """Audit a refused contribution; returns the error to raise."""
        self.e.admission.rejected(
            party.id,
            ev.ContributionRejected(reason=str(error), round=round_number, client=party.id),
        )
        return error

    def _rules(self) -> ContributionRules:
        e, r = self.e, self.e.round
        assert r is not None
        return ContributionRules(
            round_number=r.number,
            global_version=r.global_version,
            global_digest=r.global_digest,
            max_weight=e.config.codec.max_weight,
            value_count=e.num_parameters,
            record_count=e.record_count,
            key_fingerprint=e.fingerprint,
            codec_digest=e.codec.digest(),
        )

    def accept(self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]) -> Receipt:
        """Validate, store durably, audit and sign a receipt for one streamed contribution.

        Raises:
            ProtocolError: wrong stage or round, or a different second contribution.
            VerificationError: malformed, oversized, truncated, out-of-range or wrongly signed.
            RateLimitError: the party's rejection budget is spent, or it is uploading already.
        """
        with self.e.admission.admitted(party, "contribution", self.e.round_number):
            return self._accept(party, header, chunks)

    def _accept(self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]) -> Receipt:
        e = self.e
        with e.lock:
            number = e.round_number
            try:
                check_message(e.stage, Message.CONTRIBUTION, number)
                check_contribution_header(header, self._rules())
            except FedLoraError as exc:
                raise self.reject(party, header.round_number, exc) from None
            existing = e.round.contributions.get(party.id) if e.round else None
        if existing is not None:  # the stored one stands; the rest of the stream is not read
            if hmac.compare_digest(existing.ciphertexts_digest, header.ciphertexts_digest):
                return self._receipt(number, existing, duplicate=True)
            raise self.reject(
                party, number, ProtocolError(f"{party.id} already contributed to round {number}")
            )
        final = e.store.contribution_path(number, party.id)
        temp = e.store.temp_path(final)
        try:
            received = receive_contribution(header, chunks, e.secure_sum, temp)
            try:
                statement = contribution_statement(
                    e.config.federation_id, party.id, header, received.digest
                )
                verify_signature(
                    bytes.fromhex(party.signing_public_key), statement, header.signature
                )
                # The sender must know its plaintexts: a vector mauled from others' cannot be proven.
                e.secure_sum.check_proof(
                    received.records,
                    header.knowledge_proof,
                    knowledge_context(e.config.federation_id, number, party.id, e.fingerprint),
                )
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        except FedLoraError as exc:
            raise self.reject(party, number, exc) from None
        with e.lock:
            try:
                check_message(e.stage, Message.CONTRIBUTION, number)
                if e.round is None or e.round.number != number:
                    raise ProtocolError(
                        f"round {number} closed while the contribution was uploading"
                    )
                if party.id in e.round.contributions:
                    raise ProtocolError(f"{party.id} already contributed to round {number}")
            except FedLoraError as exc:
                temp.unlink(missing_ok=True)
                raise self.reject(party, number, exc) from None
            e.store.commit(temp, final)
            e.record(
                ev.ContributionAccepted(
                    round=number,
                    client=party.id,
                    weight=header.weight,
                    record_count=header.record_count,
                    ciphertexts_digest=received.digest.hex(),
                    contribution_digest=statement.hex(),
                    signature=header.signature.hex(),
                    knowledge_proof=header.knowledge_proof.hex(),
                )
            )
            contribution = e.round.contributions[party.id]
        return self._receipt(number, contribution)

    def _receipt(self, number: int, c: Contribution, *, duplicate: bool = False) -> Receipt:
        """A signed receipt that carries its audit entry, a checkpoint and the inclusion proof."""
        e = self.e
        checkpoint = e.checkpoint()
        _, path = e.audit.inclusion(c.log_index, checkpoint.tree_size)
        unsigned = Receipt(
            federation_id=e.config.federation_id,
            round_number=number,
            client_id=c.client_id,
            contribution_digest=c.contribution_digest,
            log_index=c.log_index,
            received_at_ms=c.received_at_ms,
            signature=b"",
            entry=e.audit.entries(c.log_index, 1)[0],
            inclusion=tuple(path),
            checkpoint=checkpoint,
            duplicate=duplicate,
        )
        return replace(unsigned, signature=sign_digest(e.signing_key, unsigned.digest()))
