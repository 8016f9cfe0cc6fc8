"""The coordinator's engine: one lock, one clock, the audit log, and the jobs.

No gRPC and no streaming here: the servicer (or a push-style workflow such as Flower's) calls
the public methods, which the phases of a round implement — :mod:`._collecting` (contributions
and receipts), :mod:`._aggregating` (the sum and the decryption ticket), :mod:`._opening` (the
ticket quorum, partial decryptions, combining), :mod:`._views` (status and joining) and
:mod:`._startup` (a new federation, or a restart's replay). :class:`fedlora.coordinator.Driver`
is the clock that calls :meth:`Coordinator.tick`.

Every change of state is an event: :meth:`Coordinator.record` appends it to the audit log
(fsynced with its checkpoint) and then applies it with :func:`._state.apply`, the function a
restart folds over the log, so the live and the replayed state are the same by construction.
:meth:`Coordinator.enter` is the one place a stage changes, checked against the transition table
before anything is written.

Decisions and heavy work are separate (STYLE.md §15): :meth:`Coordinator.tick` decides under the
lock, runs aggregation or combination outside it (status requests never wait for them), and
applies the outcome under the lock again. Any error in that work ends the round as
``round_failed`` with the reason; nothing is retried forever, and a restart that replays into
the same fault fails the round the same way and opens the next one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora import events as ev
from fedlora.audit import AuditLog, SignedCheckpoint
from fedlora.config import CoordinatorConfig, Party
from fedlora.coordinator import _rounds, _startup, _views
from fedlora.coordinator._adapter import AdapterTemplate
from fedlora.coordinator._admission import Admission
from fedlora.coordinator._collecting import Collecting
from fedlora.coordinator._observe import EventLog
from fedlora.coordinator._opening import Opening
from fedlora.coordinator._settings import federation_parameters
from fedlora.coordinator._state import Began, FederationState, RoundState, apply
from fedlora.coordinator._store import Store
from fedlora.crypto import ModexpBackend, ThresholdPublicKey, ed25519_public_bytes
from fedlora.errors import ConfigError, FedLoraError, NotFoundError, VerificationError
from fedlora.protocol import (
    AggregationRule,
    ContributionHeader,
    DecryptionManifest,
    JoinInfo,
    ManifestEntry,
    PartialHeader,
    Receipt,
    RoundStatus,
    Stage,
    check_transition,
    secure_sum_for,
)

# A job: the stage it runs in, its round, and the work (outside the lock) that returns what to
# apply under the lock.
Job = tuple[Stage, int, Callable[[], Callable[[], None]]]


class Coordinator:
    """One federation's coordinator. Thread-safe; something must call :meth:`tick` periodically
    (:class:`fedlora.coordinator.Driver` does, with the engine's clock)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        threshold_key: ThresholdPublicKey | None,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        rule: AggregationRule | None = None,
        backend: ModexpBackend | None = None,
        accept_config_change: bool = False,
        initial: np.ndarray | None = None,
        extra_settings: Mapping[str, Any] | None = None,
    ) -> None:
        """``initial``: global version 0 (default zeros: an adapter's delta from the base model).
        The Flower strategy gives the ServerApp's initial arrays, so every version is the whole
        vector; a restart with another initial vector is refused. ``extra_settings``: more
        settings the federation records at its start and a restart must match (Flower's array
        layout, which members use to render the versions they keep)."""
        self.config = config
        self.fl = config.federated_learning
        self.key = threshold_key
        self.spec = _startup.load_spec(config)
        params = federation_parameters(config, threshold_key, self.spec, extra_settings)
        self.params = params
        self.quorum, self.codec, self.min_clients = (
            params.ticket_quorum,
            params.codec,
            params.min_clients,
        )
        self.settings = params.settings
        self.signing_key = signing_key
        self.public_key = ed25519_public_bytes(signing_key)
        self.clock = clock
        self.num_parameters = config.model.num_parameters
        self.backend = backend
        self.secure_sum = secure_sum_for(
            self.fl.encryption_type, threshold_key, self.codec, rule, backend
        )
        self.width = self.secure_sum.width
        self.record_count = self.secure_sum.record_count(self.num_parameters)
        self.fingerprint = self.secure_sum.fingerprint
        self.store = Store(config.state_dir)
        self._digests: dict[int, bytes] = {}
        template = config.model.adapter_template
        self.template = AdapterTemplate(template, self.num_parameters) if template else None
        self.audit = AuditLog(
            config.state_dir / "audit", config.federation_id, signing_key, clock=clock
        )
        self.audit.observers.append(EventLog())  # one log line per audited event
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every change
        self.state = FederationState()
        self.admission = Admission(config, self.record, clock, self.lock)
        self._joined: set[tuple[str, int]] = set()  # (identity, round) already audited
        self._enrolled = frozenset(p.id for p in config.parties)
        self._job_running = False
        self.collecting = Collecting(self)
        self.opening = Opening(self)
        if initial is not None and initial.shape != (self.num_parameters,):
            raise ConfigError(
                f"the initial vector has {initial.size} values; the model has {self.num_parameters}"
            )
        self.initial = (
            np.zeros(self.num_parameters, dtype=np.float32)
            if initial is None
            else np.ascontiguousarray(initial, dtype=np.float32)
        )
        _startup.start(self, accept_config_change)

    # -- state -----------------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        return self.state.stage or Stage.WAITING

    @property
    def round(self) -> RoundState | None:
        return self.state.round

    @property
    def round_number(self) -> int:
        return self.state.round.number if self.state.round else 0

    @property
    def global_version(self) -> int:
        return self.state.global_version

    @property
    def joined(self) -> set[str]:
        """Enrolled parties that have joined the federation."""
        return self.state.joined & self._enrolled

    @property
    def finished(self) -> bool:
        with self.lock:
            return self.stage is Stage.FINISHED

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def record(self, event: ev.Event) -> tuple[int, int]:
        """Append ``event`` to the audit log, then apply it to the state (the same
        :func:`~fedlora.coordinator._state.apply` a restart folds over the log); returns the
        entry's index and time."""
        with self.lock:
            index, time_ms = self.audit.record_timed(event)
            apply(self.state, event, index, time_ms)
            self.changed.notify_all()
            return index, time_ms

    def enter(self, stage: Stage, event: ev.Event | None = None) -> None:
        """Move to ``stage``: refused before anything is written when the transition table
        does not allow it; then by recording ``event`` (whose application enters the stage), or,
        for the coordinator's own work (AGGREGATING, COMBINING), by applying :class:`Began`."""
        check_transition(self.stage, stage)
        if event is None:
            apply(self.state, Began(stage))
        else:
            self.record(event)

    def note_join(self, party: Party, number: int) -> None:
        """Audit a party's first join in round ``number`` (joining again cannot grow the log)."""
        if (party.id, number) not in self._joined:
            self._joined.add((party.id, number))
            self.record(ev.ClientJoined(client=party.id, role=party.role))

    def authenticate(self, identity: str | None, method: str) -> Party:
        """Map a certificate identity to an enrolled party (every refusal is audited).

        Raises:
            AuthenticationError: no identity at all.
            AuthorizationError: unknown or revoked identity.
        """
        return self.admission.authenticate(identity, method)

    # -- rounds ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance on deadlines and thresholds; the server calls this a few times a second.

        Decides under the lock; aggregation and combination run outside it (the stage shows
        AGGREGATING or COMBINING meanwhile, so a concurrent tick starts nothing).
        """
        with self.lock:
            job = self._decide()
            if job is not None:
                self._job_running = True
        if job is not None:
            try:
                self._run(*job)
            finally:
                with self.lock:
                    self._job_running = False

    def _decide(self) -> Job | None:
        stage, now = self.stage, self.now_ms()
        if stage is Stage.WAITING:
            if len(self.joined) >= self.min_clients:
                _rounds.open_round(self, 1)
        elif stage is Stage.COLLECTING:
            return self.collecting.tick(now)
        elif stage in (Stage.AGGREGATING, Stage.COMBINING) and not self._job_running:
            _rounds.fail_round(self, f"{stage.value} ended without an outcome")
        elif stage in (Stage.TICKETING, Stage.DECRYPTING):
            return self.opening.tick(now)
        return None

    def _run(self, stage: Stage, number: int, work: Callable[[], Callable[[], None]]) -> None:
        """A job's work outside the lock; its outcome (or its failure) applied under the lock."""
        try:
            outcome = work()
        except Exception as exc:  # any fault ends the round, never the federation
            with self.lock:
                self._fail_job(number, stage, exc)
            return
        with self.lock:
            if self.round_number == number and self.stage is stage:
                try:
                    outcome()
                except Exception as exc:
                    self._fail_job(number, stage, exc)

    def _fail_job(self, number: int, stage: Stage, exc: Exception) -> None:
        if self.round_number != number or self.stage is not stage:
            return
        reason = str(exc) if isinstance(exc, FedLoraError) else type(exc).__name__
        party = exc.party if isinstance(exc, FedLoraError) else None
        holders = self.key.party_ids if self.key else ()
        _rounds.fail_round(
            self, f"{stage.value} failed: {reason}", party=party if party in holders else None
        )

    # -- push-style drivers (Flower) ---------------------------------------------------------------
    def close_collection(self, why_missing: str = "") -> None:
        """End the open round's collection now (a push transport collected all it will get).

        The next :meth:`tick` aggregates if ``participant_threshold`` contributions are in, and
        fails the round otherwise, exactly as at the deadline; ``why_missing`` (what the
        transport heard from the parties that did not contribute) then goes into the reason.
        It is audited (``collection_closed``), so a restart sees the same deadline.
        """
        self.collecting.close(why_missing)

    def end_decryption(self, reason: str) -> None:
        """Fail the round being decrypted now, with ``reason`` (e.g. the holders' refusals).

        For a driver that knows no more ticket signatures or partials will come; a pull-style
        server waits for the decryption deadline instead.
        """
        with self.lock:
            if self.round is not None and self.stage in (Stage.TICKETING, Stage.DECRYPTING):
                _rounds.fail_round(self, reason)

    def wait(self, timeout: float) -> None:
        """Block until something changed (or ``timeout`` seconds passed)."""
        with self.changed:
            self.changed.wait(timeout)

    def wake(self) -> None:
        """Wake every :meth:`wait` now (a driver that is stopping)."""
        with self.changed:
            self.changed.notify_all()

    # -- publication -----------------------------------------------------------------------------
    def global_digest(self, version: int) -> bytes:
        """SHA-256 of a global version's file; computed once per version (clients poll often)."""
        cached = self._digests.get(version)
        if cached is not None:
            return cached
        path = self.store.global_path(version)
        if not path.exists():
            raise NotFoundError(f"global adapter version {version} does not exist")
        digest = hashlib.sha256(path.read_bytes()).digest()
        self._digests[version] = digest  # global versions are written once and never change
        return digest

    def global_chunks(self, version: int) -> tuple[bytes, Iterator[bytes]]:
        path = self.store.global_path(version)
        if not path.exists():
            raise NotFoundError(f"global adapter version {version} does not exist")
        digest = self.global_digest(version)
        return digest, self.store.read_chunks(path, self.config.server.chunk_bytes)

    def checkpoint(self) -> SignedCheckpoint:
        """The audit log's newest signed checkpoint."""
        return SignedCheckpoint.from_dict(self.audit.latest_checkpoint())

    # -- messages, answered by the round's phases --------------------------------------------------
    def describe_stage(self) -> str:
        return _views.describe_stage(self)

    def status(self, party: Party) -> RoundStatus:
        return _views.status(self, party)

    def join_info(self, party: Party, spec_json: str = "") -> JoinInfo:
        return _views.join_info(self, party, spec_json)

    def member_info(self, party: Party) -> JoinInfo:
        return _views.member_info(self, party)

    def accept_contribution(
        self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]
    ) -> Receipt:
        return self.collecting.accept(party, header, chunks)

    def reject_malformed_upload(self, party: Party, reason: str) -> FedLoraError:
        """Audit an upload that could not even be parsed; returns the error to raise."""
        return self.collecting.reject(party, self.round_number, VerificationError(reason))

    def decryption_task(
        self, party: Party, round_number: int, *, manifest_only: bool = False
    ) -> tuple[DecryptionManifest, Iterator[tuple[str, bytes]]]:
        return self.opening.decryption_task(party, round_number, manifest_only=manifest_only)

    def manifest_entries(self, participants: Iterable[str]) -> tuple[ManifestEntry, ...]:
        return self.opening.manifest_entries(participants)

    def accept_ticket(
        self, party: Party, round_number: int, ticket: bytes, signature: bytes
    ) -> tuple[int, int]:
        return self.opening.accept_ticket(party, round_number, ticket, signature)

    def accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        self.opening.accept_partial(party, header, chunks)

    def complete_partials(self) -> set[str]:
        return self.opening.complete_partials()

    def ticket_signers(self) -> set[str]:
        """The holders whose signature on the open round's ticket the coordinator holds."""
        with self.lock:
            r = self.state.round
            return set(r.ticket_signatures) if r is not None else set()
