"""A member's share-holder role: check an aggregate, sign its ticket, release a proven partial.

A holder releases a partial decryption only for an aggregate it has checked itself (DESIGN.md §4
step 4): the task's round against the anchored log, :func:`fedlora.protocol.check_task`, the
ticket in the log, the ticket recorded durably before it is signed, and a quorum of holders'
signatures on the same ticket before the partial goes out. Every refusal is written to the
member's ledger before it is raised.
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
from pathlib import Path

from fedlora._files import replace_file
from fedlora.client._ledger import AnchorError
from fedlora.client._member import Federation, Member
from fedlora.crypto import (
    KeyShare,
    ciphertext_vector_digest,
    ciphertext_width,
    pack_records,
    sign_digest,
)
from fedlora.errors import (
    CryptoError,
    FedLoraError,
    ProtocolError,
    RemoteError,
    TransportError,
    VerificationError,
)
from fedlora.protocol import (
    CheckedAggregate,
    HolderPolicy,
    PartialHeader,
    check_task,
    check_task_round,
    check_ticket_logged,
    make_partials,
    manifest_ticket,
    unpack_records,
    valid_ticket_signatures,
)


class Holder:
    """A share holder's part of decrypting each round (see the module docstring)."""

    def __init__(self, member: Member, fed: Federation, *, keep_on_disk: bool = False) -> None:
        """``keep_on_disk``: keep an aggregate verified in full on disk while the quorum is
        gathered, for a member that lasts one message (the Flower mod), so its next message
        needs only the manifest."""
        if fed.policy is None or member.share is None:
            raise ValueError("a holder needs a key share and the federation's holder policy")
        self.member, self.policy = member, fed.policy
        self.share: KeyShare = member.share
        self.keep_on_disk = keep_on_disk
        # The aggregates verified in full, so waiting for the ticket quorum re-reads only the
        # manifest; and the chunks of each round's partial delivered (not redone after a
        # lost connection).
        self._verified: dict[int, CheckedAggregate] = {}
        self._delivered: dict[int, set[int]] = {}

    def _checked_path(self, round_number: int) -> Path:
        return self.member.state_dir / "checked-aggregates" / f"round-{round_number:05d}.json"

    def _checked(self, round_number: int) -> CheckedAggregate | None:
        """The aggregate verified in full for a round (in memory, or on disk where kept there;
        a file that does not hold what it claims is ignored: the full task is asked for)."""
        found = self._verified.get(round_number)
        if found is not None or not self.keep_on_disk:
            return found
        paillier = self.policy.key.paillier
        try:
            doc = json.loads(self._checked_path(round_number).read_text())
            checked = CheckedAggregate(
                round_number,
                bytes.fromhex(doc["ticket"]),
                unpack_records(bytes.fromhex(doc["aggregate"]), ciphertext_width(paillier)),
                tuple(doc["participants"]),
            )
            digest = bytes.fromhex(str(doc["digest"]))
        except (OSError, ValueError, KeyError, TypeError, FedLoraError):
            return None
        if not hmac.compare_digest(ciphertext_vector_digest(paillier, checked.ciphertexts), digest):
            return None
        return checked

    def _keep(self, checked: CheckedAggregate) -> None:
        self._verified[checked.round_number] = checked
        if self.keep_on_disk:
            paillier = self.policy.key.paillier
            doc = {
                "ticket": checked.ticket.hex(),
                "aggregate": pack_records(checked.ciphertexts, ciphertext_width(paillier)).hex(),
                "digest": ciphertext_vector_digest(paillier, checked.ciphertexts).hex(),
                "participants": list(checked.participants),
            }
            path = self._checked_path(checked.round_number)
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(path, json.dumps(doc).encode())

    def _done(self, round_number: int) -> None:
        self._verified.pop(round_number, None)
        self._checked_path(round_number).unlink(missing_ok=True)

    def decrypt(self, round_number: int) -> bool:
        """Do this share holder's part of decrypting ``round_number``; True once it is done.

        Verifies the task in full (once per round), records and signs the round's ticket, and
        releases a proven partial decryption only when ``ticket_quorum`` distinct holders signed
        the same ticket. Returns False while the quorum is still being gathered. A refusal is
        written to the member's ledger before it is raised.

        Raises:
            VerificationError, CryptoError: the task fails a check, or the ledger refuses it.
        """
        try:
            return self._decrypt(round_number)
        except (VerificationError, CryptoError) as exc:
            if not isinstance(exc, AnchorError):  # already recorded where it was found
                self.member.ledger.record_refusal(round_number, "decryption", str(exc))
            raise

    def _decrypt(self, round_number: int) -> bool:
        m, policy = self.member, self.policy
        started = time.monotonic()
        cached = self._checked(round_number)
        task = m.transport.decryption_task(round_number, manifest_only=cached is not None)
        manifest = task.manifest
        m.observe_checkpoint(manifest.checkpoint, round_number)
        check_task_round(manifest, round_number)
        if cached is None:
            checked = check_task(
                policy,
                task,
                round_number,
                trained_from=m.trained_from.get(round_number),
                backend=m.backend,
            )
            m.ledger.check_ticket(round_number, checked.ticket)
        else:
            checked = cached
            if manifest_ticket(policy, manifest) != checked.ticket:
                raise VerificationError(
                    f"the coordinator changed round {round_number}'s ticket while it was being signed"
                )
        ticket = checked.ticket
        check_ticket_logged(manifest, round_number, ticket, checked.participants)
        m.ledger.record_ticket(
            round_number, ticket, manifest.aggregate_digest, list(checked.participants)
        )
        signers = valid_ticket_signatures(policy, manifest, ticket)
        if m.id not in signers:  # the coordinator records every holder's signature
            own = sign_digest(m.signing_key, ticket)
            ack = m.transport.submit_ticket(round_number, ticket, own)
            signers[m.id] = own
            m.ui.info(
                f"{m.id} round {round_number}: verified {len(manifest.entries)} signed "
                f"contributions and the aggregate, signed the decryption ticket ({ack.signatures} of "
                f"{ack.quorum} signatures)"
            )
        if len(signers) < policy.ticket_quorum:
            self._keep(checked)
            return False
        m.ledger.record_release(round_number, ticket)
        try:
            chunks = self._release(policy, checked)
        except (RemoteError, TransportError) as exc:
            if isinstance(exc, RemoteError) and exc.reason is ProtocolError:
                self._done(round_number)
                m.ui.info(  # enough partials arrived first, or the round ended: normal
                    f"{m.id} round {round_number}: the round moved on before this "
                    f"partial decryption arrived ({exc})"
                )
                return True
            if isinstance(exc, TransportError):  # the next status poll sends the rest
                m.ui.error(
                    f"{m.id} round {round_number}: partial decryption not delivered "
                    f"({exc}); the chunks the coordinator lacks go again at the next step"
                )
                self._keep(checked)
                return False
            m.ui.error(f"{m.id} round {round_number}: partial decryption refused: {exc}")
            self._done(round_number)
            return True
        self._done(round_number)
        m.ui.info(
            f"{m.id} round {round_number}: {len(signers)} holders signed the ticket; released a "
            f"proven partial decryption in {chunks} chunks ({time.monotonic() - started:.1f}s)"
        )
        return True

    def _release(self, policy: HolderPolicy, checked: CheckedAggregate) -> int:
        """Send the proven partial decryption chunk by chunk: each chunk uploads (and the
        coordinator checks and combines it) while this holder computes the next. Returns the
        number of chunks sent.

        Raises:
            RemoteError, TransportError: the first upload that failed (no chunk after it is sent).
        """
        m = self.member
        outbox: queue.Queue[tuple[PartialHeader, bytes] | None] = queue.Queue(maxsize=2)
        failed: list[BaseException] = []
        # Chunks delivered in an earlier try of this round (a lost connection) are not redone.
        delivered = self._delivered.setdefault(checked.round_number, set())

        def upload() -> None:
            while (item := outbox.get()) is not None:
                if not failed:
                    try:
                        m.transport.submit_partial(*item)
                        delivered.add(item[0].first_record)
                    except BaseException as exc:  # raised on the caller's thread below
                        failed.append(exc)

        uploader = threading.Thread(target=upload, name="fedlora-partial-upload", daemon=True)
        uploader.start()
        sent = 0
        try:
            for item in make_partials(
                policy, self.share, m.signing_key, checked, backend=m.backend, skip=delivered
            ):
                if failed:
                    break
                outbox.put(item)
                sent += 1
        finally:
            outbox.put(None)
            uploader.join()
        if failed:
            raise failed[0]
        return sent
