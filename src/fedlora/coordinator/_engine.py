"""The coordinator's decisions: rounds, admission, the ticket quorum, publication.

No gRPC here and no streaming: the servicer (or any push-style workflow) calls the public step
methods; :mod:`fedlora.coordinator._intake` reads and checks uploads; :mod:`._replay` rebuilds
the state from the audit log; :class:`fedlora.coordinator.Driver` is the clock that calls
:meth:`Coordinator.tick`. The audit log is the record of every decision *and* the event store: a
contribution counts once its file is fsynced and its ``contribution_accepted`` entry is fsynced,
and only then is it acknowledged.

Decisions and heavy work are separate (STYLE.md §15): :meth:`Coordinator.tick` decides under the
lock, runs aggregation or combination outside it (status requests never wait for them), and
applies the outcome under the lock again. Any error in that work ends the round as
``round_failed`` with the reason; nothing is retried forever, and a restart that replays into the
same fault fails the round the same way and opens the next one.

Decryption is gated by the quorum ticket (DESIGN.md §4): after aggregating, the coordinator names
the round's decryption ticket; share holders check the aggregate themselves and sign the ticket,
and only once ``ticket_quorum`` holders signed it do they release partial decryptions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora import events as ev
from fedlora.audit import AuditLog, SignedCheckpoint
from fedlora.config import CoordinatorConfig, Party
from fedlora.coordinator._adapter import AdapterTemplate
from fedlora.coordinator._admission import Admission
from fedlora.coordinator._intake import receive_bounded, receive_contribution
from fedlora.coordinator._observe import EventLog
from fedlora.coordinator._settings import (
    check_changes,
    check_threshold_key,
    differences,
    settings_of,
)
from fedlora.coordinator._state import (
    Began,
    Contribution,
    FederationState,
    RoundState,
    apply,
    replay,
)
from fedlora.coordinator._store import Store
from fedlora.crypto import (
    CodecParams,
    DecryptionProof,
    ModexpBackend,
    PartialDecryption,
    ThresholdPublicKey,
    ciphertext_vector_digest,
    combine_verified_partials,
    decode,
    ed25519_public_bytes,
    receipt_digest,
    sign_digest,
    verify_signature,
)
from fedlora.errors import (
    AuthorizationError,
    ConfigError,
    FedLoraError,
    NotFoundError,
    ProtocolError,
    VerificationError,
)
from fedlora.protocol import (
    SPEC_FILE,
    AggregationRule,
    ContributionHeader,
    ContributionRules,
    DecryptionManifest,
    JoinInfo,
    ManifestEntry,
    Message,
    PartialHeader,
    Receipt,
    RoundStatus,
    Stage,
    canonical_spec,
    check_contribution_header,
    check_message,
    check_partial_header,
    check_spec,
    check_transition,
    chunk_ranges,
    contribution_statement,
    knowledge_context,
    parse_spec,
    round_ticket,
    secure_sum_for,
    spec_digest,
    unpack_records,
    verify_partial,
)


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
        self.quorum = self._check_key()
        self.signing_key = signing_key
        self.public_key = ed25519_public_bytes(signing_key)
        self.clock = clock
        self.num_parameters = config.model.num_parameters
        self.codec = CodecParams(
            clip=config.codec.clip,
            value_bits=config.codec.value_bits,
            max_total_weight=config.codec.max_weight * len(config.parties),
            key_bits=threshold_key.n.bit_length() if threshold_key else 2048,
        )
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
        self.spec = _load_spec(config)
        self.audit = AuditLog(
            config.state_dir / "audit", config.federation_id, signing_key, clock=clock
        )
        self.audit.observers.append(EventLog())  # one log line per audited event
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        # Every change of state is an event: appended to the log, then applied (_record).
        self.state = FederationState()
        self.admission = Admission(config, self._record, clock, self._lock)
        self._joined: set[tuple[str, int]] = set()  # (identity, round) already audited
        self._enrolled = frozenset(p.id for p in config.parties)
        self.min_clients = self.fl.min_clients or self.fl.participant_threshold
        self.settings = settings_of(
            config,
            key_fingerprint=self.fingerprint,
            codec=self.codec,
            ticket_quorum=self.quorum,
            spec_digest=spec_digest(self.spec) if self.spec is not None else "",
        )
        self.settings.update(extra_settings or {})
        self._job_running = False
        self._aggregate_cache: tuple[int, list[int], dict[int, tuple[int, bytes]]] | None = None
        self._combining: set[tuple[int, int]] = set()  # (round, first record) combining now
        # (round, first record) -> the chunk's plaintexts and who decrypted it (a cache of the
        # stored partials' combination: redone after a restart)
        self._combined: dict[tuple[int, int], tuple[list[int], tuple[str, ...]]] = {}
        if initial is not None and initial.shape != (self.num_parameters,):
            raise ConfigError(
                f"the initial vector has {initial.size} values; the model has {self.num_parameters}"
            )
        self._initial = (
            np.zeros(self.num_parameters, dtype=np.float32)
            if initial is None
            else np.ascontiguousarray(initial, dtype=np.float32)
        )
        self._restore(accept_config_change)

    # -- state -------------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        return self.state.stage or Stage.WAITING

    @property
    def round(self) -> RoundState | None:
        return self.state.round

    @property
    def global_version(self) -> int:
        return self.state.global_version

    @property
    def joined(self) -> set[str]:
        """Enrolled parties that have joined the federation."""
        return self.state.joined & self._enrolled

    def _record(self, event: ev.Event) -> tuple[int, int]:
        """Append ``event`` to the audit log, then apply it to the state (the same
        :func:`~fedlora.coordinator._state.apply` a restart folds over the log); returns the
        entry's index and time."""
        with self._lock:
            index, time_ms = self.audit.record_timed(event)
            apply(self.state, event, index, time_ms)
            self._wake.notify_all()
            return index, time_ms

    def _enter(self, stage: Stage, event: ev.Event | None = None) -> None:
        """Move to ``stage``: refused before anything is written when the transition table
        does not allow it; then by recording ``event`` (whose application enters the stage), or,
        for the coordinator's own work (AGGREGATING, COMBINING), by applying :class:`Began`."""
        check_transition(self.stage, stage)
        if event is None:
            apply(self.state, Began(stage))
        else:
            self._record(event)

    # -- start-up ----------------------------------------------------------------------------
    def _check_key(self) -> int:
        """Check the threshold key against the configuration; return the ticket quorum."""
        return check_threshold_key(self.config, self.key)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _restore(self, accept_config_change: bool) -> None:
        """Rebuild the state from the audit log; start the federation if the log is empty.

        A restart whose configuration differs from the federation's is refused before anything
        is written, unless ``accept_config_change`` (then the change is audited).
        """
        events = [json.loads(line) for line in self.audit.entries()]
        holders = (self.key.party_ids, self.quorum, self.key.threshold) if self.key else ()
        if not events:
            self.admission.start(None, *holders)
            self._record(
                ev.FederationStarted(
                    federation_id=self.config.federation_id,
                    encryption_type=self.fl.encryption_type,
                    key_fingerprint=self.fingerprint.hex(),
                    codec=self.codec.to_dict(),
                    participant_threshold=self.fl.participant_threshold,
                    decryption_threshold=self.fl.decryption_threshold,
                    ticket_quorum=self.quorum,
                    rounds=self.fl.rounds,
                    aggregation_frequency=self.fl.aggregation_frequency,
                    num_parameters=self.num_parameters,
                    parties=[
                        {"id": p.id, "role": p.role, "signing_public_key": p.signing_public_key}
                        for p in self.config.parties
                    ],
                    settings=self.settings,
                )
            )
            self._save_and_publish(0, self._initial)
            self.admission.announce()
            return  # WAITING: round 1 opens once min_clients parties have joined
        state = replay(events)
        changes = differences(state.settings, self.settings)
        check_changes(
            changes,
            accept=accept_config_change,
            state_dir=str(self.config.state_dir),
            round_number=state.round.number if state.round else 0,
        )
        self.admission.start(state.revocations, *holders)
        initial = hashlib.sha256(self._initial.astype("<f4").tobytes()).digest()
        if self.store.global_path(0).exists() and not hmac.compare_digest(
            initial, self.global_digest(0)
        ):
            raise ConfigError(
                f"{self.config.state_dir} holds a federation that started from other initial "
                "arrays (global version 0 differs); give the same initial model, or a new "
                "state folder for a new federation"
            )
        self.state = state
        if changes:
            self._record(ev.ConfigChanged(changes=changes))
        self._record(
            ev.CoordinatorRestarted(
                round=self.round.number if self.round else 0,
                stage=self.stage.value,
                contributions=sorted(self.round.contributions) if self.round else [],
            )
        )
        self.admission.announce()
        if state.ended and self.stage is not Stage.FINISHED:
            self._end_round()  # it crashed between ending a round and opening the next
        elif self.stage is Stage.FINISHED and self.round and self.round.number < self.fl.rounds:
            self._open_round(self.round.number + 1)  # more rounds, accepted above

    # -- identity ----------------------------------------------------------------------------
    def authenticate(self, identity: str | None, method: str) -> Party:
        """Map a certificate identity to an enrolled party (every refusal is audited).

        Raises:
            AuthenticationError: no identity at all.
            AuthorizationError: unknown or revoked identity.
        """
        return self.admission.authenticate(identity, method)

    @property
    def _number(self) -> int:
        return self.round.number if self.round else 0

    # -- rounds ------------------------------------------------------------------------------
    def _open_round(self, number: int) -> None:
        deadline = self._now_ms() + int(self.fl.round_timeout_s * 1000)
        digest = self.global_digest(self.global_version)
        self._enter(
            Stage.COLLECTING,
            ev.RoundOpened(
                round=number,
                global_version=self.global_version,
                global_digest=digest.hex(),
                deadline_ms=deadline,
            ),
        )
        self._aggregate_cache = None
        self._combined.clear()

    def _end_round(self) -> None:
        assert self.round is not None
        for event, identity, reason, count in self.admission.limits.drain():
            self._record(
                ev.RejectionsRepeated(
                    round=self.round.number,
                    rejected_event=event,
                    identity=identity,
                    reason=reason,
                    count=count,
                )
            )
        if self.round.number >= self.fl.rounds:
            self._enter(
                Stage.FINISHED,
                ev.FederationFinished(
                    rounds=self.fl.rounds,
                    global_version=self.global_version,
                    global_digest=self.global_digest(self.global_version).hex(),
                ),
            )
        else:
            self._open_round(self.round.number + 1)

    def _fail_round(self, reason: str, *, party: str | None = None) -> None:
        assert self.round is not None
        self._record(
            ev.RoundFailed(
                round=self.round.number,
                stage=self.stage.value,
                reason=reason,
                contributions=sorted(self.round.contributions),
                partials=sorted(self.round.partials),
                party=party,
            )
        )
        self._end_round()

    def tick(self) -> None:
        """Advance on deadlines and thresholds; the server calls this a few times a second.

        Decides under the lock; aggregation and combination run outside it (the stage shows
        AGGREGATING or COMBINING meanwhile, so a concurrent tick starts nothing).
        """
        with self._lock:
            job = self._decide()
        if job is not None:
            try:
                job()
            finally:
                with self._lock:
                    self._job_running = False

    def _decide(self) -> Callable[[], None] | None:
        if self.stage is Stage.WAITING:
            if len(self.joined) >= self.min_clients:
                self._open_round(1)
            return None
        if self.round is None or self.stage is Stage.FINISHED:
            return None
        now = self._now_ms()
        r = self.round
        if self.stage is Stage.COLLECTING:
            # Close early once every party that joined (and is not revoked) has contributed; a
            # party that never joined does not hold every round to its deadline.
            revoked = self.admission.reload_revocations()
            expected = {p.id for p in self.config.parties if not p.revoked} & self.joined - revoked
            count = len(r.contributions)
            if count >= self.fl.participant_threshold and (
                expected <= set(r.contributions) or now >= r.deadline_ms
            ):
                self._enter(Stage.AGGREGATING)
                participants = tuple(sorted(r.contributions))
                self._job_running = True
                return lambda: self._run(r.number, Stage.AGGREGATING, participants)
            if now >= r.deadline_ms:
                why = f" ({r.collection_note})" if r.collection_note else ""
                self._fail_round(
                    f"{count} contribution{'s' * (count != 1)} at the deadline, below participant_threshold "
                    f"{self.fl.participant_threshold}; nothing was decrypted{why}"
                )
        elif self.stage in (Stage.AGGREGATING, Stage.COMBINING) and not self._job_running:
            self._fail_round(f"{self.stage.value} ended without an outcome")
        elif self.stage in (Stage.TICKETING, Stage.DECRYPTING):
            assert self.key is not None
            self._check_quorum()
            if self.stage is Stage.DECRYPTING and self._chunks_ready(r):
                self._enter(Stage.COMBINING)
                self._job_running = True
                return lambda: self._run(r.number, Stage.COMBINING, r.participants)
            if now >= r.decrypt_deadline_ms:
                what = (
                    f"{len(r.ticket_signatures)} ticket signatures, below the quorum {self.quorum}"
                    if self.stage is Stage.TICKETING
                    else f"{self._complete_partials(r)} complete partial decryptions, below the threshold {self.key.threshold}"
                )
                self._fail_round(f"{what} at the decryption deadline; nothing was decrypted")
        return None

    def _run(self, number: int, stage: Stage, participants: tuple[str, ...]) -> None:
        """Heavy work outside the lock; its outcome (or its failure) is applied under the lock."""
        try:
            if stage is Stage.AGGREGATING:
                apply = self._aggregate(number, participants)
            else:
                apply = self._combine(number)
        except Exception as exc:  # any fault ends the round, never the federation
            with self._lock:
                self._fail_job(number, stage, exc)
            return
        with self._lock:
            if self.round is not None and self.round.number == number and self.stage is stage:
                try:
                    apply()
                except Exception as exc:
                    self._fail_job(number, stage, exc)

    def _fail_job(self, number: int, stage: Stage, exc: Exception) -> None:
        if self.round is None or self.round.number != number or self.stage is not stage:
            return
        reason = str(exc) if isinstance(exc, FedLoraError) else type(exc).__name__
        party = getattr(exc, "party", None)
        holders = self.key.party_ids if self.key else ()
        self._fail_round(
            f"{stage.value} failed: {reason}", party=party if party in holders else None
        )

    # -- push-style drivers (Flower) ------------------------------------------------------------
    def close_collection(self, why_missing: str = "") -> None:
        """End the open round's collection now (a push transport collected all it will get).

        The next :meth:`tick` aggregates if ``participant_threshold`` contributions are in, and
        fails the round otherwise, exactly as at the deadline; ``why_missing`` (what the
        transport heard from the parties that did not contribute) then goes into the reason.
        """
        with self._lock:
            r = self.round
            if r is not None and self.stage is Stage.COLLECTING and r.deadline_ms > self._now_ms():
                self._record(ev.CollectionClosed(round=r.number, note=why_missing[:2000]))

    def end_decryption(self, reason: str) -> None:
        """Fail the round being decrypted now, with ``reason`` (e.g. the holders' refusals).

        For a driver that knows no more ticket signatures or partials will come; a pull-style
        server waits for the decryption deadline instead.
        """
        with self._lock:
            if self.round is not None and self.stage in (Stage.TICKETING, Stage.DECRYPTING):
                self._fail_round(reason)

    def wait(self, timeout: float) -> None:
        """Block until something changed (or ``timeout`` seconds passed)."""
        with self._wake:
            self._wake.wait(timeout)

    def wake(self) -> None:
        """Wake every :meth:`wait` now (a driver that is stopping)."""
        with self._wake:
            self._wake.notify_all()

    # -- status ------------------------------------------------------------------------------
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

    def describe_stage(self) -> str:
        """One line for the operator's log: the stage and what it waits for."""
        with self._lock:
            if self.stage is Stage.WAITING:
                return (
                    f"waiting for {self.min_clients} parties to join before round 1 opens "
                    f"({len(self.joined)} joined: {', '.join(sorted(self.joined)) or 'none yet'})"
                )
            return str(self.stage.value)

    def status(self, party: Party) -> RoundStatus:
        with self._lock:
            check_message(self.stage, Message.ROUND_STATUS, self.round.number if self.round else 0)
            r = self.round
            if r is None:  # WAITING: no round yet
                return RoundStatus(
                    round=0,
                    stage=self.stage,
                    global_version=self.global_version,
                    global_digest=self.global_digest(self.global_version),
                    deadline_unix_s=0.0,
                    contributions=0,
                    contributed=False,
                    partial_submitted=False,
                    rounds_total=self.fl.rounds,
                    decryptor=bool(self.key and party.id in self.key.party_ids),
                    ticket_signed=False,
                    ticket_signatures=0,
                    joined=tuple(sorted(self.joined - self.admission.revoked)),
                    min_clients=self.min_clients,
                    warning=self.admission.blocked or "",
                )
            finished = self.stage is Stage.FINISHED
            version = self.global_version if finished else r.global_version
            deciding = self.stage in (Stage.TICKETING, Stage.DECRYPTING, Stage.COMBINING)
            return RoundStatus(
                round=r.number,
                stage=self.stage,
                global_version=version,
                global_digest=self.global_digest(version),
                deadline_unix_s=(r.decrypt_deadline_ms if deciding else r.deadline_ms) / 1000,
                contributions=len(r.contributions),
                contributed=party.id in r.contributions,
                partial_submitted=party.id in self._complete(r),
                rounds_total=self.fl.rounds,
                decryptor=bool(self.key and party.id in self.key.party_ids),
                ticket_signed=party.id in r.ticket_signatures,
                ticket_signatures=len(r.ticket_signatures),
                contributors=tuple(sorted(r.contributions)),
                joined=tuple(sorted(self.joined - self.admission.revoked)),
                min_clients=self.min_clients,
                warning=self.admission.blocked or "",
            )

    def join_info(self, party: Party, spec_json: str = "") -> JoinInfo:
        """The federation's parameters; refuses a client whose model spec differs.

        Raises:
            ProtocolError: the client's spec differs (audited as ``join_refused``, naming the
                settings); RateLimitError: its rejection budget is spent.
        """
        if self.spec is not None:
            self.admission.throttle(party, "join", self._number)
            try:
                if not spec_json:
                    raise ConfigError(
                        f"{party.id} sent no model spec, and this federation compares every "
                        "client's model at join: upgrade the client's fedlora"
                    )
                if len(spec_json) > MAX_SPEC_CHARS:
                    raise ConfigError(f"the model spec is over {MAX_SPEC_CHARS} characters")
                check_spec(self.spec, parse_spec(spec_json, "the client's spec"), party.id)
            except ConfigError as exc:
                error = ProtocolError(str(exc))
                self.admission.rejected(party.id, ev.JoinRefused(client=party.id, reason=str(exc)))
                raise error from None
        return self.member_info(party)

    def member_info(self, party: Party) -> JoinInfo:
        """The federation's parameters for a party already admitted (its spec compared by
        :meth:`join_info`): a push transport sends them with every message. Counts the party
        as joined in the current round."""
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.JOIN, number)
            if (party.id, number) not in self._joined:  # joining again cannot grow the log
                self._joined.add((party.id, number))
                self._record(ev.ClientJoined(client=party.id, role=party.role))
        return JoinInfo(
            federation_id=self.config.federation_id,
            role=party.role,
            key_fingerprint=self.fingerprint,
            codec=self.codec,
            encryption_type=self.fl.encryption_type,
            aggregation_frequency=self.fl.aggregation_frequency,
            participant_threshold=self.fl.participant_threshold,
            decryption_threshold=self.fl.decryption_threshold,
            rounds=self.fl.rounds,
            num_parameters=self.num_parameters,
            coordinator_signing_key=self.public_key,
            chunk_bytes=self.config.server.chunk_bytes,
            max_weight=self.config.codec.max_weight,
            ticket_quorum=self.quorum,
            spec_json=canonical_spec(self.spec) if self.spec is not None else "",
        )

    def global_chunks(self, version: int) -> tuple[bytes, Iterator[bytes]]:
        path = self.store.global_path(version)
        if not path.exists():
            raise NotFoundError(f"global adapter version {version} does not exist")
        return self.global_digest(version), self.store.read_chunks(
            path, self.config.server.chunk_bytes
        )

    def checkpoint(self) -> SignedCheckpoint:
        """The audit log's newest signed checkpoint."""
        return SignedCheckpoint.from_dict(self.audit.latest_checkpoint())

    # -- contributions -----------------------------------------------------------------------
    def _reject(self, party: Party, round_number: int, error: FedLoraError) -> FedLoraError:
        self.admission.rejected(
            party.id,
            ev.ContributionRejected(reason=str(error), round=round_number, client=party.id),
        )
        return error

    def reject_malformed_upload(self, party: Party, reason: str) -> FedLoraError:
        """Audit an upload that could not even be parsed; returns the error to raise."""
        with self._lock:
            number = self.round.number if self.round else 0
        return self._reject(party, number, VerificationError(reason))

    def _rules(self) -> ContributionRules:
        r = self.round
        assert r is not None
        return ContributionRules(
            round_number=r.number,
            global_version=r.global_version,
            global_digest=r.global_digest,
            max_weight=self.config.codec.max_weight,
            value_count=self.num_parameters,
            record_count=self.record_count,
            key_fingerprint=self.fingerprint,
            codec_digest=self.codec.digest(),
        )

    def accept_contribution(
        self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]
    ) -> Receipt:
        """Validate, store durably, audit and sign a receipt for one streamed contribution.

        Raises:
            ProtocolError: wrong stage or round, or a different second contribution.
            VerificationError: malformed, oversized, truncated, out-of-range or wrongly signed.
            RateLimitError: the party's rejection budget is spent, or it is uploading already.
        """
        with self.admission.admitted(party, "contribution", self._number):
            return self._accept_contribution(party, header, chunks)

    def _accept_contribution(
        self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]
    ) -> Receipt:
        with self._lock:
            number = self.round.number if self.round else 0
            try:
                check_message(self.stage, Message.CONTRIBUTION, number)
                check_contribution_header(header, self._rules())
            except FedLoraError as exc:
                raise self._reject(party, header.round_number, exc) from None
            existing = self.round.contributions.get(party.id) if self.round else None
        if existing is not None:  # the stored one stands; the rest of the stream is not read
            if hmac.compare_digest(existing.ciphertexts_digest, header.ciphertexts_digest):
                return self._receipt(number, existing, duplicate=True)
            raise self._reject(
                party, number, ProtocolError(f"{party.id} already contributed to round {number}")
            )
        final = self.store.contribution_path(number, party.id)
        temp = self.store.temp_path(final)
        try:
            received = receive_contribution(header, chunks, self.secure_sum, temp)
            try:
                statement = contribution_statement(
                    self.config.federation_id, party.id, header, received.digest
                )
                verify_signature(
                    bytes.fromhex(party.signing_public_key), statement, header.signature
                )
                # The sender must know its plaintexts: a vector mauled from others' cannot be proven.
                self.secure_sum.check_proof(
                    received.records,
                    header.knowledge_proof,
                    knowledge_context(
                        self.config.federation_id, number, party.id, self.fingerprint
                    ),
                )
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        except FedLoraError as exc:
            raise self._reject(party, number, exc) from None
        with self._lock:
            try:
                check_message(self.stage, Message.CONTRIBUTION, number)
                if self.round is None or self.round.number != number:
                    raise ProtocolError(
                        f"round {number} closed while the contribution was uploading"
                    )
                if party.id in self.round.contributions:
                    raise ProtocolError(f"{party.id} already contributed to round {number}")
            except FedLoraError as exc:
                temp.unlink(missing_ok=True)
                raise self._reject(party, number, exc) from None
            self.store.commit(temp, final)
            self._record(
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
            contribution = self.round.contributions[party.id]
        return self._receipt(number, contribution)

    def _receipt(self, number: int, c: Contribution, *, duplicate: bool = False) -> Receipt:
        """A signed receipt that carries its audit entry, a checkpoint and the inclusion proof."""
        digest = receipt_digest(
            federation_id=self.config.federation_id,
            round_number=number,
            client_id=c.client_id,
            contribution=c.contribution_digest,
            log_index=c.log_index,
            received_at_ms=c.received_at_ms,
        )
        checkpoint = self.checkpoint()
        _, path = self.audit.inclusion(c.log_index, checkpoint.tree_size)
        return Receipt(
            self.config.federation_id,
            number,
            c.client_id,
            c.contribution_digest,
            c.log_index,
            c.received_at_ms,
            sign_digest(self.signing_key, digest),
            duplicate,
            self.audit.entries(c.log_index, 1)[0],
            checkpoint,
            tuple(path),
        )

    # -- aggregation -------------------------------------------------------------------------
    def _aggregate(self, number: int, participants: tuple[str, ...]) -> Callable[[], None]:
        """Sum the stored contributions one at a time (memory: the sum plus one contribution).

        Runs outside the lock; returns what to apply under it.
        """
        r = self.round
        assert r is not None
        contributions = {p: r.contributions[p] for p in participants}
        total_weight = sum(c.weight for c in contributions.values())
        total: bytes | None = None
        for p in participants:
            records = self.store.contribution_path(number, p).read_bytes()
            total = self.secure_sum.add(total, records, contributions[p].weight)
        assert total is not None
        if not self.secure_sum.needs_decryption:
            mean = self.secure_sum.mean(total, total_weight)

            def publish() -> None:
                self._log_aggregated(participants, total_weight, b"", b"", 0)
                self._publish(mean, participants, decryptors=[])

            return publish
        assert self.key is not None
        self.store.write_bytes(self.store.aggregate_path(number), total)
        ciphertexts = unpack_records(total, self.width)
        aggregate_digest = ciphertext_vector_digest(self.key.paillier, ciphertexts)
        ticket = round_ticket(
            federation_id=self.config.federation_id,
            round_number=number,
            key_fingerprint=self.fingerprint,
            aggregate_digest=aggregate_digest,
            global_version=r.global_version,
            global_digest=r.global_digest,
            statements=[(p, contributions[p].contribution_digest) for p in participants],
        )

        def ticketing() -> None:
            deadline = self._now_ms() + int(self.fl.decryption_timeout_s * 1000)
            self._log_aggregated(participants, total_weight, aggregate_digest, ticket, deadline)
            self._cache_aggregate(number, ciphertexts)

        return ticketing

    def _log_aggregated(
        self,
        participants: tuple[str, ...],
        total_weight: int,
        aggregate_digest: bytes,
        ticket: bytes,
        decrypt_deadline_ms: int,
    ) -> None:
        r = self.round
        assert r is not None
        event = ev.Aggregated(
            round=r.number,
            participants=list(participants),
            total_weight=total_weight,
            contribution_digests=[
                r.contributions[p].ciphertexts_digest.hex() for p in participants
            ],
            aggregate_digest=aggregate_digest.hex(),
            ticket=ticket.hex(),
            ticket_quorum=self.quorum,
            decrypt_deadline_ms=decrypt_deadline_ms,
            encryption=self.fl.encryption_type,
        )
        if ticket:  # encrypted: the holders sign the ticket next
            self._enter(Stage.TICKETING, event)
        else:  # plaintext: the mean is published at once
            self._record(event)

    def _aggregate_ciphertexts(self, number: int) -> list[int]:
        return self._aggregate_of(number)[1]

    def _aggregate_of(self, number: int) -> tuple[int, list[int], dict[int, tuple[int, bytes]]]:
        """Round ``number``'s aggregate and its chunks (stop, digest) by first record: one
        snapshot, so a caller never pairs one round's ciphertexts with another's digests."""
        cache = self._aggregate_cache
        if cache is None or cache[0] != number:
            data = self.store.aggregate_path(number).read_bytes()
            cache = self._cache_aggregate(number, unpack_records(data, self.width))
        return cache

    def _cache_aggregate(
        self, number: int, cts: list[int]
    ) -> tuple[int, list[int], dict[int, tuple[int, bytes]]]:
        """Keep a round's aggregate in memory, with the digest of each of its chunks."""
        assert self.key is not None
        chunks = {
            first: (stop, ciphertext_vector_digest(self.key.paillier, cts[first:stop]))
            for first, stop in chunk_ranges(len(cts))
        }
        cache = (number, cts, chunks)
        self._aggregate_cache = cache  # one assignment: readers see the old or the new
        return cache

    def _chunk(self, number: int, first_record: int) -> tuple[list[int], bytes] | None:
        """The aggregate's chunk that starts at ``first_record`` and its digest (None: none)."""
        _, cts, chunks = self._aggregate_of(number)
        found = chunks.get(first_record)
        return None if found is None else (cts[first_record : found[0]], found[1])

    def _chunks(self, r: RoundState) -> list[tuple[int, int]]:
        return chunk_ranges(self.record_count) if r.ticket else []

    def _chunks_ready(self, r: RoundState) -> bool:
        """Every chunk of the aggregate has partial decryptions from ``t`` holders."""
        assert self.key is not None
        t = self.key.threshold
        return all(
            sum(first in chunks for chunks in r.partials.values()) >= t
            for first, _ in self._chunks(r)
        )

    def _complete(self, r: RoundState) -> set[str]:
        """The holders every chunk of whose partial decryption is accepted (none before the
        round's aggregate exists)."""
        count = len(self._chunks(r))
        return {p for p, chunks in r.partials.items() if count and len(chunks) == count}

    def _complete_partials(self, r: RoundState) -> int:
        return len(self._complete(r))

    def complete_partials(self) -> set[str]:
        """The holders whose whole partial decryption of the round's aggregate is accepted."""
        with self._lock:
            return self._complete(self.round) if self.round is not None else set()

    # -- tickets -----------------------------------------------------------------------------
    def _holder(self, party: Party) -> ThresholdPublicKey:
        if self.key is None or party.id not in self.key.party_ids:
            raise AuthorizationError(f"{party.id} holds no key share")
        return self.key

    def decryption_task(
        self, party: Party, round_number: int, *, manifest_only: bool = False
    ) -> tuple[DecryptionManifest, Iterator[tuple[str, bytes]]]:
        """The manifest and a stream of (client id or "", bytes) chunks: each contribution, then the aggregate."""
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.DECRYPTION_TASK, number)
            if round_number != number:
                raise ProtocolError(
                    f"round {round_number} is not being decrypted (round {number} is)"
                )
            self._holder(party)
            r = self.round
            assert r is not None
            checkpoint = self.checkpoint()
            manifest = DecryptionManifest(
                federation_id=self.config.federation_id,
                round_number=number,
                value_count=self.num_parameters,
                codec=self.codec,
                key_fingerprint=self.fingerprint,
                aggregate_digest=r.aggregate_digest,
                record_count=self.record_count,
                global_version=r.global_version,
                global_digest=r.global_digest,
                entries=self.manifest_entries(r.participants),
                ticket_signatures=tuple(sorted(r.ticket_signatures.items())),
                checkpoint=checkpoint,
                aggregated_entry=self.audit.entries(r.aggregated_index, 1)[0],
                aggregated_index=r.aggregated_index,
                aggregated_inclusion=tuple(
                    self.audit.inclusion(r.aggregated_index, checkpoint.tree_size)[1]
                ),
            )
            paths = [(p, self.store.contribution_path(number, p)) for p in r.participants]
            aggregate = self.store.aggregate_path(number)
        size = self.config.server.chunk_bytes

        def stream() -> Iterator[tuple[str, bytes]]:
            if manifest_only:
                return
            for client_id, path in paths:
                for chunk in self.store.read_chunks(path, size):
                    yield client_id, chunk
            for chunk in self.store.read_chunks(aggregate, size):
                yield "", chunk

        return manifest, stream()

    def manifest_entries(self, participants: Iterable[str]) -> tuple[ManifestEntry, ...]:
        """What a holder needs of each contribution of the open round to check it."""
        r = self.round
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
        self.admission.throttle(party, "ticket", self._number)
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.TICKET, number)
            self._holder(party)
            r = self.round
            assert r is not None
            try:
                if round_number != number:
                    raise ProtocolError(
                        f"ticket signature is for round {round_number}, round {number} is being decrypted"
                    )
                if not hmac.compare_digest(ticket, r.ticket):
                    raise VerificationError(
                        f"{party.id} signed a different ticket than round {number}'s"
                    )
                known = r.ticket_signatures.get(party.id)
                if known is not None:
                    return len(r.ticket_signatures), self.quorum
                verify_signature(bytes.fromhex(party.signing_public_key), ticket, signature)
            except FedLoraError as exc:
                self.admission.rejected(
                    party.id, ev.TicketRejected(reason=str(exc), round=number, party=party.id)
                )
                raise
            self._record(
                ev.TicketSigned(
                    round=number, party=party.id, ticket=ticket.hex(), signature=signature.hex()
                )
            )
            self._check_quorum()
            return len(r.ticket_signatures), self.quorum

    def _check_quorum(self) -> None:
        """TICKETING → DECRYPTING once the quorum signed (also after a restart between the two)."""
        r = self.round
        if r is None or self.stage is not Stage.TICKETING or len(r.ticket_signatures) < self.quorum:
            return
        self._enter(
            Stage.DECRYPTING,
            ev.TicketQuorum(
                round=r.number,
                ticket=r.ticket.hex(),
                signers=sorted(r.ticket_signatures),
                quorum=self.quorum,
            ),
        )

    # -- decryption --------------------------------------------------------------------------
    def accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        """Verify and store one decryptor's partial decryption with its proof.

        Every bound is checked before any exponentiation; the proof check runs outside the lock.

        Raises:
            ProtocolError: wrong stage or round; AuthorizationError: not a share holder;
            VerificationError: wrong vector or ticket, malformed, out of bounds, or a failing
            proof or signature (the party is named); RateLimitError: rejection budget spent,
            or a partial from this party is being examined already.
        """
        with self.admission.admitted(party, "partial decryption", self._number):
            self._accept_partial(party, header, chunks)

    def _accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.PARTIAL_DECRYPTION, number)
            if header.round_number != number:
                raise ProtocolError(
                    f"partial decryption is for round {header.round_number}, round {number} is being decrypted"
                )
            key = self._holder(party)
            r = self.round
            assert r is not None
            first = header.first_record
            if first in r.partials.get(party.id, {}):  # accepted already; the resend is not read
                return
            found = self._chunk(number, first)
            ticket = r.ticket
        try:
            if found is None:
                raise VerificationError(
                    f"partial decryption chunk from record {first}: no chunk of the aggregate "
                    f"starts there ({len(chunk_ranges(self.record_count))} chunks, "
                    f"{self.record_count} records)"
                )
            chunk, chunk_digest = found
            check_partial_header(  # the cheap checks, before a byte of the chunk is read
                header, key=key, ticket=ticket, chunk_digest=chunk_digest, chunk_length=len(chunk)
            )
            data = receive_bounded(chunks, len(chunk) * self.width, "partial decryption")
            partial = verify_partial(
                federation_id=self.config.federation_id,
                key=key,
                party_id=party.id,
                signing_public_key=bytes.fromhex(party.signing_public_key),
                header=header,
                values=data,
                ciphertexts=chunk,
                chunk_digest=chunk_digest,
                ticket=ticket,
                backend=self.backend,
            )
        except FedLoraError as exc:
            raise self._reject_partial(party, number, exc) from None
        with self._lock:
            if (
                self.round is None
                or self.round.number != number
                or self.stage is not Stage.DECRYPTING
            ):
                raise ProtocolError(
                    f"round {number} moved on while the partial decryption was uploading"
                )
            if first in self.round.partials.get(party.id, {}):
                return
            self.store.write_bytes(self.store.partial_path(number, party.id, first), data)
            self._record(
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
            ready = self._take_chunk(self.round, first)
        if ready is not None:  # t holders answered this chunk: combine it now, outside the lock
            self._combine_chunk(number, first, ready)

    def _not_combining(self, number: int, first: int) -> bool:
        return (number, first) not in self._combining

    def _take_chunk(self, r: RoundState, first: int) -> list[str] | None:
        """The ``t`` holders to combine chunk ``first`` from, once that many answered it and no
        one combines it yet (under the lock); None otherwise."""
        assert self.key is not None
        if (r.number, first) in self._combined or (r.number, first) in self._combining:
            return None
        holders = sorted(p for p, chunks in r.partials.items() if first in chunks)
        if len(holders) < self.key.threshold:
            return None
        self._combining.add((r.number, first))
        return holders[: self.key.threshold]

    def _combine_chunk(self, number: int, first: int, holders: list[str]) -> None:
        """Combine one chunk from ``holders``' verified partials (the caller marked it as being
        combined); any failure leaves it to the COMBINING step, which tries again and fails the
        round if it fails there. Never raises: the holder whose chunk completed it must not see
        another's fault."""
        key = self.key
        assert key is not None
        plaintexts = None
        try:
            found = self._chunk(number, first)
            assert found is not None
            chunk = found[0]
            partials = [
                PartialDecryption(
                    pid,
                    key.index_of(pid),
                    key.fingerprint,
                    b"",
                    tuple(
                        unpack_records(
                            self.store.partial_path(number, pid, first).read_bytes(), self.width
                        )
                    ),
                    DecryptionProof(0, 0),  # verified when accepted
                )
                for pid in holders
            ]
            plaintexts = combine_verified_partials(key, len(chunk), partials, backend=self.backend)
        except Exception:  # the COMBINING step retries this chunk and names the failure
            plaintexts = None
        finally:
            with self._lock:
                self._combining.discard((number, first))
                r = self.round
                if plaintexts is not None and r is not None and r.number == number:
                    self._combined.setdefault((number, first), (plaintexts, tuple(holders)))
                self._wake.notify_all()

    def _reject_partial(self, party: Party, number: int, error: FedLoraError) -> FedLoraError:
        self.admission.rejected(
            party.id, ev.PartialRejected(reason=str(error), round=number, party=party.id)
        )
        return error

    def _combine(self, number: int) -> Callable[[], None]:
        """Combine the chunks not combined yet (after a restart, or while one was in flight) and
        decode the mean (outside the lock)."""
        r, key = self.round, self.key
        assert r is not None and key is not None
        plaintexts: list[int] = []
        decryptors: set[str] = set()
        for first, _ in self._chunks(r):
            with self._wake:  # a chunk still being combined by the upload that completed it
                self._wake.wait_for(functools.partial(self._not_combining, number, first))
                done = self._combined.get((number, first))
                holders = sorted(p for p, chunks in r.partials.items() if first in chunks)
                if done is None:
                    self._combining.add((number, first))
            if done is None:
                self._combine_chunk(number, first, holders[: key.threshold])
                with self._lock:
                    done = self._combined.get((number, first))
                if done is None:
                    raise VerificationError(
                        f"the partial decryptions of the chunk from record {first} do not combine"
                    )
            plaintexts.extend(done[0])
            decryptors.update(done[1])
        mean = decode(
            plaintexts, self.codec, length=self.num_parameters, total_weight=r.total_weight
        )
        names = sorted(decryptors)

        def publish() -> None:
            assert self.round is not None
            self._record(ev.Decrypted(round=number, decryptors=names))
            self._publish(mean, self.round.participants, decryptors=names)

        return publish

    def _publish(
        self, mean_delta: np.ndarray, participants: tuple[str, ...], decryptors: list[str]
    ) -> None:
        r = self.round
        assert r is not None
        current = self.store.load_global(r.global_version).astype(np.float64)
        new_version = r.number
        updated = self.secure_sum.rule.update(current, mean_delta)
        digest = self._save_and_publish(new_version, updated.astype(np.float32))
        self._record(
            ev.RoundClosed(
                round=r.number,
                global_version=new_version,
                global_digest=digest.hex(),
                participants=list(participants),
                decryptors=decryptors,
                duration_ms=self._now_ms() - r.opened_ms,
            )
        )
        self._end_round()

    def _save_and_publish(self, version: int, vector: np.ndarray) -> bytes:
        """Store a global version (and its peft adapter, with a template) and audit its digests."""
        digest = self.store.save_global(version, vector)
        self._digests[version] = digest
        adapter = None
        if self.template is not None:
            written = self.template.write(
                vector, self.store.global_path(version).with_suffix(".adapter")
            )
            adapter = written.hex()
        self._record(
            ev.GlobalPublished(version=version, global_digest=digest.hex(), adapter_digest=adapter)
        )
        return digest

    @property
    def finished(self) -> bool:
        with self._lock:
            return self.stage is Stage.FINISHED


MAX_SPEC_CHARS = 64 << 10


def _load_spec(config: CoordinatorConfig) -> dict[str, Any] | None:
    """The federation spec: ``model.spec``, else the template folder's, else none."""
    path, where = config.model.spec, "model.spec"
    if path is None and config.model.adapter_template is not None:
        path, where = config.model.adapter_template / SPEC_FILE, "model.adapter_template"
        if not path.exists():
            return None  # a template written before specs existed
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    spec = parse_spec(text, f"{where}: {path}")
    count = spec.get("model.num_parameters")
    if count is not None and count != config.model.num_parameters:
        raise ConfigError(
            f"{where}: {path} describes a model of {count} parameters, model.num_parameters is "
            f"{config.model.num_parameters}"
        )
    return spec
