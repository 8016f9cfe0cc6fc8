"""A member of a federation: who it is and what it keeps, whatever its role and transport.

Its keys (signing key, the pinned threshold key, its share), its durable state (the ledger, the
anchored audit checkpoint, the kept global versions, what it trained from in each round) and its
check of the federation's announcement at join. The two roles build on it:
:class:`fedlora.client._contributor.Contributor` seals and checks receipts,
:class:`fedlora.client._holder.Holder` checks aggregates and releases partial decryptions. The
poll driver (:class:`fedlora.client.Client`) and the Flower mod both call them directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console

from fedlora._files import check_private, replace_file
from fedlora.audit import SignedCheckpoint
from fedlora.client._ledger import AnchorError, CheckpointAnchor, DecryptorLedger
from fedlora.client._models import ModelKeeper
from fedlora.client._transport import MemberTransport
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig
from fedlora.crypto import (
    CodecParams,
    KeyShare,
    ModexpBackend,
    ThresholdPublicKey,
    open_key_share,
    select_backend,
)
from fedlora.errors import ConfigError, CryptoError, FedLoraError, RemoteError, VerificationError
from fedlora.protocol import (
    HolderPolicy,
    JoinExpectations,
    JoinInfo,
    SecureSum,
    canonical_spec,
    check_announced,
    check_join,
    secure_sum_for,
)

TRAINED_FROM = "trained-from.json"
KEEP_TRAINED_FROM = 32  # rounds: far more than can be decrypting at once


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
    policy: HolderPolicy | None  # this member's rules as a share holder; None: not a holder

    @property
    def codec(self) -> CodecParams:
        return self.info.codec

    @property
    def homomorphic(self) -> bool:
        return self.info.homomorphic


class TrainedFrom:
    """The global version (and its digest) this member trained from in each round, on disk.

    Written before a contribution can leave; read by the holder, which refuses an aggregate of
    contributions trained from another model. On disk so that a restart, or a push transport's
    next message, still checks against it. A file that cannot be read as such is ignored: the
    check it feeds falls back to the other checks a holder runs on every aggregate.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TRAINED_FROM
        self.rounds: dict[int, tuple[int, bytes]] = {}
        try:
            doc = json.loads(self.path.read_bytes())
            for round_text, (version, digest) in doc.items():
                if type(version) is not int or len(bytes.fromhex(digest)) != 32:
                    raise ValueError(round_text)
                self.rounds[int(round_text)] = (version, bytes.fromhex(digest))
        except (OSError, ValueError, TypeError, AttributeError, RecursionError):
            self.rounds = {}

    def get(self, round_number: int) -> tuple[int, bytes] | None:
        return self.rounds.get(round_number)

    def record(self, round_number: int, version: int, digest: bytes) -> None:
        self.rounds[round_number] = (version, bytes(digest))
        newest = sorted(self.rounds)[-KEEP_TRAINED_FROM:]
        self.rounds = {r: self.rounds[r] for r in newest}
        doc = {str(r): [v, d.hex()] for r, (v, d) in self.rounds.items()}
        replace_file(self.path, json.dumps(doc).encode())


