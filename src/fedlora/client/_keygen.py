"""A member's key when its holders generate it: take part (a holder), or wait and check (every member).

Called before the member's keys are opened (:meth:`fedlora.client._member.Member.open_keys`)
when ``keys.generation`` is set and ``keys.threshold_public_key`` does not exist yet. A holder
runs :func:`fedlora.ceremony._generate.generate_as_holder` through the coordinator's relay and
keeps its share sealed to its own X25519 key; every member accepts the key only with the
holders' statement signed by a quorum of them (checked against the keys it pins in ``peers``),
then writes it, and the statement beside it (``<state>/key-statement.json``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlora._files import replace_file, write_new_file
from fedlora.ceremony._exchange import RELAY, CeremonyAborted, SecureExchange
from fedlora.ceremony._generate import (
    KeygenOutcome,
    KeygenRelay,
    KeygenStart,
    accept_outcome,
    check_start,
    generate_as_holder,
    session_id,
)
from fedlora.ceremony._statement import KeyStatement
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig
from fedlora.crypto import ThresholdPublicKey, ed25519_public_bytes, seal_key_share
from fedlora.crypto._keygen import KeygenParams, PartyRun
from fedlora.errors import (
    ConfigError,
    FedLoraError,
    ProtocolError,
    RemoteError,
    VerificationError,
)

__all__ = ["STATEMENT_FILE", "KeygenClient", "KeygenDone", "PushKeygen", "generated_key"]

STATEMENT_FILE = "key-statement.json"
ATTEMPTS = 3  # a holder starts over this many times before it gives up (each abort is logged)


class KeygenClient(KeygenRelay, Protocol):
    """The relay as a member sees it: a holder's calls, and everyone's ``result``."""

    def result(self) -> KeygenOutcome | None: ...  # None: not yet


def generated_key(
    config: ClientConfig,
    relay: KeygenClient,
    ui: Reporter,
    signing_key: Ed25519PrivateKey,
    x25519_key: X25519PrivateKey,
    *,
    previous: ThresholdPublicKey | None = None,
) -> ThresholdPublicKey:
    """Take part in (a holder) or wait for the key generation, check the outcome, and write the
    key (and a holder's sealed share). Returns the key. ``previous``: a re-key's current key —
    the new one must be signed by a quorum of its holders too; it and its share are kept beside
    the new ones (``<name>.<fingerprint prefix>.json``).

    Raises:
        CeremonyAborted: a holder's last attempt stopped (naming whom to blame).
        VerificationError: the outcome is not signed by a quorum of the pinned holders.
        ConfigError: the coordinator announces other parameters than ``keys.generation``.
    """
    gen = config.keys.generation
    assert gen is not None
    holders = [h.id for h in gen.holders]
    pinned = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
    signing_keys = dict(pinned)  # the holders', and a re-key's previous holders' too
    if ed25519_public_bytes(signing_key) != pinned[config.id]:
        raise ConfigError(
            f"keys.signing_key: it is not the key peers pin for {config.id!r}; the holders would "
            "refuse every message signed with it"
        )
    check = {
        "federation_id": config.federation_id,
        "holders": holders,
        "threshold": gen.threshold,
        "signing_keys": signing_keys,
        "previous": previous,
    }
    outcome = None
    if config.id in holders:
        x25519 = {h.id: bytes.fromhex(h.x25519_public_key) for h in gen.holders}
        for attempt in range(1, ATTEMPTS + 1):
            ui.info(
                f"{config.id}: generating the federation's {gen.threshold}-of-{len(holders)} key "
                f"with {', '.join(h for h in holders if h != config.id)} (attempt {attempt})"
            )
            started = time.monotonic()
            try:
                outcome, share = generate_as_holder(
                    relay,
                    me=config.id,
                    bits=gen.bits,
                    signing_key=signing_key,
                    x25519_key=x25519_key,
                    x25519_keys=x25519,
                    **check,  # type: ignore[arg-type]
                )
            except RemoteError as exc:
                if "generated already" in str(exc):
                    break  # this holder signed before it stopped; the key is fetched below
                if attempt == ATTEMPTS:
                    raise
                ui.warn(f"{config.id}: key generation attempt stopped: {exc}; starting again")
                continue
            except CeremonyAborted as exc:
                if attempt == ATTEMPTS:
                    raise
                ui.warn(f"{config.id}: key generation attempt stopped: {exc}; starting again")
                continue
            # The share first: a key file without its share would leave this holder unable
            # to decrypt; a share without its key is generated again.
            blob = seal_key_share(share, x25519_key.public_key())
            if previous is not None:
                _keep(config.keys.key_share, previous)
            replace_file(config.keys.key_share, blob, mode=0o600)
            ui.info(
                f"{config.id}: key generated in {time.monotonic() - started:.0f}s; share kept in "
                f"{config.keys.key_share}"
            )
            break
    if outcome is None:
        ui.info(f"{config.id}: waiting for the share holders to generate the federation's key")
        while (outcome := relay.result()) is None:
            pass
    key = accept_outcome(outcome, **check)  # type: ignore[arg-type]
    _write_key(config, outcome, key, previous=previous)
    signers = ", ".join(sorted(outcome.signatures))
    ui.info(
        f"{config.id}: accepted key {key.fingerprint.hex()[:16]}… signed by {signers}; written "
        f"to {config.keys.threshold_public_key}"
    )
    return key


def _write_key(
    config: ClientConfig,
    outcome: KeygenOutcome,
    key: ThresholdPublicKey,
    *,
    previous: ThresholdPublicKey | None = None,
) -> None:
    """Write an accepted key, and the statement beside it (``<state>/key-statement.json``)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    statement = {
        "federation_id": config.federation_id,
        "session": outcome.session.hex(),
        "key_fingerprint": key.fingerprint.hex(),
        "holders": list(key.party_ids),
        "transcript": outcome.transcript.hex(),
        "signatures": {h: s.hex() for h, s in sorted(outcome.signatures.items())},
    }
    replace_file(
        config.state_dir / STATEMENT_FILE, (json.dumps(statement, indent=2) + "\n").encode()
    )
    path = config.keys.threshold_public_key
    try:
        if previous is not None:
            _keep(path, previous)
            replace_file(path, key.to_json())
        elif path.exists() and path.read_bytes() == key.to_json():
            pass  # this key, written before (a message handled twice)
        else:
            write_new_file(path, key.to_json())
    except FedLoraError as exc:
        raise ConfigError(f"keys.threshold_public_key: {exc}") from None


def _keep(path: Path, previous: ThresholdPublicKey) -> None:
    """Keep ``path`` (a key or share of ``previous``) beside it, named by the key's fingerprint."""
    if not path.exists():
        return
    kept = path.with_name(f"{path.stem}.{previous.fingerprint.hex()[:16]}{path.suffix}")
    if not kept.exists():
        write_new_file(kept, path.read_bytes(), mode=path.stat().st_mode & 0o777)


RUN_FILE = "keygen-run.sealed"  # a holder's generation between messages, sealed to itself


class PushKeygen:
    """This member's side of key generation on a push transport (Flower), one message a step.

    A holder keeps its generation between messages in ``<state>/keygen-run.sealed`` — the
    :class:`fedlora.crypto._keygen.PartyRun` (its secret shares of the candidates), the session
    and the exchange's round — sealed with AES-256-GCM under a key derived from its own X25519
    key, as its share file is; it is read only after it opens, and removed when the key is
    accepted or the attempt fails. Nothing else lasts (a Flower node may run each message in
    another process).
    """

    def __init__(
        self, config: ClientConfig, signing_key: Ed25519PrivateKey, x25519_key: X25519PrivateKey
    ) -> None:
        gen = config.keys.generation
        if gen is None:
            raise ConfigError("keys.generation is not set: this federation's key was dealt")
        self.config, self.gen = config, gen
        self.signing_key, self.x25519_key = signing_key, x25519_key
        self.holders = tuple(h.id for h in gen.holders)
        self.pinned = {p.id: bytes.fromhex(p.signing_public_key) for p in config.peers}
        self.x25519 = {h.id: bytes.fromhex(h.x25519_public_key) for h in gen.holders}
        self.path = config.state_dir / RUN_FILE

    @property
    def holds(self) -> bool:
        return self.config.id in self.holders

    # -- what lasts between messages ---------------------------------------------------------
    def _aead(self) -> Any:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        raw = self.x25519_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        info = b"fedlora/keygen/run\0" + self.config.federation_id.encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)
        return AESGCM(key)

    def _save(self, state: dict[str, Any]) -> None:
        import pickle

        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead().encrypt(nonce, pickle.dumps(state), RUN_FILE.encode())
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, sealed, mode=0o600)

    def _load(self) -> dict[str, Any]:
        import pickle

        from cryptography.exceptions import InvalidTag

        try:
            data = self.path.read_bytes()
            plain = self._aead().decrypt(data[:12], data[12:], RUN_FILE.encode())
        except FileNotFoundError:
            raise ProtocolError("no key generation is under way on this node") from None
        except InvalidTag:
            raise ProtocolError(f"{self.path} does not open with this node's key") from None
        state: dict[str, Any] = pickle.loads(plain)  # written by this node, authenticated
        return state

    def forget(self) -> None:
        """Drop an attempt's state (the attempt failed, or the key is accepted)."""
        self.path.unlink(missing_ok=True)

    def _exchange(self, state: dict[str, Any]) -> SecureExchange:
        ex = SecureExchange(
            session=state["session"],
            parties=self.holders,
            index=state["index"],
            signing_key=self.signing_key,
            x25519_key=self.x25519_key,
            signing_keys=self.pinned,
            x25519_keys=self.x25519,
            relay=None,
        )
        ex.number = state["number"]
        return ex

    # -- the steps ---------------------------------------------------------------------------
    def hello(self) -> bytes:
        """A fresh attempt: this holder's nonce (the session depends on every holder's)."""
        nonce = secrets.token_bytes(32)
        self._save({"nonce": nonce})
        return nonce

    def first(self, start: KeygenStart) -> dict[str, bytes]:
        """The announced attempt: check it, start the generation; round 1's sealed messages."""
        state = self._load()
        index = check_start(
            start,
            state["nonce"],
            federation_id=self.config.federation_id,
            me=self.config.id,
            holders=self.holders,
            threshold=self.gen.threshold,
            bits=self.gen.bits,
        )
        session = session_id(start)
        params = KeygenParams(self.holders, self.gen.threshold, self.gen.bits, session=session)
        run = PartyRun(params, index)
        state.update(session=session, index=index, number=1, run=run, result=None)
        return self._send(state, run.start())

    def step(self, number: int, delivered: Mapping[str, bytes]) -> dict[str, bytes] | KeygenDone:
        """Round ``number``'s sealed messages to this holder in; the next round's out, or, once
        the key exists, the statement this holder signs."""
        state = self._load()
        if number != state["number"]:
            raise CeremonyAborted(
                f"the relay delivered round {number} to a holder in round {state['number']}",
                party=RELAY,
            )
        ex = self._exchange(state)
        by_index = {self.holders.index(h) + 1: m for h, m in delivered.items() if h in self.holders}
        incoming = ex.open(by_index, state["own"])
        run: PartyRun = state["run"]
        outgoing = run.step(incoming)
        if outgoing is not None:
            state["number"] += 1
            return self._send(state, outgoing)
        result = run.result
        assert result is not None
        statement = KeyStatement(
            self.config.federation_id,
            state["session"],
            result.public_key.fingerprint,
            self.holders,
            result.transcript,
        )
        self._save({**state, "run": None, "result": result})
        return KeygenDone(result.public_key, result.transcript, statement.sign(self.signing_key))

    def _send(self, state: dict[str, Any], outgoing: Mapping[int, Any]) -> dict[str, bytes]:
        ex = self._exchange(state)
        sealed, own = ex.seal(outgoing)
        state["own"] = own
        self._save(state)
        return {self.holders[j - 1]: m for j, m in sealed.items()}

    def previous(self) -> ThresholdPublicKey | None:
        """The key a re-key replaces: the one this node holds, when its holders are not the
        ones ``keys.generation`` names (a holder revoked or added)."""
        path = self.config.keys.threshold_public_key
        if not path.exists():
            return None
        try:
            key = ThresholdPublicKey.from_json(path.read_bytes())
        except FedLoraError as exc:
            raise ConfigError(f"keys.threshold_public_key: {path}: {exc}") from None
        if key.party_ids == self.holders and key.threshold == self.gen.threshold:
            return None
        return key

    def accept(self, outcome: KeygenOutcome, ui: Reporter) -> ThresholdPublicKey:
        """The relay's outcome: accepted only with a quorum of the holders' signatures (for a
        re-key, of the replaced key's holders too); then the key (and this holder's share,
        sealed to itself) is written — a replaced key and share kept beside them — and the run
        forgotten."""
        previous = self.previous()
        key = accept_outcome(
            outcome,
            federation_id=self.config.federation_id,
            holders=self.holders,
            threshold=self.gen.threshold,
            signing_keys=self.pinned,
            previous=previous,
        )
        if self.holds:
            result = self._load().get("result")
            if result is None or result.public_key.fingerprint != key.fingerprint:
                raise VerificationError(
                    "the relay's key is not the one this holder generated its share of"
                )
            blob = seal_key_share(result.share, self.x25519_key.public_key())
            if previous is not None:
                _keep(self.config.keys.key_share, previous)
            replace_file(self.config.keys.key_share, blob, mode=0o600)
        _write_key(self.config, outcome, key, previous=previous)
        self.forget()
        ui.info(
            f"{self.config.id}: accepted key {key.fingerprint.hex()[:16]}… signed by "
            f"{', '.join(sorted(outcome.signatures))}"
        )
        return key


@dataclass(frozen=True)
class KeygenDone:
    """A holder's last answer in an attempt: its key and the statement it signed."""

    public_key: ThresholdPublicKey
    transcript: bytes
    signature: bytes
