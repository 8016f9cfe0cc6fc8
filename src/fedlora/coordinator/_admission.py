"""Who may submit what, now: identities, the rejection budget, one submission per kind at a time.

Every refusal is audited once per round (identical ones are counted and flushed as
``rejections_repeated`` when the round ends), so a hostile client can neither grow the log nor
make the coordinator examine a flood of bad submissions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from fedlora import events as ev
from fedlora.config import CoordinatorConfig, Party
from fedlora.coordinator._limits import RejectionLimiter
from fedlora.errors import AuthenticationError, AuthorizationError, RateLimitError
from fedlora.protocol import decryption_blocked
from fedlora.revocation import RevocationList, RevocationWatcher

log = logging.getLogger("fedlora.coordinator")
MAX_REASON = 400  # characters of a rejection's reason written to the log

Rejection = (
    ev.AccessDenied
    | ev.SubmissionThrottled
    | ev.ContributionRejected
    | ev.TicketRejected
    | ev.PartialRejected
    | ev.JoinRefused
)


class Admission:
    def __init__(
        self,
        config: CoordinatorConfig,
        record: Callable[[ev.Event], object],
        clock: Callable[[], float],
        lock: threading.RLock,
    ) -> None:
        self.config = config
        self._record = record  # appends an event to the audit log (and applies it)
        self.limits = RejectionLimiter(clock)
        self._lock = lock
        self._in_flight: set[tuple[str, str]] = set()  # (identity, kind) being examined now
        tls = config.server.tls
        self.revocations = RevocationWatcher(
            config.server.revocations, tls.ca if tls else None, config.federation_id
        )
        self._revoked: frozenset[str] = frozenset()
        self._serial = 0  # of the newest list the log records
        self._holders: tuple[str, ...] = ()
        self._quorum = self._threshold = 0
        self.blocked: str | None = None  # why no round can be decrypted, when revocations say so
        self._loaded: frozenset[str] = frozenset()
        self.last_seen: dict[str, float] = {}  # party -> time.monotonic() of its last call

    def start(
        self,
        recorded: RevocationList | None,
        holders: tuple[str, ...] = (),
        quorum: int = 0,
        threshold: int = 0,
    ) -> None:
        """Load the revocation list at start-up, no older than what the log ``recorded``.

        Raises:
            ConfigError: the configured list is missing or older than the recorded one (see
                :meth:`RevocationWatcher.start`); nothing is written then.
        """
        self._holders, self._quorum, self._threshold = holders, quorum, threshold
        self._serial = recorded.serial if recorded else 0
        self._revoked = recorded.revoked if recorded else frozenset()
        self._loaded = self.revocations.start(recorded)

    def announce(self) -> None:
        """Audit what :meth:`start` loaded beyond the log, once the log may be written."""
        self._update(self._loaded, None)

    @property
    def revoked(self) -> frozenset[str]:
        """Parties the CA's revocation list names (as last loaded)."""
        with self._lock:
            return self._revoked

    def reload_revocations(self) -> frozenset[str]:
        """Reload the CA-signed revocation list if its file changed; audit new revocations."""
        return self._update(*self.revocations.poll())

    def _update(self, revoked: frozenset[str], error: str | None) -> frozenset[str]:
        current = self.revocations.current
        with self._lock:
            fresh = revoked - self._revoked
            self._revoked = revoked
            newer = current is not None and current.serial > self._serial
            if newer:
                assert current is not None
                self._serial = current.serial
        if error is not None:
            log.error(error)
        if newer:
            assert current is not None
            self._record(
                ev.RevocationsLoaded(
                    serial=current.serial,
                    revoked=sorted(current.revoked),
                    issued_at=current.issued_at,
                )
            )
            log.warning(
                "revocation list serial %d loaded: %s revoked",
                current.serial,
                ", ".join(sorted(current.revoked)) or "nobody",
            )
        for pid in sorted(fresh):
            self._record(ev.PartyRevoked(party=pid, serial=current.serial if current else 0))
        if fresh or self.blocked is None:
            static = {p.id for p in self.config.parties if p.revoked}
            blocked = decryption_blocked(
                self._holders, self._quorum, self._threshold, revoked | static
            )
            if blocked and blocked != self.blocked:
                log.error(blocked)
            self.blocked = blocked
        return revoked

    def authenticate(self, identity: str | None, method: str) -> Party:
        """Map a certificate identity to an enrolled party, auditing every refusal.

        Raises:
            AuthenticationError: no identity at all.
            AuthorizationError: unknown or revoked identity.
        """
        if not identity:
            self.refused(
                "", ev.AccessDenied(reason="no client identity", identity="", method=method)
            )
            raise AuthenticationError(
                "no client identity: present a certificate issued by the federation CA"
            )
        party = self.config.party(identity)
        if party is not None:
            self.last_seen[party.id] = time.monotonic()
        revoked = self.reload_revocations()
        if party is not None and party.id in revoked:
            party = replace(party, revoked=True)
        if party is None or party.revoked:
            reason = "revoked" if party else "not enrolled"
            self.refused(
                identity[:64],
                ev.AccessDenied(reason=reason, identity=identity[:64], method=method),
            )
            raise AuthorizationError(
                f"identity {identity[:64]!r} is {reason} in federation {self.config.federation_id!r}"
            )
        return party

    def refused(self, who: str, event: Rejection) -> None:
        """Write the first of identical rejections in a round; count the rest."""
        with self._lock:
            if self.limits.first(event.kind, who, event.reason):
                if len(event.reason) > MAX_REASON:  # it may quote what the sender sent
                    event = replace(event, reason=event.reason[: MAX_REASON - 1] + "…")
                self._record(event)

    def rejected(self, who: str, event: Rejection) -> None:
        """A submission was examined and refused: it costs the identity budget, and is audited."""
        with self._lock:
            self.limits.rejected(who)
        self.refused(who, event)

    def throttle(
        self, party: Party, what: str, round_number: int, *, exclusive: bool = False
    ) -> None:
        """Refuse, before any work, a submission from an identity with too many rejections
        (or, with ``exclusive``, one while another of the same kind is being examined).

        Raises:
            RateLimitError: the identity's rejection budget is spent, or it is already busy.
        """
        with self._lock:
            allowed = self.limits.allowed(party.id)
            busy = exclusive and (party.id, what) in self._in_flight
            if allowed and exclusive and not busy:
                self._in_flight.add((party.id, what))
        if not allowed or busy:
            reason = (
                f"another {what} from this identity is being examined; refused"
                if allowed
                else "too many rejected submissions; refused without examination"
            )
            self.refused(
                party.id,
                ev.SubmissionThrottled(
                    reason=reason, round=round_number, party=party.id, kind_of=what
                ),
            )
            raise RateLimitError(
                f"{party.id}: {reason}; wait {self.limits.refill_s:.0f}s and fix the cause"
            )

    @contextmanager
    def admitted(self, party: Party, what: str, round_number: int) -> Iterator[None]:
        """One submission of a kind per identity at a time, and only within its budget: N
        concurrent bad submissions cannot all be examined before the first is rejected."""
        self.throttle(party, what, round_number, exclusive=True)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.discard((party.id, what))
