"""Threshold opening: TICKETING → DECRYPTING → COMBINING (DESIGN.md §4).

After aggregating, the coordinator names the round's decryption ticket; share holders fetch the
decryption task (every contribution and the aggregate), check it themselves and sign the ticket;
once ``ticket_quorum`` signed, they release partial decryptions, chunk by chunk, each with its
proof. Each chunk is combined as soon as ``t`` holders answered it (outside the lock), and the
COMBINING job decodes the mean once every chunk is in, then publishes it.

Every change of state goes through the engine's ``record`` (append, then apply); what is kept
here is a cache only: the aggregate's ciphertexts and chunk digests, and the chunks combined.
"""

from __future__ import annotations

import functools
import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from fedlora import events as ev
from fedlora.config import Party
from fedlora.coordinator import _rounds
from fedlora.coordinator._intake import receive_bounded
from fedlora.coordinator._state import RoundState
from fedlora.crypto import (
    DecryptionProof,
    PartialDecryption,
    ThresholdPublicKey,
    ciphertext_vector_digest,
    combine_verified_partials,
    decode,
    verify_signature,
)
from fedlora.errors import AuthorizationError, FedLoraError, ProtocolError, VerificationError
from fedlora.protocol import (
    DecryptionManifest,
    ManifestEntry,
    Message,
    PartialHeader,
    Stage,
    check_message,
    check_partial_header,
    chunk_ranges,
    unpack_records,
    verify_partial,
)

if TYPE_CHECKING:
    from fedlora.coordinator._engine import Coordinator, Job

Chunks = dict[int, tuple[int, bytes]]  # first record -> (stop, digest of its ciphertexts)


