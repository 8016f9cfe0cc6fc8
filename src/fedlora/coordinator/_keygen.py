"""The coordinator's part in key generation: it relays the holders' sealed messages, and records.

Before round 1 of a federation configured with ``keys.generation`` (and whose key file does
not exist yet), the coordinator serves the Keygen calls alone (the federation calls answer
"unavailable" meanwhile). It cannot read a message (each is sealed between two holders), and
it cannot change, replay or withhold one unnoticed; what it decides is only *when* an attempt
ends: a holder silent past ``round_timeout_s`` is blamed, a holder reporting a fault ends the
attempt with its blame. Every attempt's start, end and blame go to the audit log
(``keygen_started``, ``keygen_aborted``), and the key with a quorum of holders' signatures of
the key statement (``key_generated``) — checked here too, so a key no quorum signed is never
recorded.

Bounds: a holder posts at most :data:`MAX_MESSAGE` bytes per message, in chunks of at most the
server's chunk size, at most one round ahead of the slowest holder; every wait has a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora import events as ev
from fedlora._files import replace_file, write_new_file
from fedlora.audit import AuditLog
from fedlora.ceremony._exchange import MAX_MESSAGE, RELAY
from fedlora.ceremony._generate import KeygenOutcome, KeygenStart, accept_outcome, session_id
from fedlora.config import CoordinatorConfig
from fedlora.coordinator._observe import EventLog
from fedlora.crypto import ThresholdPublicKey, ticket_quorum
from fedlora.errors import (
    AuthorizationError,
    ConfigError,
    CryptoError,
    FedLoraError,
    OutOfRangeError,
    ProtocolError,
    VerificationError,
)

MAX_KEY_JSON = 1 << 20  # a public key's JSON: N, v, θ and ℓ verification keys
POLL_S = 15.0  # the longest a call waits before answering "not yet" (the caller asks again)


@dataclass
class _Box:
    total: int
    data: bytearray


@dataclass
class _Attempt:
    start: KeygenStart
    session: bytes
    boxes: dict[tuple[int, str, str], _Box]
    signed: dict[str, tuple[str, bytes, bytes]]  # holder -> (key json, transcript, signature)
    last_progress: float
    aborted: str | None = None  # the reason, once it ended without a key
    posted: dict[str, int] = field(default_factory=dict)  # holder -> the round it posts in
    delivered: set[tuple[int, str, str]] = field(default_factory=set)  # boxes collected


class KeygenService:
    """One federation's key generation, as its coordinator runs it. Thread-safe."""

    def __init__(
        self,
        *,
        federation_id: str,
        holders: tuple[str, ...],
        threshold: int,
        bits: int,
        signing_keys: Mapping[str, bytes],
        chunk_bytes: int,
        round_timeout_s: float,
        record: Callable[[ev.Event], object],
        first_attempt: int = 1,
        previous: ThresholdPublicKey | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
    ) -> None:
        """``signing_keys``: the parties' pinned Ed25519 keys (the holders', and for a re-key the
        previous key's); ``record``: appends to the audit log; ``first_attempt``: one past the
        attempts the log already holds; ``previous``: a re-key's current key, whose holders must
        sign the new one by a quorum too."""
        self.federation_id, self.holders = federation_id, holders
        self.threshold, self.bits = threshold, bits
        self.signing_keys = dict(signing_keys)
        self.chunk_bytes, self.round_timeout_s = chunk_bytes, round_timeout_s
        self.record, self.clock, self.poll_s = record, clock, poll_s
        self.quorum = ticket_quorum(len(holders), threshold)
        self.previous = previous
        self.relayed = 0  # bytes of sealed messages relayed (every attempt)
        self.ended: dict[bytes, str] = {}  # the last attempt that ended: session -> why
        self.next_attempt = first_attempt
        self.pending: dict[str, bytes] = {}
        self.current: _Attempt | None = None
        self.outcome: KeygenOutcome | None = None
        self.changed = threading.Condition()
        self.done = threading.Event()  # set once a key is accepted
        # the audit log's observers (log lines, metrics) — set by keygen_service
        self.observers: list[Callable[[str, int, dict[str, Any]], None]] = []

    # -- waiting ---------------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool]) -> bool:
        """Wait (lock held) until ``ready()`` or the poll interval passed; check deadlines."""
        end = self.clock() + self.poll_s
        while not ready():
            self._expire()
            left = end - self.clock()
            if left <= 0 or ready():
                break
            self.changed.wait(min(left, 1.0))
        return ready()

    def _expire(self) -> None:
        a = self.current
        if a is None or a.aborted or self.outcome is not None:
            return
        if self.clock() - a.last_progress < self.round_timeout_s:
            return
        if self._enough(a):
            self._accept(a)
            return
        slow = self._slowest(a)
        self._end(
            a,
            f"no progress for {self.round_timeout_s:.0f}s"
            + (f": {slow} stopped answering" if slow else ""),
            party=slow,
        )

    def _slowest(self, a: _Attempt) -> str | None:
        """The holder the others are waiting for: the one furthest behind in posting its rounds
        (every holder posts every round), or the one that did not sign the key."""
        if a.signed:
            return next((h for h in self.holders if h not in a.signed), None)
        low = min(a.posted.values())
        behind = [h for h, n in a.posted.items() if n == low]
        return behind[0] if len(behind) < len(self.holders) else None

    def _end(
        self, a: _Attempt, reason: str, *, party: str | None, reported_by: str | None = None
    ) -> None:
        a.aborted, a.boxes = reason, {}
        self.current = None
        self.ended = {a.session: reason + (f" (blames {party})" if party else "")}
        self.record(
            ev.KeygenAborted(
                attempt=a.start.attempt,
                session=a.session.hex(),
                reason=reason,
                party=party,
                reported_by=reported_by,
            )
        )
        self.changed.notify_all()

    def _attempt(self, holder: str, session: bytes) -> _Attempt:
        self._holder(holder)
        if self.outcome is not None and self.outcome.session == session:
            raise ProtocolError("the key is generated already")
        a = self.current
        if a is None or a.session != session:
            why = self.ended.get(session)
            raise ProtocolError(
                "that key generation attempt has ended"
                + (f": {why}" if why else " (see the coordinator's audit log)")
                + "; start again"
            )
        return a

    def _holder(self, holder: str) -> None:
        if holder not in self.holders:
            raise AuthorizationError(f"{holder!r} holds no share of the key being generated")

    @staticmethod
    def _raise_if_aborted(a: _Attempt) -> None:
        if a.aborted is not None:
            raise ProtocolError(f"key generation attempt {a.start.attempt} aborted: {a.aborted}")

    # -- the calls -------------------------------------------------------------------------------
    def hello(self, holder: str, nonce: bytes) -> KeygenStart | list[str]:
        """A holder is ready; the attempt's announcement once all are, else the holders still
        awaited (ask again)."""
        self._holder(holder)
        if len(nonce) != 32:
            raise OutOfRangeError("a key generation nonce is 32 bytes")
        with self.changed:
            if self.outcome is not None:
                raise ProtocolError("the key is generated already; ask for the result")
            a = self.current
            if a is not None and a.start.nonces[a.start.holders.index(holder)] != nonce:
                # the holder started over (a restart): this attempt cannot finish without it
                self._end(a, f"{holder} started over", party=holder)
            self.pending[holder] = nonce
            if self.current is None and len(self.pending) == len(self.holders):
                start = KeygenStart(
                    self.federation_id,
                    self.next_attempt,
                    self.holders,
                    tuple(self.pending[h] for h in self.holders),
                    self.threshold,
                    self.bits,
                )
                self.next_attempt += 1
                self.pending = {}
                session = session_id(start)
                self.current = _Attempt(
                    start, session, {}, {}, self.clock(), posted={h: 0 for h in self.holders}
                )
                self.record(
                    ev.KeygenStarted(
                        attempt=start.attempt,
                        session=session.hex(),
                        holders=list(self.holders),
                        threshold=self.threshold,
                        bits=self.bits,
                    )
                )
                self.changed.notify_all()

            def started() -> bool:
                c = self.current
                return c is not None and c.start.nonces[self.holders.index(holder)] == nonce

            if not self._wait(started):
                return [h for h in self.holders if h not in self.pending]
            assert self.current is not None
            return self.current.start

    def post(
        self,
        holder: str,
        session: bytes,
        number: int,
        recipient: str,
        offset: int,
        total: int,
        data: bytes,
    ) -> None:
        """One chunk of ``holder``'s message to ``recipient`` in round ``number``."""
        with self.changed:
            a = self._attempt(holder, session)
            self._raise_if_aborted(a)
            if recipient not in self.holders or recipient == holder:
                raise ProtocolError(f"{recipient!r} is not another holder")
            if not 0 < total <= MAX_MESSAGE or len(data) > self.chunk_bytes:
                raise OutOfRangeError("a key generation message or chunk is too large")
            # A holder posts in its round or starts the next, never more than one round ahead
            # of the slowest holder, never into a message already delivered: the relay holds at
            # most two rounds of (ℓ − 1) messages per holder.
            mine, low = a.posted[holder], min(a.posted.values())
            key = (number, holder, recipient)
            if number not in (mine, mine + 1) or number > low + 1 or key in a.delivered:
                raise ProtocolError(
                    f"round {number} is out of turn: {holder} is in round {mine} and the "
                    f"slowest holder in round {low} (a holder posts each round once, at most "
                    "one round ahead)"
                )
            a.posted[holder] = number
            box = a.boxes.setdefault(key, _Box(total, bytearray()))
            if box.total != total or offset != len(box.data) or offset + len(data) > total:
                if offset + len(data) <= len(box.data) and box.data[offset:].startswith(data):
                    return  # a retried chunk
                raise ProtocolError("key generation chunks out of order")
            box.data += data
            self.relayed += len(data)
            a.last_progress = self.clock()
            self.changed.notify_all()

    def collect(
        self, holder: str, session: bytes, number: int, sender: str, offset: int
    ) -> tuple[int, bytes]:
        """A chunk of ``sender``'s message to ``holder`` in round ``number``: (total, data);
        total 0 means not yet (ask again)."""
        with self.changed:
            a = self._attempt(holder, session)
            key = (number, sender, holder)

            def complete() -> bool:
                box = a.boxes.get(key)
                return a.aborted is not None or (box is not None and len(box.data) == box.total)

            if not self._wait(complete):
                return 0, b""
            self._raise_if_aborted(a)
            box = a.boxes[key]
            if not 0 <= offset < box.total:
                raise OutOfRangeError("offset beyond the message")
            chunk = bytes(box.data[offset : offset + self.chunk_bytes])
            if offset + len(chunk) == box.total:
                del a.boxes[key]  # delivered: the relay keeps nothing it no longer needs
                a.delivered.add(key)
            a.last_progress = self.clock()
            return box.total, chunk

    def signed(
        self,
        holder: str,
        session: bytes,
        public_key_json: str,
        transcript: bytes,
        signature: bytes,
    ) -> KeygenOutcome | None:
        """``holder`` signed the key statement; the outcome once a quorum did, else None."""
        with self.changed:
            if self.outcome is not None and self.outcome.session == session:
                return self.outcome
            a = self._attempt(holder, session)
            self._raise_if_aborted(a)
            if len(public_key_json) > MAX_KEY_JSON or len(signature) != 64:
                raise OutOfRangeError("a key statement is a bounded key and a 64-byte signature")
            try:
                key = ThresholdPublicKey.from_json(public_key_json.encode())
                accept_outcome(
                    KeygenOutcome(session, key, transcript, {holder: signature}),
                    federation_id=self.federation_id,
                    holders=self.holders,
                    threshold=self.threshold,
                    signing_keys=self.signing_keys,
                    quorum=1,
                )
            except (CryptoError, VerificationError) as exc:
                self._end(a, f"{holder}'s key statement is refused: {exc}", party=holder)
                raise ProtocolError(f"the key statement is refused: {exc}") from None
            a.signed[holder] = (public_key_json, transcript, signature)
            a.last_progress = self.clock()
            if len(a.signed) == len(self.holders):
                if self._agreed(a) is None:
                    self._end(a, "the holders signed different keys", party=None)
                elif not self._enough(a):
                    assert self.previous is not None
                    self._end(
                        a,
                        "too few holders of the current key signed the new one (a re-key needs "
                        f"{ticket_quorum(self.previous.parties, self.previous.threshold)} of "
                        f"{', '.join(self.previous.party_ids)})",
                        party=None,
                    )
                else:
                    self._accept(a)
            self.changed.notify_all()
            if not self._wait(lambda: self.outcome is not None or a.aborted is not None):
                return None
            self._raise_if_aborted(a)
            return self.outcome

    def _enough(self, a: _Attempt) -> bool:
        """A quorum of the holders signed one key (and, for a re-key, a quorum of the previous
        key's holders)."""
        if len(a.signed) < self.quorum or self._agreed(a) is None:
            return False
        if self.previous is None:
            return True
        old = [h for h in self.previous.party_ids if h in a.signed]
        return len(old) >= ticket_quorum(self.previous.parties, self.previous.threshold)

    def _agreed(self, a: _Attempt) -> tuple[str, bytes] | None:
        values = {(k, t) for k, t, _ in a.signed.values()}
        return next(iter(values)) if len(values) == 1 else None

    def _accept(self, a: _Attempt) -> None:
        agreed = self._agreed(a)
        assert agreed is not None
        key_json, transcript = agreed
        key = ThresholdPublicKey.from_json(key_json.encode())
        signatures = {h: s for h, (_, _, s) in a.signed.items()}
        self.outcome = KeygenOutcome(a.session, key, transcript, signatures)
        self.record(
            ev.KeyGenerated(
                attempt=a.start.attempt,
                session=a.session.hex(),
                key_fingerprint=key.fingerprint.hex(),
                public_key=outcome_key_doc(key_json),
                transcript=transcript.hex(),
                signatures={h: s.hex() for h, s in sorted(signatures.items())},
                replaces=self.previous.fingerprint.hex() if self.previous else None,
            )
        )
        self.current = None
        self.done.set()
        self.changed.notify_all()

    def abort(self, holder: str, session: bytes, reason: str, party: str | None) -> None:
        """``holder`` stopped the attempt, blaming ``party`` (a holder, the relay, or none)."""
        with self.changed:
            a = self._attempt(holder, session)
            if a.aborted is not None:
                return
            blamed = party if party in (*self.holders, RELAY) else None
            self._end(a, reason[:500], party=blamed, reported_by=holder)

    def end(self, session: bytes, reason: str, party: str | None) -> None:
        """The relay ends the attempt itself (a holder on a push transport did not answer)."""
        with self.changed:
            a = self.current
            if a is not None and a.session == session and a.aborted is None:
                self._end(a, reason, party=party)

    def result(self) -> KeygenOutcome | None:
        """The accepted outcome, waiting a while for it; None: not yet."""
        with self.changed:
            self._wait(lambda: self.outcome is not None)
            return self.outcome


