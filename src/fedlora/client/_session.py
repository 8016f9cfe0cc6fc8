"""A bank's or hospital's client: joins the federation and works through its rounds.

The orchestrator only: the protocol's steps are :mod:`fedlora.protocol` functions, the wire is a
:class:`fedlora.client.Transport`, durable state is the ledger and the checkpoint anchor, and
what the operator sees is :class:`fedlora.client._ui.Reporter`.

For each round it pulls the global adapter, trains locally, seals and signs its delta
(:func:`fedlora.protocol.build_contribution`), uploads it, and checks the receipt with its audit
entry, checkpoint and inclusion proof. As a share holder it releases a partial decryption only
for an aggregate it has checked itself (DESIGN.md §4 step 4): :func:`fedlora.protocol.check_task`,
the ticket in the anchored log, the ticket recorded durably before it is signed, and a quorum of
holders' signatures on the same ticket before the partial goes out. Every audit checkpoint it sees
must extend the one it kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console

from fedlora._files import StateLock, check_private, replace_file
from fedlora.audit import SignedCheckpoint
from fedlora.client._ledger import AnchorError, CheckpointAnchor, DecryptorLedger
from fedlora.client._models import ModelKeeper, version_folder
from fedlora.client._spec import federation_spec
from fedlora.client._transport import Transport
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig
from fedlora.crypto import (
    CodecParams,
    KeyShare,
    ModexpBackend,
    ObfuscatorPool,
    ThresholdPublicKey,
    open_key_share,
    select_backend,
    sign_digest,
)
from fedlora.errors import (
    ConfigError,
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
    JoinExpectations,
    JoinInfo,
    PartialHeader,
    Receipt,
    RoundStatus,
    SecureSum,
    SignedContribution,
    Stage,
    build_contribution,
    canonical_spec,
    check_join,
    check_receipt,
    check_round_in_log,
    check_task,
    check_ticket_logged,
    make_partials,
    manifest_ticket,
    secure_sum_for,
    valid_ticket_signatures,
)

if TYPE_CHECKING:
    from fedlora.client._training import LocalTrainer


TRAINED_FROM = "trained-from.json"
TRAINING_RUNS = "training-runs.json"  # how many times this client has trained, ever


def sampler_seed(seed: int, federation_id: str, client_id: str, round_number: int, run: int) -> int:
    """The seed of one training run's batch sampler: never the same twice for one client.

    With one seed for every run, a client asked to train again from the same global model (a
    failed round's next round, or a restart the coordinator answers with an old round) sends the
    same delta bit for bit; a coordinator that collects several aggregates over different
    subsets of such fixed deltas can solve for each one. ``run`` counts this client's training
    runs on disk, so even the same round from the same global draws other batches. Reproducible
    from a fresh state folder (run ``r − 1`` in round ``r``), as the benchmarks need to pair a
    plaintext FedAvg with the encrypted federation batch for batch.
    """
    material = json.dumps([seed, federation_id, client_id, round_number, run]).encode()
    return int.from_bytes(hashlib.sha256(b"fedlora-sampler\0" + material).digest()[:8], "big") >> 1


KEEP_TRAINED_FROM = 32  # rounds: far more than can be decrypting at once


def _load_trained_from(path: Path) -> dict[int, tuple[int, bytes]]:
    """Round -> (global version, digest) this client trained from; {} when none is recorded.

    The file is this client's own (like its ledger); what cannot be read as such is ignored, so
    the check it feeds falls back to the other checks a holder runs on every aggregate.
    """
    try:
        doc = json.loads(path.read_bytes())
        out = {}
        for round_text, (version, digest) in doc.items():
            if type(version) is not int or len(bytes.fromhex(digest)) != 32:
                raise ValueError(round_text)
            out[int(round_text)] = (version, bytes.fromhex(digest))
        return out
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return {}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _private_key(path: Path, what: str, kind: Any) -> Any:
    check_private(path, what)
    try:
        key = load_pem_private_key(_read(path, what), password=None)
    except ValueError:
        raise ConfigError(f"{what}: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, kind):
        raise ConfigError(f"{what}: {path} is not an {kind.__name__.replace('PrivateKey', '')} key")
    return key


@dataclass(frozen=True)
class Federation:
    """What Join told us, checked against our own files."""

    info: JoinInfo
    secure_sum: SecureSum
    min_participants: int  # the smallest aggregate this client helps decrypt
    ticket_quorum: int  # ticket signatures this client requires before it releases a partial

    @property
    def codec(self) -> CodecParams:
        return self.info.codec

    @property
    def homomorphic(self) -> bool:
        return self.info.homomorphic


class Client:
    def __init__(
        self,
        config: ClientConfig,
        *,
        trainer: LocalTrainer | None = None,
        console: Console | None = None,
        transport: Transport | None = None,
        backend: ModexpBackend | None = None,
        refusal_interval_s: float = 0.0,
    ) -> None:
        """``refusal_interval_s``: see :class:`DecryptorLedger` (a push transport sets it)."""
        self.config = config
        if backend is None and config.crypto.backend != "auto":
            try:
                backend = select_backend(config.crypto.backend)[0]
            except FedLoraError as exc:
                raise ConfigError(f"crypto.backend: {exc}") from None
        self.backend = backend  # None: fedlora.crypto's default (auto)
        self.ui = Reporter(console)
        self.signing_key = _private_key(
            config.keys.signing_key, "keys.signing_key", Ed25519PrivateKey
        )
        self.coordinator_key = bytes.fromhex(config.keys.coordinator_signing_public_key)
        self.peers = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
        if trainer is None:
            from fedlora.client._training import make_trainer  # torch: the [client] extra

            trainer = make_trainer(config)
        self.trainer = trainer
        self.key: ThresholdPublicKey | None = None
        self.share: KeyShare | None = None
        self.holder: HolderPolicy | None = None
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if transport is None:
            from fedlora.client._connect import connect  # grpc only when networked

            transport = connect(config, self.ui.warn)
        self.transport = transport
        self.fed: Federation | None = None
        self.ledger = DecryptorLedger(
            self.state_dir, config.federation_id, refusal_interval_s=refusal_interval_s
        )
        self.anchor = CheckpointAnchor(self.state_dir, config.federation_id, self.coordinator_key)
        self.models = ModelKeeper(self.state_dir, config.federation_id, self.coordinator_key)
        self._kept_version, self._kept_final = 0, False
        # What this client trained from in each round (on disk, so that a restart, or a push
        # transport's next message, still checks the aggregate it is asked to decrypt against
        # it), and the aggregates it verified in full (so waiting for the ticket quorum re-reads
        # only the manifest).
        self._trained_from = _load_trained_from(self.state_dir / TRAINED_FROM)
        self._verified: dict[int, CheckedAggregate] = {}
        self._delivered: dict[int, set[int]] = {}  # round -> chunks of its partial delivered
        # The next round's obfuscators, computing between rounds (crypto.obfuscators_ahead).
        self._next_pool: ObfuscatorPool | None = None

    # -- joining ---------------------------------------------------------------------------------
    def open_keys(self) -> None:
        """Load the pinned threshold key and open this party's share, before anything is sent.

        A wrong or damaged share file is refused here, without contacting the coordinator.

        Raises:
            ConfigError, CryptoError: a key file that is missing, unreadable, or not this
                party's share of the pinned key.
        """
        if self.key is not None:
            return
        key = ThresholdPublicKey.from_json(
            _read(self.config.keys.threshold_public_key, "keys.threshold_public_key")
        )
        if self.config.id in key.party_ids:
            x25519 = _private_key(self.config.keys.x25519_key, "keys.x25519_key", X25519PrivateKey)
            path = self.config.keys.key_share
            try:
                self.share = open_key_share(
                    _read(path, "keys.key_share"), x25519, party_id=self.config.id, public_key=key
                )
            except CryptoError as exc:
                raise ConfigError(f"keys.key_share: {path}: {exc}") from None
        self.key = key

    def join(self, spec: dict[str, Any] | None = None) -> Federation:
        """Join the federation: fetch its announcement and check it against this client's files.

        ``spec``: this client's federation spec, where the caller computed it (on Flower, from
        the client YAML's model section); by default from the trainer's model.
        """
        if spec is None:
            spec = federation_spec(self.config, self.trainer)
        if not self.config.policy.allow_plaintext:
            self.open_keys()  # a wrong share file is refused before the coordinator hears of us
        info = self.transport.join(canonical_spec(spec))
        key = None
        if info.homomorphic:
            self.open_keys()
            key = self.key
        joined = check_join(
            info,
            JoinExpectations(
                federation_id=self.config.federation_id,
                coordinator_key=self.coordinator_key,
                policy=self.config.policy,
                testing=self.config.testing,
                num_parameters=self.trainer.num_parameters,
                spec=spec,
                client_id=self.config.id,
            ),
            key,
        )
        if not info.homomorphic:
            self.key, self.share = None, None
        if key is not None and self.share is not None:
            self.holder = HolderPolicy(
                federation_id=self.config.federation_id,
                party_id=self.config.id,
                key=key,
                codec=info.codec,
                peers=self.peers,
                min_participants=joined.min_participants,
                ticket_quorum=joined.ticket_quorum,
            )
        self.fed = Federation(
            info,
            secure_sum_for(info.encryption_type, key, info.codec, backend=self.backend),
            joined.min_participants,
            joined.ticket_quorum,
        )
        if not info.spec_json:
            self.ui.warn(
                f"{self.config.id}: the federation announces no model spec, so only the parameter "
                "count is compared at join (a member with another base model or LoRA seed would "
                "go unnoticed); its coordinator YAML should name one in model.spec (`fedlora model "
                "template` and `fedlora flower prepare` write it)"
            )
        if info.homomorphic and info.ticket_quorum < joined.ticket_quorum:
            self.ui.warn(
                f"{self.config.id}: the coordinator waits for {info.ticket_quorum} ticket "
                f"signatures, this client requires {joined.ticket_quorum}; rounds may fail at their "
                "deadline"
            )
        if 1 < info.max_weight < self.trainer.num_examples:  # max_weight 1: unweighted on purpose
            self.ui.warn(
                f"{self.config.id}: {self.trainer.num_examples} local examples, but the federation caps a "
                f"contribution's weight at {info.max_weight} (codec.max_weight); this client is weighted "
                f"{info.max_weight}"
            )
        role = "decryptor" if self.share else "contributor"
        self.ui.info(
            f"{self.config.id}: joined {info.federation_id!r} as {info.role} {role}; {info.rounds} rounds, "
            f"{info.aggregation_frequency} local steps each, {info.encryption_type} aggregation"
        )
        if self.share:
            line = (
                select_backend("auto")[1]
                if self.backend is None
                else f"modexp backend: {self.backend.name}"
            )
            self.ui.info(f"{self.config.id}: {line}")
        return self.fed

    def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            return self.transport.consistency_proof(old_size, new_size)
        except RemoteError as exc:
            raise VerificationError(
                f"the coordinator cannot prove that its log of {new_size} entries extends the one of "
                f"{old_size} ({exc})"
            ) from None

    def observe_checkpoint(self, cp: SignedCheckpoint, round_number: int) -> None:
        """Check a checkpoint against the kept one; a shrunk or forked log stops this client.

        Raises:
            VerificationError: and the refusal is written to the client's ledger.
        """
        try:
            self.anchor.observe(cp, self._consistency)
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "audit checkpoint", str(exc))
            raise AnchorError(f"{exc}; this client stops (see docs/audit.md)") from None

    # -- the round loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Work through the federation until it finishes; one instance per state folder."""
        lock = StateLock(self.state_dir, "fedlora client")
        try:
            return self._run()
        finally:
            self.close()
            lock.release()

    def keep_models(self, round_number: int, rounds_total: int | None = None) -> None:
        """Keep every newly published global version, verified against the anchored log.

        Raises:
            VerificationError: the coordinator's log or download is not what it signed (the
                refusal is also written to this client's ledger).
        """
        self.observe_checkpoint(self.transport.checkpoint(), round_number)
        assert self.anchor.current is not None
        save = getattr(self.trainer, "save_adapter", None)
        total = (
            rounds_total
            if rounds_total is not None
            else (self.fed.info.rounds if self.fed else round_number)
        )
        try:
            lines = self.models.sync(
                self.transport,
                self.anchor.current,
                save,
                num_parameters=self.trainer.num_parameters,
                max_version=max(total, round_number),
            )
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "global adapter", str(exc))
            raise
        for line in lines:
            self.ui.info(f"{self.config.id}: {line}")

    def _run(self) -> int:
        fed = self.join()
        seen_done: set[tuple[int, str]] = set()
        waiting = -1
        while True:
            status = self.transport.round_status()
            if status.stage is Stage.FINISHED:
                self.step(fed, status, seen_done)  # keeps the final version
                vector = self.download_global(status.global_version, status.global_digest)
                folder = version_folder(self.state_dir, status.global_version)
                where = (
                    f"kept in {folder}"
                    if (folder / "final.json").exists()
                    else "not kept (no verified end)"
                )
                self.ui.info(
                    f"{self.config.id}: federation finished after {status.rounds_total} rounds; global adapter "
                    f"v{status.global_version} {status.global_digest.hex()[:16]}… {where}, local "
                    f"{getattr(self.trainer, 'metric_name', 'accuracy')} "
                    f"{self.trainer.evaluate(vector):.3f}"
                )
                return 0
            if status.stage is Stage.WAITING and len(status.joined) != waiting:
                waiting = len(status.joined)
                self.ui.info(
                    f"{self.config.id}: waiting for {status.min_clients} parties to join before round 1 "
                    f"({waiting} joined: {', '.join(status.joined)})"
                )
            try:
                self.step(fed, status, seen_done)
            except RemoteError as exc:
                if exc.reason is not ProtocolError:
                    raise
                # The round moved on between our status poll and this call: normal, carry on.
                self.ui.info(f"{self.config.id}: round {status.round} moved on ({exc})")
            time.sleep(self.config.retry.poll_interval_s)

    def step(self, fed: Federation, status: RoundStatus, seen_done: set[tuple[int, str]]) -> None:
        """Do what the round's stage asks of this client, once.

        Every newly published global version (and the final one) is kept first, verified
        against the anchored audit log (:mod:`fedlora.client._models`).
        """
        if status.global_version != self._kept_version or (
            status.stage is Stage.FINISHED and not self._kept_final
        ):
            self.keep_models(status.round, status.rounds_total)
            self._kept_version = status.global_version
            self._kept_final = status.stage is Stage.FINISHED
        if status.stage is Stage.COLLECTING and not status.contributed:
            self.contribute(fed, status)
        elif (
            self.share is not None
            and (status.round, "decrypt") not in seen_done
            and (
                (status.stage is Stage.TICKETING and not status.ticket_signed)
                or (status.stage is Stage.DECRYPTING and not status.partial_submitted)
            )
        ):
            try:
                if self.decrypt(status.round):
                    seen_done.add((status.round, "decrypt"))
            except (VerificationError, CryptoError) as exc:
                if isinstance(exc, AnchorError):
                    raise
                seen_done.add((status.round, "decrypt"))
                self.ui.error(f"{self.config.id}: refusing to decrypt round {status.round}: {exc}")

    def download_global(self, version: int, expected: bytes | None) -> np.ndarray:
        """A global version, checked against ``expected`` (None: only against the digest sent
        with it — for older versions whose digest the client does not hold)."""
        data, digest = self.transport.download_global(version)
        if hashlib.sha256(data).digest() != digest or (
            expected is not None and not hmac.compare_digest(digest, expected)
        ):
            raise VerificationError(f"global adapter v{version} does not match its digest")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def contribute(self, fed: Federation, status: RoundStatus) -> None:
        """Train, seal, upload and check the receipt: this client's part of a round."""
        started = time.monotonic()
        r = status.round
        with self.ui.stages() as bars:
            sent = self.seal(fed, status, bars)
            upload = bars.bar(f"{self.config.id} round {r}: uploading", len(sent.records))
            try:
                receipt = self.transport.upload_contribution(sent.header, sent.records, upload)
            except RemoteError as exc:
                if exc.reason is ProtocolError:  # the round moved on: normal, not a fault
                    self.ui.info(
                        f"{self.config.id} round {r}: the round closed before this "
                        f"contribution arrived; it takes part in the next round ({exc})"
                    )
                else:
                    self.ui.error(f"{self.config.id} round {r}: contribution refused: {exc}")
                return
            except TransportError as exc:  # the next status poll retries or gives up
                self.ui.error(f"{self.config.id} round {r}: contribution not delivered: {exc}")
                return
        self.accept_receipt(fed, sent, receipt)
        self.ui.info(
            f"{self.config.id} round {r}: sent {len(sent.records) / 1e6:.2f} MB, receipt at audit "
            f"entry {receipt.log_index}, {time.monotonic() - started:.1f}s in all"
        )

    def obfuscator_pool(self, fed: Federation) -> ObfuscatorPool | None:
        """A started pool of one contribution's obfuscators (None without a threshold key): the
        one the last contribution started for this round, when it is for this key and size."""
        if self.key is None:
            return None
        capacity = fed.codec.ciphertexts_for(fed.info.num_parameters)
        ahead, self._next_pool = self._next_pool, None
        if ahead is not None:
            if ahead.public_key == self.key.paillier and ahead.capacity == capacity:
                return ahead
            ahead.close()
        return ObfuscatorPool(self.key.paillier, capacity=capacity, backend=self.backend).start()

    def close(self) -> None:
        """Stop computing obfuscators for a round that will not come (idempotent)."""
        self.keep_pool_ahead(None)

    def pool_ahead(self) -> ObfuscatorPool | None:
        """Hand over the next round's pool (started by :meth:`seal`), for a caller whose
        ``Client`` lasts one message but whose process lasts longer (the Flower mod)."""
        ahead, self._next_pool = self._next_pool, None
        return ahead

    def keep_pool_ahead(self, pool: ObfuscatorPool | None) -> None:
        """Use ``pool`` for the next round when its key and size match (see
        :meth:`obfuscator_pool`); a pool kept before is closed."""
        ahead, self._next_pool = self._next_pool, pool
        if ahead is not None and ahead is not pool:
            ahead.close()

    def seal(
        self,
        fed: Federation,
        status: RoundStatus,
        bars: Any = None,
        *,
        pool: ObfuscatorPool | None = None,
    ) -> SignedContribution:
        """Train from the round's global version and seal the signed, encrypted delta.

        Obfuscators are computed in the background while the model trains: in a pool started
        here, or in ``pool``, which a caller whose training runs before this call (Flower's)
        started from :meth:`obfuscator_pool` before it; the pool is closed here.
        """
        started = time.monotonic()
        r, info = status.round, fed.info
        base = self.download_global(status.global_version, status.global_digest)
        self._trained_from[r] = (status.global_version, bytes(status.global_digest))
        self._save_trained_from()  # before the contribution can leave
        self.trainer.reseed(
            sampler_seed(
                self.config.training.seed,
                self.config.federation_id,
                self.config.id,
                r,
                self._next_training_run(),
            )
        )
        if pool is None:
            pool = self.obfuscator_pool(fed)
        try:
            train = (
                bars.bar(f"{self.config.id} round {r}: training", info.aggregation_frequency)
                if bars is not None
                else None
            )
            steps = 0

            def on_step() -> None:
                nonlocal steps
                steps += 1
                if train is not None:
                    train(steps)

            local = self.trainer.train(base, info.aggregation_frequency, on_step=on_step)
            t_train = time.monotonic() - started
            delta = local.astype(np.float64) - base.astype(np.float64)
            weight = fed.secure_sum.rule.weight(self.trainer.num_examples, info.max_weight)
            if self.config.debug.save_plaintext_deltas:
                self._save_delta(r, delta, weight)
            sealing = bars.bar(f"{self.config.id} round {r}: encrypting", 1) if bars else None
            sent = build_contribution(
                federation_id=self.config.federation_id,
                client_id=self.config.id,
                round_number=r,
                global_version=status.global_version,
                global_digest=status.global_digest,
                delta=delta,
                weight=weight,
                secure_sum=fed.secure_sum,
                signing_key=self.signing_key,
                obfuscators=pool,
            )
            if sealing is not None:
                sealing(1)
        finally:
            if pool is not None:
                pool.close()
        if pool is not None and self.config.crypto.obfuscators_ahead and r < status.rounds_total:
            # Each obfuscator is used once; the next round's are computed while this round is
            # aggregated and decrypted, so its sealing starts warm even when training is short.
            self._next_pool = self.obfuscator_pool(fed)
        what = "ciphertexts" if fed.homomorphic else "values"
        self.ui.info(
            f"{self.config.id} round {r}: trained {info.aggregation_frequency} steps in "
            f"{t_train:.1f}s, sealed {sent.header.record_count:,} {what}"
        )
        return sent

    def accept_receipt(self, fed: Federation, sent: SignedContribution, receipt: Receipt) -> None:
        """Check a receipt against what was sent, anchor its checkpoint and keep it.

        Raises:
            VerificationError: a receipt that is not for this upload (also in the ledger).
        """
        r = sent.header.round_number
        try:
            parsed, doc = check_receipt(
                receipt,
                federation_id=self.config.federation_id,
                client_id=self.config.id,
                sent=sent,
                coordinator_key=self.coordinator_key,
            )
        except VerificationError as exc:
            self.ledger.record_refusal(r, "receipt", str(exc))
            raise
        self.observe_checkpoint(parsed.checkpoint, r)
        folder = self.state_dir / "receipts"
        folder.mkdir(exist_ok=True)
        (folder / f"round-{receipt.round_number:05d}.json").write_text(
            json.dumps(doc, indent=2) + "\n"
        )

    def sealed_rounds(self) -> set[int]:
        """The rounds this client sealed a contribution for (recorded before it could leave)."""
        return set(self._trained_from)

    def _release(self, holder: HolderPolicy, share: KeyShare, checked: CheckedAggregate) -> int:
        """Send the proven partial decryption chunk by chunk: each chunk uploads (and the
        coordinator checks and combines it) while this holder computes the next. Returns the
        number of chunks sent.

        Raises:
            RemoteError, TransportError: the first upload that failed (no chunk after it is sent).
        """
        outbox: queue.Queue[tuple[PartialHeader, bytes] | None] = queue.Queue(maxsize=2)
        failed: list[BaseException] = []
        # Chunks delivered in an earlier try of this round (a lost connection) are not redone.
        delivered = self._delivered.setdefault(checked.round_number, set())

        def upload() -> None:
            while (item := outbox.get()) is not None:
                if not failed:
                    try:
                        self.transport.submit_partial(*item)
                        delivered.add(item[0].first_record)
                    except BaseException as exc:  # raised on the caller's thread below
                        failed.append(exc)

        uploader = threading.Thread(target=upload, name="fedlora-partial-upload", daemon=True)
        uploader.start()
        sent = 0
        try:
            for item in make_partials(
                holder, share, self.signing_key, checked, backend=self.backend, skip=delivered
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

    def _next_training_run(self) -> int:
        """This client's training-run counter, advanced on disk before the run starts."""
        path = self.state_dir / TRAINING_RUNS
        try:
            run = int(json.loads(path.read_bytes())["runs"])
        except (OSError, ValueError, TypeError, KeyError):
            run = 0
        replace_file(path, json.dumps({"runs": run + 1}).encode())
        return run

    def _save_trained_from(self) -> None:
        newest = sorted(self._trained_from)[-KEEP_TRAINED_FROM:]
        self._trained_from = {r: self._trained_from[r] for r in newest}
        doc = {str(r): [v, d.hex()] for r, (v, d) in self._trained_from.items()}
        replace_file(self.state_dir / TRAINED_FROM, json.dumps(doc).encode())

    def _save_delta(self, r: int, delta: np.ndarray, weight: int) -> None:
        folder = self.state_dir / "deltas"
        folder.mkdir(exist_ok=True)
        np.save(folder / f"round-{r:05d}.npy", delta)
        (folder / f"round-{r:05d}.json").write_text(json.dumps({"weight": weight}))

    # -- decryption ------------------------------------------------------------------------------
    def checked_aggregate(self, round_number: int) -> CheckedAggregate | None:
        """The aggregate this holder verified in full for a round, while it waits for the quorum."""
        return self._verified.get(round_number)

    def restore_checked_aggregate(self, checked: CheckedAggregate) -> None:
        """Give back an aggregate this holder verified earlier (a push transport keeps it on disk
        between messages); the next :meth:`decrypt` then needs only the manifest."""
        self._verified[checked.round_number] = checked

    def decrypt(self, round_number: int) -> bool:
        """Do this share holder's part of decrypting ``round_number``; True once it is done.

        Verifies the task in full (once per round), records and signs the round's ticket, and
        releases a proven partial decryption only when ``ticket_quorum`` distinct holders signed
        the same ticket. Returns False while the quorum is still being gathered. A refusal is
        written to the client's ledger before it is raised.

        Raises:
            VerificationError, CryptoError: the task fails a check, or the ledger refuses it.
        """
        try:
            return self._decrypt(round_number)
        except (VerificationError, CryptoError) as exc:
            if not isinstance(exc, AnchorError):  # already recorded where it was found
                self.ledger.record_refusal(round_number, "decryption", str(exc))
            raise

    def _decrypt(self, round_number: int) -> bool:
        holder, share = self.holder, self.share
        assert holder is not None and share is not None
        started = time.monotonic()
        cached = self._verified.get(round_number)
        task = self.transport.decryption_task(round_number, manifest_only=cached is not None)
        manifest = task.manifest
        self.observe_checkpoint(manifest.checkpoint, round_number)
        check_round_in_log(round_number, manifest.checkpoint.tree_size)
        if cached is None:
            checked = check_task(
                holder,
                task,
                round_number,
                trained_from=self._trained_from.get(round_number),
                backend=self.backend,
            )
            self.ledger.check_ticket(round_number, checked.ticket)
        else:
            checked = cached
            if manifest.round_number != round_number or manifest_ticket(holder, manifest) != (
                checked.ticket
            ):
                raise VerificationError(
                    f"the coordinator changed round {round_number}'s ticket while it was being signed"
                )
        ticket = checked.ticket
        check_ticket_logged(manifest, round_number, ticket, checked.participants)
        self.ledger.record_ticket(
            round_number, ticket, manifest.aggregate_digest, list(checked.participants)
        )
        signers = valid_ticket_signatures(holder, manifest, ticket)
        if self.config.id not in signers:  # the coordinator records every holder's signature
            own = sign_digest(self.signing_key, ticket)
            ack = self.transport.submit_ticket(round_number, ticket, own)
            signers[self.config.id] = own
            self.ui.info(
                f"{self.config.id} round {round_number}: verified {len(manifest.entries)} signed "
                f"contributions and the aggregate, signed the decryption ticket ({ack.signatures} of "
                f"{ack.quorum} signatures)"
            )
        if len(signers) < holder.ticket_quorum:
            self._verified[round_number] = checked
            return False
        self.ledger.record_release(round_number, ticket)
        try:
            chunks = self._release(holder, share, checked)
        except (RemoteError, TransportError) as exc:
            if isinstance(exc, RemoteError) and exc.reason is ProtocolError:
                self.ui.info(  # enough partials arrived first, or the round ended: normal
                    f"{self.config.id} round {round_number}: the round moved on before this "
                    f"partial decryption arrived ({exc})"
                )
                return True
            if isinstance(exc, TransportError):  # the next status poll sends the rest
                self.ui.error(
                    f"{self.config.id} round {round_number}: partial decryption not delivered "
                    f"({exc}); the chunks the coordinator lacks go again at the next step"
                )
                self._verified[round_number] = checked
                return False
            self.ui.error(
                f"{self.config.id} round {round_number}: partial decryption refused: {exc}"
            )
            return True
        self._verified.pop(round_number, None)
        self.ui.info(
            f"{self.config.id} round {round_number}: {len(signers)} holders signed the ticket; released a "
            f"proven partial decryption in {chunks} chunks ({time.monotonic() - started:.1f}s)"
        )
        return True
