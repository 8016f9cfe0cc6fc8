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
import time
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlora._files import replace_file, write_new_file
from fedlora.ceremony._exchange import CeremonyAborted
from fedlora.ceremony._generate import (
    KeygenOutcome,
    KeygenRelay,
    accept_outcome,
    generate_as_holder,
)
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig
from fedlora.crypto import ThresholdPublicKey, ed25519_public_bytes, seal_key_share
from fedlora.errors import ConfigError, FedLoraError, RemoteError

__all__ = ["STATEMENT_FILE", "KeygenClient", "generated_key"]

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
    config.state_dir.mkdir(parents=True, exist_ok=True)
    statement = {
        "federation_id": config.federation_id,
        "session": outcome.session.hex(),
        "key_fingerprint": key.fingerprint.hex(),
        "holders": holders,
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
        else:
            write_new_file(path, key.to_json())
    except FedLoraError as exc:
        raise ConfigError(f"keys.threshold_public_key: {exc}") from None
    signers = ", ".join(sorted(outcome.signatures))
    ui.info(
        f"{config.id}: accepted key {key.fingerprint.hex()[:16]}… signed by {signers}; written "
        f"to {config.keys.threshold_public_key}"
    )
    return key


def _keep(path: Path, previous: ThresholdPublicKey) -> None:
    """Keep ``path`` (a key or share of ``previous``) beside it, named by the key's fingerprint."""
    if not path.exists():
        return
    kept = path.with_name(f"{path.stem}.{previous.fingerprint.hex()[:16]}{path.suffix}")
    if not kept.exists():
        write_new_file(kept, path.read_bytes(), mode=path.stat().st_mode & 0o777)