def outcome_key_doc(key_json: str) -> dict[str, object]:
    """The public key as the audit entry carries it (a JSON object)."""
    doc = json.loads(key_json)
    assert isinstance(doc, dict)
    return doc


def keygen_service(
    config: CoordinatorConfig, *, accept_config_change: bool = False
) -> KeygenService | None:
    """The Keygen service a coordinator runs before it serves rounds, or None: the key is dealt,
    exists for the configured holders, or the federation is unencrypted. With a key whose
    holders differ from ``keys.generation.holders`` (a holder revoked or added) the service
    re-keys — only with ``accept_config_change`` (the operator's ``--accept-config-change``):
    the new key needs a quorum of the current key's holders too. A key the log accepted but
    whose file was not written (a crash in between) is written from the log instead.

    Raises:
        ConfigError: a key file that cannot be read, or a re-key not accepted.
    """
    from fedlora.coordinator._build import load_signing_key, read_file

    gen = config.keys.generation
    if gen is None or config.federated_learning.encryption_type != "homomorphic":
        return None
    path = config.keys.threshold_public_key
    current = None
    if path.exists():
        try:
            current = ThresholdPublicKey.from_json(read_file(path, "keys.threshold_public_key"))
        except FedLoraError as exc:
            raise ConfigError(f"keys.threshold_public_key: {exc}") from None
    audit = AuditLog(
        config.state_dir / "audit",
        config.federation_id,
        load_signing_key(config.keys.signing_key),
    )
    audit.observers.append(EventLog())
    attempts, open_attempt, accepted = 0, None, None
    for line in audit.entries():
        event = ev.parse_event(json.loads(line))
        if isinstance(event, ev.KeygenStarted):
            attempts, open_attempt = event.attempt, event
        elif isinstance(event, ev.KeygenAborted):
            open_attempt = None
        elif isinstance(event, ev.KeyGenerated):
            accepted, open_attempt = event, None
    if (
        accepted is not None
        and (current is None or current.fingerprint.hex() != accepted.key_fingerprint)
        and (current is None or accepted.replaces == current.fingerprint.hex())
    ):
        key = ThresholdPublicKey.from_json(json.dumps(accepted.public_key).encode())
        install_key(path, key)  # accepted, then the coordinator stopped before writing it
        return None
    if current is not None and (
        current.party_ids == gen.holders
        and current.threshold == config.federated_learning.decryption_threshold
    ):
        return None
    if current is not None and not accept_config_change:
        raise ConfigError(
            f"keys.generation names a {config.federated_learning.decryption_threshold}-of-"
            f"{len(gen.holders)} key held by {', '.join(gen.holders)}; the federation's key is "
            f"{current.threshold}-of-{current.parties} held by {', '.join(current.party_ids)}: "
            "re-keying changes the federation; restore the holders, or start with "
            "--accept-config-change to re-key (it is audited)"
        )
    if open_attempt is not None:
        audit.record(
            ev.KeygenAborted(
                attempt=open_attempt.attempt,
                session=open_attempt.session,
                reason="the coordinator restarted during the attempt",
            )
        )
    service = KeygenService(
        federation_id=config.federation_id,
        holders=gen.holders,
        threshold=config.federated_learning.decryption_threshold,
        bits=gen.bits,
        signing_keys={p.id: bytes.fromhex(p.signing_public_key) for p in config.parties},
        chunk_bytes=config.server.chunk_bytes,
        round_timeout_s=gen.round_timeout_s,
        record=audit.record,
        first_attempt=attempts + 1,
        previous=current,
    )
    service.observers = audit.observers
    return service


def install_key(path: Path, key: ThresholdPublicKey) -> None:
    """Write ``key`` where ``path`` names the threshold key; a key there before it is kept
    beside it as ``<name>.<fingerprint prefix>.json`` (rounds under it stay verifiable)."""
    if path.exists():
        old = path.read_bytes()
        fingerprint = ThresholdPublicKey.from_json(old).fingerprint.hex()[:16]
        kept = path.with_name(f"{path.stem}.{fingerprint}{path.suffix}")
        if not kept.exists():
            write_new_file(kept, old)
        replace_file(path, key.to_json())
    else:
        write_new_file(path, key.to_json())


def write_generated_key(config: CoordinatorConfig, outcome: KeygenOutcome) -> None:
    """Write the accepted key where ``keys.threshold_public_key`` names it."""
    install_key(config.keys.threshold_public_key, outcome.public_key)