class Opening:
    """The ticket quorum, the holders' partial decryptions and their combination."""

    def __init__(self, engine: Coordinator) -> None:
        self.e = engine
        self._aggregate: tuple[int, list[int], Chunks] | None = None  # round, ciphertexts, chunks
        self._combining: set[tuple[int, int]] = set()  # (round, first record) combining now
        # (round, first record) -> the chunk's plaintexts and who decrypted it (a cache of the
        # stored partials' combination: redone after a restart)
        self.combined: dict[tuple[int, int], tuple[list[int], tuple[str, ...]]] = {}

    def reset(self) -> None:
        """A new round opened: forget the last one's aggregate and combinations."""
        self._aggregate = None
        self.combined.clear()

    # -- ticks (under the engine's lock) -----------------------------------------------------------
    def tick(self, now_ms: int) -> Job | None:
        """Reach DECRYPTING on the quorum, COMBINING once every chunk can be combined; fail the
        round at the decryption deadline."""
        e, r = self.e, self.e.round
        assert r is not None and e.key is not None
        self.check_quorum()
        if e.stage is Stage.DECRYPTING and self._chunks_ready(r):
            e.enter(Stage.COMBINING)
            number = r.number
            return Stage.COMBINING, number, lambda: self._combine(number)
        if now_ms >= r.decrypt_deadline_ms:
            what = (
                f"{len(r.ticket_signatures)} ticket signatures, below the quorum {e.quorum}"
                if e.stage is Stage.TICKETING
                else f"{len(self._complete(r))} complete partial decryptions, below the "
                f"threshold {e.key.threshold}"
            )
            _rounds.fail_round(e, f"{what} at the decryption deadline; nothing was decrypted")
        return None

    def check_quorum(self) -> None:
        """TICKETING → DECRYPTING once the quorum signed (also after a restart between the two)."""
        e, r = self.e, self.e.round
        if r is None or e.stage is not Stage.TICKETING or len(r.ticket_signatures) < e.quorum:
            return
        e.enter(
            Stage.DECRYPTING,
            ev.TicketQuorum(
                round=r.number,
                ticket=r.ticket.hex(),
                signers=sorted(r.ticket_signatures),
                quorum=e.quorum,
            ),
        )

    # -- the aggregate, by chunk -----------------------------------------------------------------
    def keep_aggregate(self, number: int, cts: list[int]) -> tuple[int, list[int], Chunks]:
        """Keep a round's aggregate in memory, with the digest of each of its chunks."""
        key = self.e.key
        assert key is not None
        chunks = {
            first: (stop, ciphertext_vector_digest(key.paillier, cts[first:stop]))
            for first, stop in chunk_ranges(len(cts))
        }
        kept = (number, cts, chunks)
        self._aggregate = kept  # one assignment: readers see the old or the new
        return kept

    def _aggregate_of(self, number: int) -> tuple[int, list[int], Chunks]:
        """Round ``number``'s aggregate and its chunks: one snapshot, so a caller never pairs
        one round's ciphertexts with another's digests."""
        kept = self._aggregate
        if kept is None or kept[0] != number:
            data = self.e.store.aggregate_path(number).read_bytes()
            kept = self.keep_aggregate(number, unpack_records(data, self.e.width))
        return kept

    def _chunk(self, number: int, first_record: int) -> tuple[list[int], bytes] | None:
        """The aggregate's chunk that starts at ``first_record`` and its digest (None: none)."""
        _, cts, chunks = self._aggregate_of(number)
        found = chunks.get(first_record)
        return None if found is None else (cts[first_record : found[0]], found[1])

    def _chunks(self, r: RoundState) -> list[tuple[int, int]]:
        return chunk_ranges(self.e.record_count) if r.ticket else []

    def _chunks_ready(self, r: RoundState) -> bool:
        """Every chunk of the aggregate has partial decryptions from ``t`` holders."""
        assert self.e.key is not None
        t = self.e.key.threshold
        return all(
            sum(first in chunks for chunks in r.partials.values()) >= t
            for first, _ in self._chunks(r)
        )

    def _complete(self, r: RoundState) -> set[str]:
        """The holders every chunk of whose partial decryption is accepted (none before the
        round's aggregate exists)."""
        count = len(self._chunks(r))
        return {p for p, chunks in r.partials.items() if count and len(chunks) == count}

    def complete_partials(self) -> set[str]:
        """The holders whose whole partial decryption of the round's aggregate is accepted."""
        with self.e.lock:
            return self._complete(self.e.round) if self.e.round is not None else set()

    # -- tickets -------------------------------------------------------------------------------
    def _holder(self, party: Party) -> ThresholdPublicKey:
        key = self.e.key
        if key is None or party.id not in key.party_ids:
            raise AuthorizationError(f"{party.id} holds no key share")
        return key

    def _open_round(self, message: Message, round_number: int, what: str) -> RoundState:
        """The round being decrypted, when ``message`` for ``round_number`` is accepted now."""
        e = self.e
        number = e.round.number if e.round else 0
        check_message(e.stage, message, number)
        if round_number != number:
            raise ProtocolError(
                f"{what} is for round {round_number}, round {number} is being decrypted"
            )
        assert e.round is not None
        return e.round

    def decryption_task(
        self, party: Party, round_number: int, *, manifest_only: bool = False
    ) -> tuple[DecryptionManifest, Iterator[tuple[str, bytes]]]:
        """The manifest and a stream of (client id or "", bytes) chunks: each contribution, then
        the aggregate."""
        e = self.e
        with e.lock:
            r = self._open_round(Message.DECRYPTION_TASK, round_number, "the decryption task")
            self._holder(party)
            checkpoint = e.checkpoint()
            manifest = DecryptionManifest(
                federation_id=e.config.federation_id,
                round_number=r.number,
                value_count=e.num_parameters,
                codec=e.codec,
                key_fingerprint=e.fingerprint,
                aggregate_digest=r.aggregate_digest,
                record_count=e.record_count,
                global_version=r.global_version,
                global_digest=r.global_digest,
                entries=self.manifest_entries(r.participants),
                ticket_signatures=tuple(sorted(r.ticket_signatures.items())),
                checkpoint=checkpoint,
                aggregated_entry=e.audit.entries(r.aggregated_index, 1)[0],
                aggregated_index=r.aggregated_index,
                aggregated_inclusion=tuple(
                    e.audit.inclusion(r.aggregated_index, checkpoint.tree_size)[1]
                ),
            )
            paths = [(p, e.store.contribution_path(r.number, p)) for p in r.participants]
            aggregate = e.store.aggregate_path(r.number)
        size = e.config.server.chunk_bytes

        def stream() -> Iterator[tuple[str, bytes]]:
            if manifest_only:
                return
            for client_id, path in paths:
                for chunk in e.store.read_chunks(path, size):
                    yield client_id, chunk
            for chunk in e.store.read_chunks(aggregate, size):
                yield "", chunk

        return manifest, stream()

    def manifest_entries(self, participants: Iterable[str]) -> tuple[ManifestEntry, ...]:
        """What a holder needs of each contribution of the open round to check it."""
        r = self.e.round
        assert r is not None
        return tuple(
            ManifestEntry(
                client_id=p,
                weight=r.contributions[p].weight,
                record_count=r.contributions[p].record_count,
                ciphertexts_digest=r.contributions[p].ciphertexts_digest,
                signature=r.contributions[p].signature,
                knowledge_proof=r.contributions[p].knowledge_proof,
            )
            for p in participants
        )

    def accept_ticket(
        self, party: Party, round_number: int, ticket: bytes, signature: bytes
    ) -> tuple[int, int]:
        """Record a share holder's signature on the round's ticket; return (signatures, quorum).

        Raises:
            ProtocolError: wrong stage or round; AuthorizationError: not a share holder;
            VerificationError: another ticket, or a signature that does not verify.
            RateLimitError: the party's rejection budget is spent.
        """
        e = self.e
        e.admission.throttle(party, "ticket", e.round_number)
        with e.lock:
            number = e.round.number if e.round else 0
            check_message(e.stage, Message.TICKET, number)
            self._holder(party)
            try:
                r = self._open_round(Message.TICKET, round_number, "the ticket signature")
                if not hmac.compare_digest(ticket, r.ticket):
                    raise VerificationError(
                        f"{party.id} signed a different ticket than round {number}'s"
                    )
                if party.id in r.ticket_signatures:
                    return len(r.ticket_signatures), e.quorum
                verify_signature(bytes.fromhex(party.signing_public_key), ticket, signature)
            except FedLoraError as exc:
                e.admission.rejected(
                    party.id, ev.TicketRejected(reason=str(exc), round=number, party=party.id)
                )
                raise
            e.record(
                ev.TicketSigned(
                    round=number, party=party.id, ticket=ticket.hex(), signature=signature.hex()
                )
            )
            self.check_quorum()
            return len(r.ticket_signatures), e.quorum

    # -- partial decryptions -----------------------------------------------------------------------
    def accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        """Verify and store one chunk of a holder's partial decryption with its proof.

        Every bound is checked before any exponentiation; the proof check runs outside the lock.

        Raises:
            ProtocolError: wrong stage or round; AuthorizationError: not a share holder;
            VerificationError: wrong vector or ticket, malformed, out of bounds, or a failing
            proof or signature (the party is named); RateLimitError: rejection budget spent,
            or a partial from this party is being examined already.
        """
        with self.e.admission.admitted(party, "partial decryption", self.e.round_number):
            self._accept_partial(party, header, chunks)

    def _accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        e = self.e
        with e.lock:
            r = self._open_round(
                Message.PARTIAL_DECRYPTION, header.round_number, "the partial decryption"
            )
            number, key, first = r.number, self._holder(party), header.first_record
            if first in r.partials.get(party.id, {}):  # accepted already; the resend is not read
                return
            found = self._chunk(number, first)
            ticket = r.ticket
        try:
            if found is None:
                raise VerificationError(
                    f"partial decryption chunk from record {first}: no chunk of the aggregate "
                    f"starts there ({len(chunk_ranges(e.record_count))} chunks, "
                    f"{e.record_count} records)"
                )
            chunk, chunk_digest = found
            check_partial_header(  # the cheap checks, before a byte of the chunk is read
                header, key=key, ticket=ticket, chunk_digest=chunk_digest, chunk_length=len(chunk)
            )
            data = receive_bounded(chunks, len(chunk) * e.width, "partial decryption")
            partial = verify_partial(
                federation_id=e.config.federation_id,
                key=key,
                party_id=party.id,
                signing_public_key=bytes.fromhex(party.signing_public_key),
                header=header,
                values=data,
                ciphertexts=chunk,
                chunk_digest=chunk_digest,
                ticket=ticket,
                backend=e.backend,
            )
        except FedLoraError as exc:
            e.admission.rejected(
                party.id, ev.PartialRejected(reason=str(exc), round=number, party=party.id)
            )
            raise
        with e.lock:
            now = e.round
            if now is None or now.number != number or e.stage is not Stage.DECRYPTING:
                raise ProtocolError(
                    f"round {number} moved on while the partial decryption was uploading"
                )
            if first in now.partials.get(party.id, {}):
                return
            e.store.write_bytes(e.store.partial_path(number, party.id, first), data)
            e.record(
                ev.PartialAccepted(
                    round=number,
                    party=party.id,
                    ticket=ticket.hex(),
                    challenge=format(header.challenge, "x"),
                    response=format(header.response, "x"),
                    statement_signature=header.statement_signature.hex(),
                    first_record=first,
                    ciphertexts_digest=chunk_digest.hex(),
                    values_digest=ciphertext_vector_digest(key.paillier, partial.values).hex(),
                )
            )
            ready = self._take_chunk(now, first)
        if ready is not None:  # t holders answered this chunk: combine it now, outside the lock
            self._combine_chunk(number, first, ready)

    # -- combining -------------------------------------------------------------------------------
    def _not_combining(self, number: int, first: int) -> bool:
        return (number, first) not in self._combining

    def _take_chunk(self, r: RoundState, first: int) -> list[str] | None:
        """The ``t`` holders to combine chunk ``first`` from, once that many answered it and no
        one combines it yet (under the lock); None otherwise."""
        assert self.e.key is not None
        if (r.number, first) in self.combined or (r.number, first) in self._combining:
            return None
        holders = sorted(p for p, chunks in r.partials.items() if first in chunks)
        if len(holders) < self.e.key.threshold:
            return None
        self._combining.add((r.number, first))
        return holders[: self.e.key.threshold]

    def _combine_chunk(self, number: int, first: int, holders: list[str]) -> None:
        """Combine one chunk from ``holders``' verified partials (the caller marked it as being
        combined); any failure leaves it to the COMBINING job, which tries again and fails the
        round if it fails there. Never raises: the holder whose chunk completed it must not see
        another's fault."""
        e, key = self.e, self.e.key
        assert key is not None
        plaintexts = None
        try:
            plaintexts = self._try_combine(number, first, holders)
        finally:
            with e.changed:
                self._combining.discard((number, first))
                r = e.round
                if plaintexts is not None and r is not None and r.number == number:
                    self.combined.setdefault((number, first), (plaintexts, tuple(holders)))
                e.changed.notify_all()

    def _combine_another_way(
        self, number: int, first: int, holders: list[str]
    ) -> tuple[list[int], tuple[str, ...]]:
        """A chunk whose first ``t`` verified partials do not combine: try the other t-subsets of
        the holders that answered it. Each partial passed its proof, but without safe primes a
        proof cannot see a deviation by an element of small order (docs/cryptography.md); such a
        partial never yields a wrong value — only a combination that fails — so the holder in
        every failing subset and in no working one is named (``partial_rejected``), and the round
        goes on with a subset that combines, or fails naming it.

        Raises:
            VerificationError: no t-subset combines (``party``: the holder to blame, if one).
        """
        e, key = self.e, self.e.key
        assert key is not None
        failing: list[set[str]] = []
        for subset in itertools.combinations(holders, key.threshold):
            plaintexts = self._try_combine(number, first, list(subset))
            if plaintexts is None:
                failing.append(set(subset))
                continue
            blamed = set.intersection(*failing) - set(subset) if failing else set()
            for pid in sorted(blamed):
                e.record(
                    ev.PartialRejected(
                        reason=f"its partial decryption of the chunk from record {first} does "
                        "not combine with the others' (it passed its proof: a deviation the "
                        "proof cannot see without safe primes)",
                        round=number,
                        party=pid,
                    )
                )
            return plaintexts, subset
        common = set.intersection(*failing) if failing else set()
        who = sorted(common)[0] if len(common) == 1 else None
        raise VerificationError(
            f"the partial decryptions of the chunk from record {first} do not combine"
            + (f" ({who}'s is in every failing set)" if who else ""),
            party=who,
        )

    def _try_combine(self, number: int, first: int, holders: list[str]) -> list[int] | None:
        """One chunk from ``holders``' verified partials, or None if they do not combine."""
        e, key = self.e, self.e.key
        assert key is not None
        try:
            found = self._chunk(number, first)
            assert found is not None
            partials = [
                PartialDecryption(
                    pid,
                    key.index_of(pid),
                    key.fingerprint,
                    b"",
                    tuple(
                        unpack_records(
                            e.store.partial_path(number, pid, first).read_bytes(), e.width
                        )
                    ),
                    DecryptionProof(0, 0),  # verified when accepted
                )
                for pid in holders
            ]
            return combine_verified_partials(key, len(found[0]), partials, backend=e.backend)
        except Exception:
            return None

    def _combine(self, number: int) -> Callable[[], None]:
        """The COMBINING job: combine the chunks not combined yet (after a restart, or while one
        was in flight) and decode the mean (outside the lock); returns the publication."""
        e = self.e
        r, key = e.round, e.key
        assert r is not None and key is not None
        plaintexts: list[int] = []
        decryptors: set[str] = set()
        for first, _ in self._chunks(r):
            with e.changed:  # a chunk still being combined by the upload that completed it
                e.changed.wait_for(functools.partial(self._not_combining, number, first))
                done = self.combined.get((number, first))
                holders = sorted(p for p, chunks in r.partials.items() if first in chunks)
                if done is None:
                    self._combining.add((number, first))
            if done is None:
                self._combine_chunk(number, first, holders[: key.threshold])
                with e.lock:
                    done = self.combined.get((number, first))
                if done is None:
                    done = self._combine_another_way(number, first, holders)
            plaintexts.extend(done[0])
            decryptors.update(done[1])
        mean = decode(plaintexts, e.codec, length=e.num_parameters, total_weight=r.total_weight)
        names = sorted(decryptors)

        def publish() -> None:
            e.record(ev.Decrypted(round=number, decryptors=names))
            _rounds.publish(e, mean, r.participants, decryptors=names)

        return publish
