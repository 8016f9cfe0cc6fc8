"""A bank's or hospital's client: joins the federation and works through its rounds.

For each round it pulls the global adapter, trains locally, encodes, encrypts, signs and uploads
its delta, and checks the receipt field by field with its audit entry, checkpoint and inclusion
proof. As a share holder it releases a partial decryption only for an aggregate it has checked
itself (DESIGN.md §4 step 4): the task's round, at least ``policy.min_participants`` distinct
pinned peers, every signature valid over the ciphertexts actually sent and over one global
model, the aggregate recomputed from them; then it signs that round's one decryption ticket
(recorded durably first) and releases its partial only once a quorum of holders signed the same
ticket. Every audit checkpoint it sees must extend the one it kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedlora.audit import Receipt as AuditReceipt
from fedlora.audit import (
    SignedCheckpoint,
    canonical_json,
    verify_entry_inclusion,
    verify_receipt,
)
from fedlora.client._ledger import AnchorError, CheckpointAnchor, DecryptorLedger
from fedlora.client._training import LocalTrainer, make_trainer
from fedlora.config import ClientConfig, check_key_size
from fedlora.crypto import (
    CodecParams,
    KeyShare,
    ObfuscatorPool,
    PlaintextProof,
    ThresholdPublicKey,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    contribution_digest,
    encode,
    encrypt_and_prove,
    open_key_share,
    partial_decrypt,
    partial_statement_digest,
    proof_context,
    records_hasher,
    sign_digest,
    ticket_digest,
    ticket_quorum,
    validate_ciphertexts,
    verify_plaintext_knowledge,
    verify_signature,
)
from fedlora.errors import ConfigError, CryptoError, ProtocolError, VerificationError
from fedlora.v1 import audit_pb2, audit_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc

T = TypeVar("T")
INSECURE_IDENTITY_HEADER = "x-fedlora-insecure-identity"  # must match the coordinator's
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _private_key(path: Path, what: str, kind: Any) -> Any:
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

    codec: CodecParams
    homomorphic: bool
    aggregation_frequency: int
    rounds: int
    num_parameters: int
    max_weight: int
    chunk_bytes: int
    min_participants: int  # the smallest aggregate this client helps decrypt
    ticket_quorum: int  # ticket signatures this client requires before it releases a partial


def checkpoint_from_proto(cp: Any) -> SignedCheckpoint:
    return SignedCheckpoint(cp.log_id, cp.tree_size, cp.root, cp.timestamp_ms, cp.signature)


class Client:
    def __init__(
        self,
        config: ClientConfig,
        *,
        trainer: LocalTrainer | None = None,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.console = console or Console()
        self.signing_key = _private_key(
            config.keys.signing_key, "keys.signing_key", Ed25519PrivateKey
        )
        self.coordinator_key = bytes.fromhex(config.keys.coordinator_signing_public_key)
        self.peers = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
        self.trainer = trainer or make_trainer(config)
        self.key: ThresholdPublicKey | None = None
        self.share: KeyShare | None = None
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.channel = self._channel_for(config)
        self.stub = federation_pb2_grpc.FederationStub(self.channel)
        self.audit_stub = audit_pb2_grpc.AuditStub(self.channel)
        self.metadata = self._metadata_for(config)
        self.fed: Federation | None = None
        self.ledger = DecryptorLedger(self.state_dir, config.federation_id)
        self.anchor = CheckpointAnchor(self.state_dir, config.federation_id, self.coordinator_key)
        # What this client trained from in each round, and the aggregates it verified in full
        # (so waiting for the ticket quorum re-reads only the manifest).
        self._trained_from: dict[int, tuple[int, bytes]] = {}
        self._verified: dict[int, tuple[bytes, list[int]]] = {}

    # -- transport -------------------------------------------------------------------------------
    @staticmethod
    def _metadata_for(config: ClientConfig) -> list[tuple[str, str]] | None:
        return [(INSECURE_IDENTITY_HEADER, config.id)] if config.coordinator.insecure else None

    @staticmethod
    def _channel_for(config: ClientConfig) -> grpc.Channel:
        c = config.coordinator
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
            # Notice a dead connection in ~40 s rather than hours (an upload then retries).
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if c.insecure:
            return grpc.insecure_channel(c.address, options=options)
        assert c.tls is not None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(c.tls.ca, "coordinator.tls.ca"),
            private_key=_read(c.tls.key, "coordinator.tls.key"),
            certificate_chain=_read(c.tls.cert, "coordinator.tls.cert"),
        )
        if c.server_name:
            options.append(("grpc.ssl_target_name_override", c.server_name))
        return grpc.secure_channel(c.address, credentials, options=options)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``, retrying transport failures with exponential backoff."""
        r = self.config.retry
        delay = r.initial_backoff_s
        for attempt in range(1, r.max_attempts + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == r.max_attempts:
                    raise
                self.console.print(
                    f"[yellow]{what}: {code.name.lower()}, retrying in {delay:.1f}s ({attempt}/{r.max_attempts})[/]"
                )
                time.sleep(delay)
                delay = min(delay * 2, r.max_backoff_s)
        raise AssertionError("unreachable")

    # -- joining ---------------------------------------------------------------------------------
    def join(self) -> Federation:
        response = self._retry(
            "join",
            lambda: self.stub.Join(
                federation_pb2.JoinRequest(client_id=self.config.id), metadata=self.metadata
            ),
        )
        if response.federation_id != self.config.federation_id:
            raise ProtocolError(
                f"coordinator serves federation {response.federation_id!r}, this client expects {self.config.federation_id!r}"
            )
        if not hmac.compare_digest(response.coordinator_signing_key, self.coordinator_key):
            raise VerificationError(
                "the coordinator's signing key differs from keys.coordinator_signing_public_key"
            )
        c = response.codec
        codec = CodecParams(
            clip=c.clip,
            value_bits=c.value_bits,
            max_total_weight=c.max_total_weight,
            key_bits=c.key_bits,
        )
        homomorphic = response.encryption_type == "homomorphic"
        if not homomorphic and not self.config.policy.allow_plaintext:
            raise VerificationError(
                f"the coordinator announces encryption_type {response.encryption_type!r}: this client "
                "sends updates only encrypted (set policy.allow_plaintext: true for a plaintext "
                "baseline federation)"
            )
        quorum = 0
        if homomorphic:
            self.key = ThresholdPublicKey.from_json(
                _read(self.config.keys.threshold_public_key, "keys.threshold_public_key")
            )
            if not hmac.compare_digest(self.key.fingerprint, response.key_fingerprint):
                raise VerificationError(
                    "the coordinator uses a different threshold key than keys.threshold_public_key"
                )
            quorum = self._check_key_policy(self.key, codec)
            if self.config.id in self.key.party_ids:
                x25519 = _private_key(
                    self.config.keys.x25519_key, "keys.x25519_key", X25519PrivateKey
                )
                self.share = open_key_share(
                    _read(self.config.keys.key_share, "keys.key_share"),
                    x25519,
                    party_id=self.config.id,
                    public_key=self.key,
                )
        if response.num_parameters != self.trainer.num_parameters:
            raise ConfigError(
                f"the federation's model has {response.num_parameters} parameters, this client's has {self.trainer.num_parameters}"
            )
        min_participants = self.config.policy.min_participants or max(
            2, response.participant_threshold
        )
        self.fed = Federation(
            codec,
            homomorphic,
            response.aggregation_frequency,
            response.rounds,
            response.num_parameters,
            response.max_weight or 1,
            response.chunk_bytes or (1 << 20),
            min_participants,
            quorum,
        )
        if homomorphic and response.ticket_quorum < quorum:
            self.console.print(
                f"[yellow]{self.config.id}: the coordinator waits for {response.ticket_quorum} ticket "
                f"signatures, this client requires {quorum}; rounds may fail at their deadline[/]"
            )
        if self.trainer.num_examples > self.fed.max_weight:
            self.console.print(
                f"[yellow]{self.config.id}: {self.trainer.num_examples} local examples, but the federation caps a "
                f"contribution's weight at {self.fed.max_weight} (codec.max_weight); this client is weighted "
                f"{self.fed.max_weight}[/]"
            )
        role = "decryptor" if self.share else "contributor"
        self.console.print(
            f"{self.config.id}: joined {response.federation_id!r} as {response.role} {role}; {response.rounds} rounds, "
            f"{response.aggregation_frequency} local steps each, {response.encryption_type} aggregation"
        )
        return self.fed

    def _check_key_policy(self, key: ThresholdPublicKey, codec: CodecParams) -> int:
        """Refuse unsafe keys and a codec that does not fit the pinned key; return the quorum.

        Raises:
            ConfigError: a small key without the testing option, t < 2, or a bad quorum.
            VerificationError: the announced codec is for another modulus size.
        """
        bits = key.n.bit_length()
        check_key_size(bits, self.config.testing, "keys.threshold_public_key")
        if key.threshold < 2:
            raise ConfigError(
                "keys.threshold_public_key: a 1-of-n key lets any single holder decrypt every "
                "contribution; the federation must deal a key with threshold >= 2"
            )
        if codec.key_bits != bits:
            raise VerificationError(
                f"the coordinator announces a codec for {codec.key_bits}-bit keys, but the pinned "
                f"threshold key has {bits} bits"
            )
        safe = ticket_quorum(key.parties, key.threshold)
        quorum = self.config.policy.ticket_quorum or safe
        if not safe <= quorum <= key.parties:
            raise ConfigError(
                f"policy.ticket_quorum: {quorum} is outside {safe}..{key.parties}; below "
                f"⌈(holders + t)/2⌉ = {safe} a coordinator could get two different aggregates of one "
                "round decrypted (a split view)"
            )
        return quorum

    def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            proof = self._retry(
                "audit consistency proof",
                lambda: self.audit_stub.GetConsistencyProof(
                    audit_pb2.ConsistencyQuery(from_size=old_size, to_size=new_size),
                    metadata=self.metadata,
                ),
            )
        except grpc.RpcError as exc:
            raise VerificationError(
                f"the coordinator cannot prove that its log of {new_size} entries extends the one of "
                f"{old_size} ({exc.details()})"
            ) from None
        return list(proof.hashes)

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
        fed = self.join()
        seen_done: set[tuple[int, str]] = set()
        while True:
            status = self._retry(
                "round status",
                lambda: self.stub.GetRound(federation_pb2.RoundQuery(), metadata=self.metadata),
            )
            if status.stage == common_pb2.ROUND_STAGE_FINISHED:
                final = self._retry(
                    "audit checkpoint",
                    lambda: self.audit_stub.GetCheckpoint(
                        audit_pb2.CheckpointQuery(), metadata=self.metadata
                    ),
                )
                self.observe_checkpoint(checkpoint_from_proto(final), status.round)
                vector = self.download_global(status.global_version, status.global_digest)
                self.console.print(
                    f"{self.config.id}: federation finished after {status.rounds_total} rounds; global adapter "
                    f"v{status.global_version} {status.global_digest.hex()[:16]}…, local accuracy {self.trainer.evaluate(vector):.3f}"
                )
                return 0
            try:
                self._step(fed, status, seen_done)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # The round moved on between our status poll and this call: normal, carry on.
                self.console.print(
                    f"{self.config.id}: round {status.round} moved on ({exc.details()})"
                )
            time.sleep(self.config.retry.poll_interval_s)

    def _step(self, fed: Federation, status: Any, seen_done: set[tuple[int, str]]) -> None:
        if status.stage == common_pb2.ROUND_STAGE_COLLECTING and not status.contributed:
            self.contribute(fed, status)
        elif (
            self.share is not None
            and (status.round, "decrypt") not in seen_done
            and (
                (status.stage == common_pb2.ROUND_STAGE_TICKETING and not status.ticket_signed)
                or (
                    status.stage == common_pb2.ROUND_STAGE_DECRYPTING
                    and not status.partial_submitted
                )
            )
        ):
            try:
                if self.decrypt(status.round):
                    seen_done.add((status.round, "decrypt"))
            except (VerificationError, CryptoError) as exc:
                if isinstance(exc, AnchorError):
                    raise
                seen_done.add((status.round, "decrypt"))
                self.console.print(
                    f"[red]{self.config.id}: refusing to decrypt round {status.round}: {exc}[/]"
                )

    def download_global_unchecked(self, version: int) -> np.ndarray:
        """An older global version: its digest is checked against the one sent with it only."""
        return self._fetch_global(version, None)

    def download_global(self, version: int, expected: bytes) -> np.ndarray:
        return self._fetch_global(version, expected)

    def _fetch_global(self, version: int, expected: bytes | None) -> np.ndarray:
        def fetch() -> tuple[bytes, bytes]:
            data, digest = bytearray(), b""
            for chunk in self.stub.DownloadGlobal(
                federation_pb2.GlobalRequest(version=version), metadata=self.metadata
            ):
                data += chunk.data
                digest = chunk.digest
            return bytes(data), digest

        data, digest = self._retry("download global adapter", fetch)
        if hashlib.sha256(data).digest() != digest or (
            expected is not None and not hmac.compare_digest(digest, expected)
        ):
            raise VerificationError(f"global adapter v{version} does not match its digest")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )

    def contribute(self, fed: Federation, status: Any) -> None:
        started = time.monotonic()
        r = status.round
        base = self.download_global(status.global_version, status.global_digest)
        self._trained_from[r] = (status.global_version, bytes(status.global_digest))
        pool = None
        if fed.homomorphic:
            assert self.key is not None
            # Obfuscators are computed in the background while the model trains.
            pool = ObfuscatorPool(
                self.key.paillier, capacity=fed.codec.ciphertexts_for(fed.num_parameters)
            ).start()
        try:
            with self._progress() as progress:
                task = progress.add_task(
                    f"{self.config.id} round {r}: training", total=fed.aggregation_frequency
                )
                local = self.trainer.train(
                    base, fed.aggregation_frequency, on_step=lambda: progress.advance(task)
                )
                t_train = time.monotonic() - started
                delta = local.astype(np.float64) - base.astype(np.float64)
                weight = min(self.trainer.num_examples, fed.max_weight)
                if self.config.debug.save_plaintext_deltas:
                    self._save_delta(r, delta, weight)
                enc = progress.add_task(f"{self.config.id} round {r}: encrypting", total=1)
                proof = b""
                if fed.homomorphic:
                    assert self.key is not None and pool is not None
                    cts, knowledge = encrypt_and_prove(
                        self.key.paillier,
                        encode(delta, fed.codec, weight=weight),
                        context=proof_context(
                            federation_id=self.config.federation_id,
                            round_number=r,
                            client_id=self.config.id,
                            key_fingerprint=self.key.fingerprint,
                        ),
                        obfuscators=pool,
                    )
                    proof = knowledge.to_bytes(self.key.paillier)
                    width = ciphertext_width(self.key.paillier)
                    records = b"".join(c.to_bytes(width, "big") for c in cts)
                    digest, count, fingerprint = (
                        ciphertext_vector_digest(self.key.paillier, cts),
                        len(cts),
                        self.key.fingerprint,
                    )
                else:
                    records = np.ascontiguousarray(delta, dtype="<f4").tobytes()
                    hasher = records_hasher(fed.num_parameters, 4)
                    hasher.update(records)
                    digest, count, fingerprint = hasher.digest(), fed.num_parameters, b"\x00" * 32
                progress.update(enc, completed=1)
                signed = contribution_digest(
                    federation_id=self.config.federation_id,
                    round_number=r,
                    client_id=self.config.id,
                    codec_digest=fed.codec.digest(),
                    key_fingerprint=fingerprint,
                    weight=weight,
                    ciphertexts_digest=digest,
                    value_count=fed.num_parameters,
                    global_version=status.global_version,
                    global_digest=status.global_digest,
                )
                signature = sign_digest(self.signing_key, signed)
                header = federation_pb2.ContributionHeader(
                    round=r,
                    weight=weight,
                    value_count=fed.num_parameters,
                    record_count=count,
                    ciphertexts_digest=digest,
                    key_fingerprint=fingerprint,
                    codec_digest=fed.codec.digest(),
                    signature=signature,
                    global_version=status.global_version,
                    global_digest=status.global_digest,
                    knowledge_proof=proof,
                )
                up = progress.add_task(f"{self.config.id} round {r}: uploading", total=len(records))

                def upload() -> Any:
                    def messages() -> Iterator[federation_pb2.ContributionChunk]:
                        yield federation_pb2.ContributionChunk(header=header)
                        for i in range(0, len(records), fed.chunk_bytes):
                            progress.update(up, completed=min(len(records), i + fed.chunk_bytes))
                            yield federation_pb2.ContributionChunk(
                                data=records[i : i + fed.chunk_bytes]
                            )

                    return self.stub.UploadContribution(messages(), metadata=self.metadata)

                try:
                    receipt = self._retry("upload", upload)
                except grpc.RpcError as exc:
                    self.console.print(
                        f"[red]{self.config.id} round {r}: contribution refused: {exc.details()}[/]"
                    )
                    return
        finally:
            if pool is not None:
                pool.close()
        self._check_receipt(receipt, r, signed, digest, signature)
        self.console.print(
            f"{self.config.id} round {r}: trained {fed.aggregation_frequency} steps in {t_train:.1f}s, sent "
            f"{len(records) / 1e6:.2f} MB ({count:,} {'ciphertexts' if fed.homomorphic else 'values'}), "
            f"receipt at audit entry {receipt.log_index}, {time.monotonic() - started:.1f}s in all"
        )

    def _save_delta(self, r: int, delta: np.ndarray, weight: int) -> None:
        folder = self.state_dir / "deltas"
        folder.mkdir(exist_ok=True)
        np.save(folder / f"round-{r:05d}.npy", delta)
        (folder / f"round-{r:05d}.json").write_text(json.dumps({"weight": weight}))

    def _check_receipt(
        self,
        receipt: Any,
        round_number: int,
        signed: bytes,
        ciphertexts_digest: bytes,
        signature: bytes,
    ) -> None:
        """Check every field of a receipt against what was uploaded, and its place in the log.

        Raises:
            VerificationError: a field that is not this upload's, a bad signature, an entry that
                does not record this contribution, or an entry not in the signed checkpoint's
                log (the refusal is written to the client's ledger).
        """
        doc = {
            "federation_id": receipt.federation_id,
            "round": receipt.round,
            "client_id": receipt.client_id,
            "contribution_digest": receipt.contribution_digest.hex(),
            "log_index": receipt.log_index,
            "received_at_ms": receipt.received_at_ms,
            "signature": receipt.signature.hex(),
            "ciphertexts_digest": ciphertexts_digest.hex(),
            "coordinator_signing_public_key": self.coordinator_key.hex(),
            "entry": receipt.entry.decode("ascii", errors="replace"),
            "inclusion": [h.hex() for h in receipt.inclusion],
            "checkpoint": checkpoint_from_proto(receipt.checkpoint).to_dict(),
        }
        try:
            expected = {
                "federation_id": (receipt.federation_id, self.config.federation_id),
                "round": (receipt.round, round_number),
                "client_id": (receipt.client_id, self.config.id),
                "contribution_digest": (receipt.contribution_digest, signed),
            }
            for name, (got, want) in expected.items():
                if got != want:
                    raise VerificationError(
                        f"the receipt's {name} is not this upload's: the coordinator acknowledged "
                        "something else"
                    )
            if not receipt.HasField("checkpoint"):
                raise VerificationError("the receipt carries no signed audit checkpoint")
            parsed = AuditReceipt.from_dict(doc)
            # Signature, checkpoint, inclusion, canonical entry for this round/client/digests.
            verify_receipt(parsed, self.coordinator_key)
            entry = json.loads(receipt.entry)
            if entry.get("signature") != signature.hex():
                raise VerificationError("the receipt's audit entry does not record this upload")
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "receipt", str(exc))
            raise
        assert parsed.checkpoint is not None
        self.observe_checkpoint(parsed.checkpoint, round_number)
        folder = self.state_dir / "receipts"
        folder.mkdir(exist_ok=True)
        (folder / f"round-{receipt.round:05d}.json").write_text(json.dumps(doc, indent=2) + "\n")

    # -- decryption ------------------------------------------------------------------------------
    def _fetch_task(
        self, round_number: int, *, manifest_only: bool
    ) -> tuple[Any, dict[str, bytearray], bytearray]:
        def fetch() -> tuple[Any, dict[str, bytearray], bytearray]:
            manifest: Any = None
            contributions: dict[str, bytearray] = {}
            aggregate = bytearray()
            for chunk in self.stub.GetDecryptionTask(
                federation_pb2.DecryptionTaskRequest(
                    round=round_number, manifest_only=manifest_only
                ),
                metadata=self.metadata,
            ):
                part = chunk.WhichOneof("part")
                if part == "manifest":
                    manifest = chunk.manifest
                elif part == "contribution":
                    contributions.setdefault(chunk.contribution.client_id, bytearray()).extend(
                        chunk.contribution.data
                    )
                else:
                    aggregate.extend(chunk.aggregate)
            if manifest is None:
                raise VerificationError("the decryption task has no manifest")
            return manifest, contributions, aggregate

        return self._retry("decryption task", fetch)

    def decrypt(self, round_number: int) -> bool:
        """Do this share holder's part of decrypting ``round_number``; True once it is done.

        A refusal is written to the client's ledger before it is raised.

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
        """Do this share holder's part of decrypting ``round_number``; True once it is done.

        Verifies the task in full (once per round), records and signs the round's ticket, and
        releases a proven partial decryption only when ``ticket_quorum`` distinct holders signed
        the same ticket. Returns False while the quorum is still being gathered.

        Raises:
            VerificationError: the task fails a check, or the ledger refuses the ticket.
        """
        assert self.key is not None and self.share is not None and self.fed is not None
        key, width = self.key, ciphertext_width(self.key.paillier)
        started = time.monotonic()
        cached = self._verified.get(round_number)
        manifest, contributions, aggregate = self._fetch_task(
            round_number, manifest_only=cached is not None
        )
        self.observe_checkpoint(checkpoint_from_proto(manifest.checkpoint), round_number)
        if cached is None:
            ticket, cts = self.verify_manifest(
                manifest, contributions, aggregate, width, round_number
            )
        else:
            ticket, cts = cached
            if self._ticket_of(manifest, round_number) != ticket:
                raise VerificationError(
                    f"the coordinator changed round {round_number}'s ticket while it was being signed"
                )
        participants = sorted(e.client_id for e in manifest.entries)
        self._check_ticket_logged(manifest, round_number, ticket, participants)
        self.ledger.record_ticket(round_number, ticket, manifest.aggregate_digest, participants)
        own = sign_digest(self.signing_key, ticket)
        signers = self._valid_ticket_signatures(manifest, ticket)
        if self.config.id not in signers:  # the coordinator records every holder's signature
            ack = self._retry(
                "ticket signature",
                lambda: self.stub.SubmitTicket(
                    federation_pb2.TicketSubmission(
                        round=round_number, ticket_digest=ticket, signature=own
                    ),
                    metadata=self.metadata,
                ),
            )
            signers[self.config.id] = own
            self.console.print(
                f"{self.config.id} round {round_number}: verified {len(manifest.entries)} signed "
                f"contributions and the aggregate, signed the decryption ticket ({ack.signatures} of "
                f"{ack.quorum} signatures)"
            )
        if len(signers) < self.fed.ticket_quorum:
            self._verified[round_number] = (ticket, cts)
            return False
        self.ledger.record_release(round_number, ticket)
        partial = partial_decrypt(key, self.share, cts)
        values = b"".join(v.to_bytes(width, "big") for v in partial.values)
        statement = partial_statement_digest(
            federation_id=self.config.federation_id,
            round_number=round_number,
            party_id=self.config.id,
            ticket=ticket,
            values_digest=ciphertext_vector_digest(key.paillier, partial.values),
            challenge=partial.proof.challenge,
            response=partial.proof.response,
        )
        header = federation_pb2.PartialHeader(
            round=round_number,
            ciphertexts_digest=partial.ciphertexts_digest,
            proof_challenge=_bytes(partial.proof.challenge),
            proof_response=_bytes(partial.proof.response),
            record_count=len(partial.values),
            ticket_digest=ticket,
            statement_signature=sign_digest(self.signing_key, statement),
        )
        size = self.fed.chunk_bytes

        def messages() -> Iterator[federation_pb2.PartialChunk]:
            yield federation_pb2.PartialChunk(header=header)
            for i in range(0, len(values), size):
                yield federation_pb2.PartialChunk(data=values[i : i + size])

        try:
            self._retry(
                "partial decryption upload",
                lambda: self.stub.SubmitPartialDecryption(messages(), metadata=self.metadata),
            )
        except grpc.RpcError as exc:
            self.console.print(
                f"[red]{self.config.id} round {round_number}: partial decryption refused: {exc.details()}[/]"
            )
            return True
        self._verified.pop(round_number, None)
        self.console.print(
            f"{self.config.id} round {round_number}: {len(signers)} holders signed the ticket; released a "
            f"proven partial decryption ({time.monotonic() - started:.1f}s)"
        )
        return True

    def _check_ticket_logged(
        self, manifest: Any, round_number: int, ticket: bytes, participants: list[str]
    ) -> None:
        """The ticket must be in the coordinator's anchored log before this holder signs it.

        The manifest carries the round's ``aggregated`` entry and its inclusion proof in the
        signed checkpoint already checked against the kept one: a coordinator that shows two
        holders two tickets for one round must log both, where any auditor sees them.

        Raises:
            VerificationError: no such entry, another round's or ticket's, or not in the log.
        """
        cp = checkpoint_from_proto(manifest.checkpoint)
        try:
            entry = json.loads(manifest.aggregated_entry)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VerificationError("the manifest carries no audit entry for its ticket") from None
        expected = {
            "event": "aggregated",
            "index": manifest.aggregated_index,
            "round": round_number,
            "ticket": ticket.hex(),
            "aggregate_digest": manifest.aggregate_digest.hex(),
            "participants": participants,
        }
        if (
            not isinstance(entry, dict)
            or canonical_json(entry) != manifest.aggregated_entry
            or any(entry.get(k) != v for k, v in expected.items())
        ):
            raise VerificationError(
                f"the audit entry sent for round {round_number}'s ticket does not record this ticket"
            )
        verify_entry_inclusion(
            manifest.aggregated_entry,
            manifest.aggregated_index,
            list(manifest.aggregated_inclusion),
            cp,
        )

    def _valid_ticket_signatures(self, manifest: Any, ticket: bytes) -> dict[str, bytes]:
        """The manifest's ticket signatures that verify: distinct share holders, pinned keys."""
        assert self.key is not None
        valid: dict[str, bytes] = {}
        for s in manifest.ticket_signatures:
            if s.party_id not in self.key.party_ids or s.party_id not in self.peers:
                continue
            try:
                verify_signature(self.peers[s.party_id], ticket, s.signature)
            except VerificationError:
                continue
            valid[s.party_id] = s.signature
        return valid

    def _ticket_of(self, manifest: Any, round_number: int) -> bytes:
        """Recompute the ticket from the manifest's own fields (digests already checked)."""
        assert self.key is not None and self.fed is not None
        entries = sorted(manifest.entries, key=lambda e: e.client_id)
        return ticket_digest(
            federation_id=self.config.federation_id,
            round_number=round_number,
            key_fingerprint=self.key.fingerprint,
            aggregate_digest=manifest.aggregate_digest,
            global_version=manifest.global_version,
            global_digest=manifest.global_digest,
            contributions=[
                (e.client_id, self._signed_digest(manifest, e, e.ciphertexts_digest))
                for e in entries
            ],
        )

    def _signed_digest(self, manifest: Any, entry: Any, ciphertexts_digest: bytes) -> bytes:
        assert self.key is not None and self.fed is not None
        return contribution_digest(
            federation_id=self.config.federation_id,
            round_number=manifest.round,
            client_id=entry.client_id,
            codec_digest=self.fed.codec.digest(),
            key_fingerprint=self.key.fingerprint,
            weight=entry.weight,
            ciphertexts_digest=ciphertexts_digest,
            value_count=manifest.value_count,
            global_version=manifest.global_version,
            global_digest=manifest.global_digest,
        )

    def verify_manifest(
        self,
        manifest: Any,
        contributions: dict[str, bytearray],
        aggregate: bytearray,
        width: int,
        round_number: int,
    ) -> tuple[bytes, list[int]]:
        """Check everything DESIGN.md §4 step 4 asks before a ticket is signed.

        Returns the round's ticket and the aggregate's ciphertexts.

        Raises:
            VerificationError: naming what is wrong.
        """
        assert self.key is not None and self.fed is not None
        pk = self.key.paillier
        if manifest.round != round_number:
            raise VerificationError(
                f"the manifest is for round {manifest.round}, but the task is round {round_number}"
            )
        if manifest.federation_id != self.config.federation_id:
            raise VerificationError(
                f"the manifest is for federation {manifest.federation_id!r}, not {self.config.federation_id!r}"
            )
        if not hmac.compare_digest(manifest.key_fingerprint, self.key.fingerprint):
            raise VerificationError("the aggregate is under another threshold key")
        c = manifest.codec
        if (
            CodecParams(
                clip=c.clip,
                value_bits=c.value_bits,
                max_total_weight=c.max_total_weight,
                key_bits=c.key_bits,
            )
            != self.fed.codec
        ):
            raise VerificationError("the manifest's codec differs from the federation's")
        trained = self._trained_from.get(round_number)
        if trained is not None and trained != (
            manifest.global_version,
            bytes(manifest.global_digest),
        ):
            raise VerificationError(
                f"round {round_number}'s contributions were trained from another global model than "
                "the one this client was served"
            )
        clients = [e.client_id for e in manifest.entries]
        if len(set(clients)) != len(clients):
            raise VerificationError("the manifest lists a contributor twice")
        if len(clients) < self.fed.min_participants:
            raise VerificationError(
                f"the aggregate has {len(clients)} contributors; policy.min_participants requires {self.fed.min_participants}"
            )
        if set(contributions) != set(clients):
            raise VerificationError("the contributions sent do not match the manifest")
        total: list[int] | None = None
        signed: list[tuple[str, bytes]] = []
        for entry in manifest.entries:
            if entry.client_id not in self.peers:
                raise VerificationError(
                    f"contributor {entry.client_id!r} is not one of this client's pinned peers"
                )
            data = bytes(contributions[entry.client_id])
            if (
                len(data) != entry.record_count * width
                or entry.record_count != manifest.record_count
            ):
                raise VerificationError(
                    f"the contribution of {entry.client_id!r} has the wrong size"
                )
            cts = validate_ciphertexts(
                pk, [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]
            )
            cts_digest = ciphertext_vector_digest(pk, cts)
            digest = self._signed_digest(manifest, entry, cts_digest)
            try:
                verify_signature(self.peers[entry.client_id], digest, entry.signature)
            except VerificationError:
                raise VerificationError(
                    f"the contribution of {entry.client_id!r} is not signed by that peer's key "
                    "(over these ciphertexts, this round and this global model)"
                ) from None
            try:  # a vector mauled from other contributions cannot come with this proof
                verify_plaintext_knowledge(
                    pk,
                    cts,
                    PlaintextProof.from_bytes(pk, entry.knowledge_proof),
                    context=proof_context(
                        federation_id=self.config.federation_id,
                        round_number=manifest.round,
                        client_id=entry.client_id,
                        key_fingerprint=self.key.fingerprint,
                    ),
                )
            except VerificationError as exc:
                raise VerificationError(
                    f"the contribution of {entry.client_id!r} carries no valid proof that its sender "
                    f"knows its plaintexts ({exc})"
                ) from None
            signed.append((entry.client_id, digest))
            total = cts if total is None else add_ciphertext_vectors(pk, total, cts)
        assert total is not None
        sent = [
            int.from_bytes(aggregate[i : i + width], "big") for i in range(0, len(aggregate), width)
        ]
        if sent != total:
            raise VerificationError("the aggregate is not the product of the listed contributions")
        aggregate_digest = ciphertext_vector_digest(pk, total)
        if not hmac.compare_digest(aggregate_digest, manifest.aggregate_digest):
            raise VerificationError("the aggregate digest in the manifest is wrong")
        ticket = ticket_digest(
            federation_id=self.config.federation_id,
            round_number=round_number,
            key_fingerprint=self.key.fingerprint,
            aggregate_digest=aggregate_digest,
            global_version=manifest.global_version,
            global_digest=manifest.global_digest,
            contributions=sorted(signed),
        )
        self.ledger.check_ticket(round_number, ticket)
        return ticket, total


def _bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