class Member:
    """One party of a federation, its keys and durable state (see the module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        transport: MemberTransport,
        *,
        console: Console | None = None,
        backend: ModexpBackend | None = None,
        refusal_interval_s: float = 0.0,
    ) -> None:
        """``refusal_interval_s``: see :class:`DecryptorLedger` (a push transport sets it)."""
        self.config = config
        self.id = config.id
        if backend is None and config.crypto.backend != "auto":
            try:
                backend = select_backend(config.crypto.backend)[0]
            except FedLoraError as exc:
                raise ConfigError(f"crypto.backend: {exc}") from None
        self.backend = backend  # None: fedlora.crypto's default (auto)
        self.ui = Reporter(console)
        self.transport = transport
        self.signing_key = _private_key(
            config.keys.signing_key, "keys.signing_key", Ed25519PrivateKey
        )
        self.coordinator_key = bytes.fromhex(config.keys.coordinator_signing_public_key)
        self.peers = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
        self.key: ThresholdPublicKey | None = None
        self.share: KeyShare | None = None
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = DecryptorLedger(
            self.state_dir, config.federation_id, refusal_interval_s=refusal_interval_s
        )
        self.anchor = CheckpointAnchor(self.state_dir, config.federation_id, self.coordinator_key)
        self.models = ModelKeeper(self.state_dir, config.federation_id, self.coordinator_key)
        self.trained_from = TrainedFrom(self.state_dir)
        self.fed: Federation | None = None

    def open_keys(self) -> None:
        """Load the pinned threshold key and open this party's share, before anything is sent.

        A wrong or damaged share file is refused here, without contacting the coordinator.

        Raises:
            ConfigError, CryptoError: a key file that is missing, unreadable, or not this
                party's share of the pinned key.
        """
        if self.key is not None:
            return
        path = self.config.keys.threshold_public_key
        gen = self.config.keys.generation
        if gen is not None and not path.exists():
            self._generated_key(None)
        key = ThresholdPublicKey.from_json(_read(path, "keys.threshold_public_key"))
        if gen is not None and key.party_ids != tuple(h.id for h in gen.holders):
            # keys.generation names other holders than the key's: a re-key (a holder revoked
            # or added), accepted only if a quorum of this key's holders signed the new one
            self._generated_key(key)
            key = ThresholdPublicKey.from_json(_read(path, "keys.threshold_public_key"))
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

    def _generated_key(self, previous: ThresholdPublicKey | None) -> None:
        """Take part in, or wait for, the holders' key generation (``keys.generation``); a
        re-key when ``previous`` (the key it replaces) is given."""
        from fedlora.client._keygen import generated_key

        keygen = getattr(self.transport, "keygen", None)
        if keygen is None and previous is not None:
            raise ConfigError(
                f"keys.generation names other holders than the key in "
                f"{self.config.keys.threshold_public_key} ({', '.join(previous.party_ids)}): the "
                "holders re-key before the next round; on Flower the ServerApp runs it when "
                "started with the run config fedlora-accept-config-change=true"
            )
        if keygen is None:
            raise ConfigError(
                f"keys.generation: {self.config.keys.threshold_public_key} does not exist yet: "
                "no key the holders generated was accepted here (on Flower the ServerApp runs "
                "the generation before round 1: start it again; standalone, `fedlora client` "
                "or `fedlora keys generate --config` takes part)"
            )
        x25519 = _private_key(self.config.keys.x25519_key, "keys.x25519_key", X25519PrivateKey)
        generated_key(self.config, keygen(), self.ui, self.signing_key, x25519, previous=previous)

    def join(self, spec: dict[str, Any], num_parameters: int) -> Federation:
        """Fetch the federation's announcement and check it against this member's files, its
        federation spec and its model's size.

        Raises:
            ConfigError, VerificationError: an announcement this member refuses (the cause and
                the fix in one line).
        """
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
                num_parameters=num_parameters,
                spec=spec,
                client_id=self.config.id,
            ),
            key,
        )
        if not info.homomorphic:
            self.key, self.share = None, None
        policy = None
        if key is not None and self.share is not None:
            policy = HolderPolicy(
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
            policy,
        )
        if info.homomorphic and info.ticket_quorum < joined.ticket_quorum:
            self.ui.warn(
                f"{self.id}: the coordinator waits for {info.ticket_quorum} ticket signatures, "
                f"this client requires {joined.ticket_quorum}; rounds may fail at their deadline"
            )
        role = "decryptor" if policy else "contributor"
        self.ui.info(
            f"{self.id}: joined {info.federation_id!r} as {info.role} {role}; {info.rounds} rounds, "
            f"{info.aggregation_frequency} local steps each, {info.encryption_type} aggregation"
        )
        if policy:
            line = (
                select_backend("auto")[1]
                if self.backend is None
                else f"modexp backend: {self.backend.name}"
            )
            self.ui.info(f"{self.id}: {line}")
        return self.fed

    def check_announced(self, info: JoinInfo, round_number: int) -> None:
        """The announcement at join against the settings the anchored log records, once this
        member has read the log up to its checkpoint (:func:`protocol.check_announced`; called
        after every :meth:`keep_models`: a log read only partly may miss an accepted change).

        Raises:
            VerificationError: and the refusal is written to the member's ledger.
        """
        settings = self.models.settings
        if settings is None:
            return
        try:
            check_announced(info, settings)
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "federation settings", str(exc))
            raise

    def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            return self.transport.consistency_proof(old_size, new_size)
        except RemoteError as exc:
            raise VerificationError(
                f"the coordinator cannot prove that its log of {new_size} entries extends the one of "
                f"{old_size} ({exc})"
            ) from None

    def observe_checkpoint(self, cp: SignedCheckpoint, round_number: int) -> None:
        """Check a checkpoint against the kept one; a shrunk or forked log stops this member.

        Raises:
            AnchorError: and the refusal is written to the member's ledger.
        """
        try:
            self.anchor.observe(cp, self._consistency)
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "audit checkpoint", str(exc))
            raise AnchorError(f"{exc}; this client stops (see docs/audit.md)") from None

    def download_global(self, version: int, expected: bytes | None) -> np.ndarray:
        """A global version, checked against ``expected`` (None: only against the digest sent
        with it — for older versions whose digest the member does not hold)."""
        data, digest = self.transport.download_global(version)
        if hashlib.sha256(data).digest() != digest or (
            expected is not None and not hmac.compare_digest(digest, expected)
        ):
            raise VerificationError(f"global adapter v{version} does not match its digest")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def keep_models(
        self,
        round_number: int,
        *,
        num_parameters: int,
        max_version: int,
        save: Callable[[np.ndarray, Path], None] | None,
    ) -> None:
        """Keep every newly published global version, verified against the anchored log;
        ``save`` writes a version in the model's own format beside the vector.

        Raises:
            VerificationError: the coordinator's log or download is not what it signed (the
                refusal is also written to this member's ledger).
        """
        self.observe_checkpoint(self.transport.checkpoint(), round_number)
        assert self.anchor.current is not None
        try:
            lines = self.models.sync(
                self.transport,
                self.anchor.current,
                save,
                num_parameters=num_parameters,
                max_version=max_version,
            )
        except VerificationError as exc:
            self.ledger.record_refusal(round_number, "global adapter", str(exc))
            raise
        for line in lines:
            self.ui.info(f"{self.id}: {line}")
        if self.fed is not None:
            self.check_announced(self.fed.info, round_number)
