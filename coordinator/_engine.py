"""The coordinator's domain logic: rounds, contributions, aggregation, threshold decryption.

No gRPC here: the servicer translates messages to these calls and errors to status codes. The
audit log is the record of every decision *and* the event store the state is rebuilt from after
a restart: a contribution counts once its file is fsynced and its ``contribution_accepted``
entry is fsynced, and only then is it acknowledged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.audit import AuditLog
from fedlora.config import CoordinatorConfig, Party
from fedlora.coordinator._adapter import AdapterTemplate
from fedlora.coordinator._rounds import Message, Stage, check_message, check_transition
from fedlora.coordinator._store import Store
from fedlora.crypto import (
    CodecParams,
    DecryptionProof,
    PartialDecryption,
    ThresholdPublicKey,
    add_ciphertext_vectors,
    ciphertext_width,
    combine_partial_decryptions,
    contribution_digest,
    decode,
    ed25519_public_bytes,
    receipt_digest,
    records_hasher,
    sign_digest,
    verify_partial_decryption,
    verify_signature,
)
from fedlora.errors import (
    AuthenticationError,
    AuthorizationError,
    FedLoraError,
    NotFoundError,
    ProtocolError,
    VerificationError,
)


@dataclass(frozen=True)
class ContributionHeader:
    round_number: int
    weight: int
    value_count: int
    record_count: int
    ciphertexts_digest: bytes
    key_fingerprint: bytes
    codec_digest: bytes
    signature: bytes


@dataclass(frozen=True)
class Contribution:
    client_id: str
    weight: int
    record_count: int
    ciphertexts_digest: bytes
    contribution_digest: bytes
    signature: bytes
    log_index: int
    received_at_ms: int


@dataclass(frozen=True)
class PartialHeader:
    round_number: int
    ciphertexts_digest: bytes
    challenge: int
    response: int
    record_count: int


@dataclass
class RoundState:
    number: int
    global_version: int
    deadline_ms: int
    opened_ms: int
    contributions: dict[str, Contribution] = field(default_factory=dict)
    participants: tuple[str, ...] = ()
    aggregate_digest: bytes = b""
    total_weight: int = 0
    decrypt_deadline_ms: int = 0
    partials: dict[str, DecryptionProof] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    federation_id: str
    round_number: int
    client_id: str
    contribution_digest: bytes
    log_index: int
    received_at_ms: int
    signature: bytes
    duplicate: bool = False


class Coordinator:
    """One federation's coordinator. Thread-safe; call :meth:`tick` periodically (the server does)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        threshold_key: ThresholdPublicKey | None,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.fl = config.federated_learning
        self.homomorphic = self.fl.encryption_type == "homomorphic"
        self.key = threshold_key
        self._check_key()
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
        if self.homomorphic:
            assert threshold_key is not None
            self.width = ciphertext_width(threshold_key.paillier)
            self.record_count = self.codec.ciphertexts_for(self.num_parameters)
            self.fingerprint = threshold_key.fingerprint
        else:
            self.width, self.record_count, self.fingerprint = 4, self.num_parameters, b"\x00" * 32
        self.store = Store(config.state_dir)
        self._digests: dict[int, bytes] = {}
        template = config.model.adapter_template
        self.template = AdapterTemplate(template, self.num_parameters) if template else None
        self.audit = AuditLog(config.state_dir / "audit", config.federation_id, signing_key)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self.stage = Stage.COLLECTING
        self.round: RoundState | None = None
        self.global_version = 0
        self._aggregate_cache: tuple[int, list[int]] | None = None
        self._replay()

    # -- start-up ----------------------------------------------------------------------------
    def _check_key(self) -> None:
        if not self.homomorphic:
            return
        key = self.key
        if key is None:
            raise FedLoraError(
                "keys.threshold_public_key is required when encryption_type is homomorphic"
            )
        if key.threshold != self.fl.decryption_threshold:
            raise FedLoraError(
                f"federated_learning.decryption_threshold is {self.fl.decryption_threshold} but the "
                f"threshold key needs {key.threshold} partial decryptions"
            )
        unknown = [p for p in key.party_ids if self.config.party(p) is None]
        if unknown:
            raise FedLoraError(f"threshold key share holders {unknown} are not enrolled in parties")

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _replay(self) -> None:
        """Rebuild the state from the audit log; start the federation if the log is empty."""
        events = [json.loads(line) for line in self.audit.entries()]
        if not events:
            self.audit.append(
                "federation_started",
                federation_id=self.config.federation_id,
                encryption_type=self.fl.encryption_type,
                key_fingerprint=self.fingerprint.hex(),
                codec=self.codec.to_dict(),
                participant_threshold=self.fl.participant_threshold,
                decryption_threshold=self.fl.decryption_threshold,
                rounds=self.fl.rounds,
                aggregation_frequency=self.fl.aggregation_frequency,
                num_parameters=self.num_parameters,
                parties=[
                    {"id": p.id, "role": p.role, "signing_public_key": p.signing_public_key}
                    for p in self.config.parties
                ],
            )
            self._save_and_publish(0, np.zeros(self.num_parameters, dtype=np.float32))
            self._open_round(1)
            return
        for e in events:
            kind, r = e["event"], e.get("round")
            if kind == "round_opened":
                self.round = RoundState(r, e["global_version"], e["deadline_ms"], e["time_ms"])
                self.stage = Stage.COLLECTING
            elif kind == "contribution_accepted" and self.round and r == self.round.number:
                self.round.contributions[e["client"]] = Contribution(
                    e["client"],
                    e["weight"],
                    e["record_count"],
                    bytes.fromhex(e["ciphertexts_digest"]),
                    bytes.fromhex(e["contribution_digest"]),
                    bytes.fromhex(e["signature"]),
                    e["index"],
                    e["time_ms"],
                )
            elif kind == "aggregated" and self.round and r == self.round.number:
                self.round.participants = tuple(e["participants"])
                self.round.aggregate_digest = bytes.fromhex(e["aggregate_digest"])
                self.round.total_weight = e["total_weight"]
                self.round.decrypt_deadline_ms = e["decrypt_deadline_ms"]
                self.stage = Stage.DECRYPTING
            elif kind == "partial_accepted" and self.round and r == self.round.number:
                self.round.partials[e["party"]] = DecryptionProof(
                    int(e["challenge"], 16), int(e["response"], 16)
                )
            elif kind == "global_published":
                self.global_version = e["version"]
            elif kind == "federation_finished":
                self.stage = Stage.FINISHED
        self.audit.append(
            "coordinator_restarted",
            round=self.round.number if self.round else 0,
            stage=self.stage.value,
            contributions=sorted(self.round.contributions) if self.round else [],
        )

    # -- identity ----------------------------------------------------------------------------
    def authenticate(self, identity: str | None, method: str) -> Party:
        """Map a certificate identity to an enrolled party, auditing every refusal.

        Raises:
            AuthenticationError: no identity at all.
            AuthorizationError: unknown or revoked identity.
        """
        if not identity:
            self.audit.append(
                "access_denied", identity="", method=method, reason="no client identity"
            )
            raise AuthenticationError(
                "no client identity: present a certificate issued by the federation CA"
            )
        party = self.config.party(identity)
        if party is None or party.revoked:
            reason = "revoked" if party else "not enrolled"
            self.audit.append("access_denied", identity=identity, method=method, reason=reason)
            raise AuthorizationError(
                f"identity {identity!r} is {reason} in federation {self.config.federation_id!r}"
            )
        return party

    # -- rounds ------------------------------------------------------------------------------
    def _open_round(self, number: int) -> None:
        now = self._now_ms()
        deadline = now + int(self.fl.round_timeout_s * 1000)
        self.audit.append(
            "round_opened",
            round=number,
            global_version=self.global_version,
            global_digest=self.global_digest(self.global_version).hex(),
            deadline_ms=deadline,
        )
        self.round = RoundState(number, self.global_version, deadline, now)
        self.stage = Stage.COLLECTING
        self._aggregate_cache = None

    def _end_round(self) -> None:
        assert self.round is not None
        if self.round.number >= self.fl.rounds:
            check_transition(self.stage, Stage.FINISHED)
            self.audit.append(
                "federation_finished", rounds=self.fl.rounds, global_version=self.global_version
            )
            self.stage = Stage.FINISHED
        else:
            check_transition(self.stage, Stage.COLLECTING)
            self._open_round(self.round.number + 1)

    def _fail_round(self, reason: str) -> None:
        assert self.round is not None
        self.audit.append(
            "round_failed",
            round=self.round.number,
            reason=reason,
            contributions=sorted(self.round.contributions),
            partials=sorted(self.round.partials),
        )
        self._end_round()

    def tick(self) -> None:
        """Advance on deadlines and thresholds; the server calls this a few times a second."""
        with self._lock:
            if self.round is None or self.stage is Stage.FINISHED:
                return
            now = self._now_ms()
            r = self.round
            if self.stage is Stage.COLLECTING:
                expected = {p.id for p in self.config.parties if not p.revoked}
                count = len(r.contributions)
                if expected <= set(r.contributions) or (
                    now >= r.deadline_ms and count >= self.fl.participant_threshold
                ):
                    self._aggregate()
                elif now >= r.deadline_ms:
                    self._fail_round(
                        f"{count} contributions at the deadline, below participant_threshold "
                        f"{self.fl.participant_threshold}; nothing was decrypted"
                    )
            elif self.stage is Stage.DECRYPTING:
                assert self.key is not None
                if len(r.partials) >= self.key.threshold:
                    self._decrypt()
                elif now >= r.decrypt_deadline_ms:
                    self._fail_round(
                        f"{len(r.partials)} partial decryptions at the deadline, below the threshold {self.key.threshold}"
                    )

    def wait(self, timeout: float) -> None:
        with self._wake:
            self._wake.wait(timeout)

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

    def status(self, party: Party) -> dict[str, Any]:
        with self._lock:
            check_message(self.stage, Message.ROUND_STATUS, self.round.number if self.round else 0)
            r = self.round
            assert r is not None
            return {
                "round": r.number,
                "stage": self.stage,
                "global_version": self.global_version
                if self.stage is Stage.FINISHED
                else r.global_version,
                "global_digest": self.global_digest(
                    self.global_version if self.stage is Stage.FINISHED else r.global_version
                ),
                "deadline_unix_s": (
                    r.decrypt_deadline_ms if self.stage is Stage.DECRYPTING else r.deadline_ms
                )
                / 1000,
                "contributions": len(r.contributions),
                "contributed": party.id in r.contributions,
                "partial_submitted": party.id in r.partials,
                "rounds_total": self.fl.rounds,
                "decryptor": bool(self.key and party.id in self.key.party_ids),
            }

    def join_info(self, party: Party) -> dict[str, Any]:
        with self._lock:
            check_message(self.stage, Message.JOIN, self.round.number if self.round else 0)
        self.audit.append("client_joined", client=party.id, role=party.role)
        return {
            "federation_id": self.config.federation_id,
            "role": party.role,
            "key_fingerprint": self.fingerprint,
            "codec": self.codec,
            "encryption_type": self.fl.encryption_type,
            "aggregation_frequency": self.fl.aggregation_frequency,
            "participant_threshold": self.fl.participant_threshold,
            "decryption_threshold": self.fl.decryption_threshold,
            "rounds": self.fl.rounds,
            "num_parameters": self.num_parameters,
            "coordinator_signing_key": self.public_key,
            "chunk_bytes": self.config.server.chunk_bytes,
            "max_weight": self.config.codec.max_weight,
        }

    def global_chunks(self, version: int) -> tuple[bytes, Iterator[bytes]]:
        path = self.store.global_path(version)
        if not path.exists():
            raise NotFoundError(f"global adapter version {version} does not exist")
        return self.global_digest(version), self.store.read_chunks(
            path, self.config.server.chunk_bytes
        )

    # -- contributions -----------------------------------------------------------------------
    def _reject(self, party: Party, round_number: int, error: FedLoraError) -> FedLoraError:
        self.audit.append(
            "contribution_rejected", round=round_number, client=party.id, reason=str(error)
        )
        return error

    def reject_malformed_upload(self, party: Party, reason: str) -> FedLoraError:
        """Audit an upload that could not even be parsed; returns the error to raise."""
        with self._lock:
            number = self.round.number if self.round else 0
        return self._reject(party, number, VerificationError(reason))

    def _check_header(self, party: Party, h: ContributionHeader) -> None:
        assert self.round is not None
        if h.round_number != self.round.number:
            raise ProtocolError(
                f"contribution is for round {h.round_number}, but round {self.round.number} is open"
            )
        if not 1 <= h.weight <= self.config.codec.max_weight:
            raise VerificationError(
                f"weight must be in 1..{self.config.codec.max_weight}, got {h.weight}"
            )
        if h.value_count != self.num_parameters:
            raise VerificationError(
                f"value_count must be {self.num_parameters}, got {h.value_count}"
            )
        if h.record_count != self.record_count:
            raise VerificationError(
                f"record_count must be {self.record_count}, got {h.record_count}"
            )
        if not hmac.compare_digest(h.key_fingerprint, self.fingerprint):
            raise VerificationError(
                "contribution is encrypted under another key (fingerprint mismatch)"
            )
        if not hmac.compare_digest(h.codec_digest, self.codec.digest()):
            raise VerificationError("contribution uses other codec parameters")
        if len(h.ciphertexts_digest) != 32 or len(h.signature) != 64:
            raise VerificationError("ciphertexts_digest must be 32 bytes and signature 64 bytes")

    def _validate_records(self, chunk: bytes, first_index: int) -> None:
        w = self.width
        if self.homomorphic:
            assert self.key is not None
            n, n2 = gmpy2.mpz(self.key.n), self.key.nsquare
            for i in range(0, len(chunk), w):
                c = int.from_bytes(chunk[i : i + w], "big")
                if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
                    raise VerificationError(
                        f"record {first_index + i // w} is not a ciphertext in Z*_(n²)"
                    )
        else:
            values = np.frombuffer(chunk, dtype="<f4")
            if not np.all(np.isfinite(values)):
                raise VerificationError("a plaintext value is NaN or infinite")

    def accept_contribution(
        self, party: Party, header: ContributionHeader, chunks: Iterable[bytes]
    ) -> Receipt:
        """Validate, store durably, audit and sign a receipt for one streamed contribution.

        Raises:
            ProtocolError: wrong stage or round, or a different second contribution.
            VerificationError: malformed, oversized, truncated, out-of-range or wrongly signed.
        """
        with self._lock:
            number = self.round.number if self.round else 0
            try:
                check_message(self.stage, Message.CONTRIBUTION, number)
                self._check_header(party, header)
            except FedLoraError as exc:
                raise self._reject(party, header.round_number, exc) from None
            existing = self.round.contributions.get(party.id) if self.round else None
        if existing is not None:
            for _ in chunks:  # drain the stream; the stored one stands
                pass
            if hmac.compare_digest(existing.ciphertexts_digest, header.ciphertexts_digest):
                return self._receipt(number, existing, duplicate=True)
            raise self._reject(
                party, number, ProtocolError(f"{party.id} already contributed to round {number}")
            )
        final = self.store.contribution_path(number, party.id)
        temp = self.store.temp_path(final)
        expected_bytes = header.record_count * self.width
        hasher = records_hasher(header.record_count, self.width)
        received, carry = 0, b""
        try:
            with open(temp, "wb") as fh:
                for chunk in chunks:
                    received += len(chunk)
                    if received > expected_bytes:
                        raise VerificationError(
                            f"contribution is oversized: more than the {expected_bytes} bytes announced"
                        )
                    data = carry + chunk
                    usable = len(data) - len(data) % self.width
                    self._validate_records(data[:usable], (received - len(data)) // self.width)
                    carry = data[usable:]
                    hasher.update(chunk)
                    fh.write(chunk)
                if received != expected_bytes:
                    raise VerificationError(
                        f"contribution is truncated: {received} of {expected_bytes} bytes arrived"
                    )
                fh.flush()
                os.fsync(fh.fileno())
            digest = hasher.digest()
            if not hmac.compare_digest(digest, header.ciphertexts_digest):
                raise VerificationError("ciphertexts do not match the digest in the header")
            signed = contribution_digest(
                federation_id=self.config.federation_id,
                round_number=number,
                client_id=party.id,
                codec_digest=self.codec.digest(),
                key_fingerprint=self.fingerprint,
                weight=header.weight,
                ciphertexts_digest=digest,
                value_count=header.value_count,
            )
            verify_signature(bytes.fromhex(party.signing_public_key), signed, header.signature)
        except FedLoraError as exc:
            temp.unlink(missing_ok=True)
            raise self._reject(party, number, exc) from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
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
            now = self._now_ms()
            index = self.audit.append(
                "contribution_accepted",
                round=number,
                client=party.id,
                weight=header.weight,
                record_count=header.record_count,
                ciphertexts_digest=digest.hex(),
                contribution_digest=signed.hex(),
                signature=header.signature.hex(),
            )
            contribution = Contribution(
                party.id,
                header.weight,
                header.record_count,
                digest,
                signed,
                header.signature,
                index,
                now,
            )
            self.round.contributions[party.id] = contribution
            self._wake.notify_all()
        return self._receipt(number, contribution)

    def _receipt(self, number: int, c: Contribution, *, duplicate: bool = False) -> Receipt:
        digest = receipt_digest(
            federation_id=self.config.federation_id,
            round_number=number,
            client_id=c.client_id,
            contribution=c.contribution_digest,
            log_index=c.log_index,
            received_at_ms=c.received_at_ms,
        )
        return Receipt(
            self.config.federation_id,
            number,
            c.client_id,
            c.contribution_digest,
            c.log_index,
            c.received_at_ms,
            sign_digest(self.signing_key, digest),
            duplicate,
        )

    # -- aggregation -------------------------------------------------------------------------
    def _aggregate(self) -> None:
        """Sum the stored contributions one at a time (memory: the sum plus one contribution)."""
        r = self.round
        assert r is not None
        participants = tuple(sorted(r.contributions))
        total_weight = sum(r.contributions[p].weight for p in participants)
        if not self.homomorphic:
            acc = np.zeros(self.num_parameters, dtype=np.float64)
            for p in participants:
                values = np.frombuffer(
                    self.store.contribution_path(r.number, p).read_bytes(), dtype="<f4"
                )
                acc += r.contributions[p].weight * values.astype(np.float64)
            self._log_aggregated(
                participants, total_weight, aggregate_digest=b"", decrypt_deadline_ms=0
            )
            self._publish(acc / total_weight, participants, decryptors=[])
            return
        assert self.key is not None
        acc_cts: list[int] | None = None
        for p in participants:
            cts = self.store.read_records(self.store.contribution_path(r.number, p), self.width)
            acc_cts = (
                cts if acc_cts is None else add_ciphertext_vectors(self.key.paillier, acc_cts, cts)
            )
        assert acc_cts is not None
        data = b"".join(c.to_bytes(self.width, "big") for c in acc_cts)
        self.store.write_bytes(self.store.aggregate_path(r.number), data)
        digest = records_hasher(len(acc_cts), self.width)
        digest.update(data)
        r.participants, r.aggregate_digest, r.total_weight = (
            participants,
            digest.digest(),
            total_weight,
        )
        r.decrypt_deadline_ms = self._now_ms() + int(self.fl.decryption_timeout_s * 1000)
        self._log_aggregated(participants, total_weight, r.aggregate_digest, r.decrypt_deadline_ms)
        check_transition(self.stage, Stage.DECRYPTING)
        self.stage = Stage.DECRYPTING
        self._aggregate_cache = (r.number, acc_cts)
        self._wake.notify_all()

    def _log_aggregated(
        self,
        participants: tuple[str, ...],
        total_weight: int,
        aggregate_digest: bytes,
        decrypt_deadline_ms: int,
    ) -> None:
        r = self.round
        assert r is not None
        self.audit.append(
            "aggregated",
            round=r.number,
            participants=list(participants),
            total_weight=total_weight,
            contribution_digests=[
                r.contributions[p].ciphertexts_digest.hex() for p in participants
            ],
            aggregate_digest=aggregate_digest.hex(),
            decrypt_deadline_ms=decrypt_deadline_ms,
            encryption=self.fl.encryption_type,
        )

    def _aggregate_ciphertexts(self) -> list[int]:
        r = self.round
        assert r is not None
        if self._aggregate_cache is None or self._aggregate_cache[0] != r.number:
            self._aggregate_cache = (
                r.number,
                self.store.read_records(self.store.aggregate_path(r.number), self.width),
            )
        return self._aggregate_cache[1]

    # -- decryption --------------------------------------------------------------------------
    def decryption_task(
        self, party: Party, round_number: int
    ) -> tuple[dict[str, Any], Iterator[tuple[str, bytes]]]:
        """The manifest and a stream of (client id or "", bytes) chunks: each contribution, then the aggregate."""
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.DECRYPTION_TASK, number)
            if round_number != number:
                raise ProtocolError(
                    f"round {round_number} is not being decrypted (round {number} is)"
                )
            if self.key is None or party.id not in self.key.party_ids:
                raise AuthorizationError(f"{party.id} holds no key share")
            r = self.round
            assert r is not None
            manifest = {
                "round": number,
                "value_count": self.num_parameters,
                "codec": self.codec,
                "key_fingerprint": self.fingerprint,
                "aggregate_digest": r.aggregate_digest,
                "record_count": self.record_count,
                "entries": [
                    {
                        "client_id": p,
                        "weight": r.contributions[p].weight,
                        "record_count": r.contributions[p].record_count,
                        "ciphertexts_digest": r.contributions[p].ciphertexts_digest,
                        "signature": r.contributions[p].signature,
                    }
                    for p in r.participants
                ],
            }
            paths = [(p, self.store.contribution_path(number, p)) for p in r.participants]
            aggregate = self.store.aggregate_path(number)
        size = self.config.server.chunk_bytes

        def stream() -> Iterator[tuple[str, bytes]]:
            for client_id, path in paths:
                for chunk in self.store.read_chunks(path, size):
                    yield client_id, chunk
            for chunk in self.store.read_chunks(aggregate, size):
                yield "", chunk

        return manifest, stream()

    def accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        """Verify and store one decryptor's partial decryption with its proof.

        Raises:
            ProtocolError: wrong stage or round; AuthorizationError: not a share holder;
            VerificationError: wrong vector, malformed, or a failing proof (the party is named).
        """
        with self._lock:
            number = self.round.number if self.round else 0
            check_message(self.stage, Message.PARTIAL_DECRYPTION, number)
            if header.round_number != number:
                raise ProtocolError(
                    f"partial decryption is for round {header.round_number}, round {number} is being decrypted"
                )
            if self.key is None or party.id not in self.key.party_ids:
                raise AuthorizationError(f"{party.id} holds no key share")
            assert self.round is not None
            if party.id in self.round.partials:
                for _ in chunks:
                    pass
                return
            key, cts, agg_digest = (
                self.key,
                self._aggregate_ciphertexts(),
                self.round.aggregate_digest,
            )
        expected = len(cts) * self.width
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if len(data) > expected:
                raise self._reject_partial(
                    party, number, VerificationError("partial decryption is oversized")
                )
        try:
            if len(data) != expected or header.record_count != len(cts):
                raise VerificationError(
                    f"partial decryption has {len(data)} bytes, expected {expected}"
                )
            if not hmac.compare_digest(header.ciphertexts_digest, agg_digest):
                raise VerificationError("partial decryption answers a different aggregate")
            values = tuple(
                int.from_bytes(data[i : i + self.width], "big")
                for i in range(0, len(data), self.width)
            )
            partial = PartialDecryption(
                party.id,
                key.index_of(party.id),
                key.fingerprint,
                agg_digest,
                values,
                DecryptionProof(header.challenge, header.response),
            )
            verify_partial_decryption(key, cts, partial, ciphertexts_digest=agg_digest)
        except FedLoraError as exc:
            raise self._reject_partial(party, number, exc) from None
        with self._lock:
            if (
                self.round is None
                or self.round.number != number
                or self.stage is not Stage.DECRYPTING
            ):
                raise ProtocolError(
                    f"round {number} finished while the partial decryption was uploading"
                )
            self.store.write_bytes(self.store.partial_path(number, party.id), bytes(data))
            self.audit.append(
                "partial_accepted",
                round=number,
                party=party.id,
                challenge=format(header.challenge, "x"),
                response=format(header.response, "x"),
            )
            self.round.partials[party.id] = partial.proof
            self._wake.notify_all()

    def _reject_partial(self, party: Party, number: int, error: FedLoraError) -> FedLoraError:
        self.audit.append("partial_rejected", round=number, party=party.id, reason=str(error))
        return error

    def _decrypt(self) -> None:
        r, key = self.round, self.key
        assert r is not None and key is not None
        cts = self._aggregate_ciphertexts()
        partials = []
        for pid, proof in sorted(r.partials.items()):
            values = tuple(
                self.store.read_records(self.store.partial_path(r.number, pid), self.width)
            )
            partials.append(
                PartialDecryption(
                    pid, key.index_of(pid), key.fingerprint, r.aggregate_digest, values, proof
                )
            )
        plaintexts = combine_partial_decryptions(key, cts, partials)
        mean = decode(
            plaintexts, self.codec, length=self.num_parameters, total_weight=r.total_weight
        )
        self.audit.append("decrypted", round=r.number, decryptors=[p.party_id for p in partials])
        self._publish(mean, r.participants, decryptors=[p.party_id for p in partials])

    def _publish(
        self, mean_delta: np.ndarray, participants: tuple[str, ...], decryptors: list[str]
    ) -> None:
        r = self.round
        assert r is not None
        current = self.store.load_global(r.global_version).astype(np.float64)
        new_version = r.number
        digest = self._save_and_publish(new_version, (current + mean_delta).astype(np.float32))
        self.audit.append(
            "round_closed",
            round=r.number,
            global_version=new_version,
            global_digest=digest.hex(),
            participants=list(participants),
            decryptors=decryptors,
            duration_ms=self._now_ms() - r.opened_ms,
        )
        self._end_round()
        self._wake.notify_all()

    def _save_and_publish(self, version: int, vector: np.ndarray) -> bytes:
        """Store a global version (and its peft adapter, with a template) and audit its digests."""
        digest = self.store.save_global(version, vector)
        extra = {}
        if self.template is not None:
            adapter = self.template.write(
                vector, self.store.global_path(version).with_suffix(".adapter")
            )
            extra["adapter_digest"] = adapter.hex()
        self.global_version = version
        self.audit.append("global_published", version=version, global_digest=digest.hex(), **extra)
        return digest

    @property
    def finished(self) -> bool:
        with self._lock:
            return self.stage is Stage.FINISHED
