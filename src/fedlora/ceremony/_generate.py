"""A holder's side of key generation through a relay, and every member's check of the outcome.

The relay (the coordinator's Keygen service, or a test's) is a :class:`KeygenRelay`: it gathers
every holder's nonce, carries the sealed messages (:mod:`fedlora.ceremony._exchange`) and
collects the signed statement. It is untrusted: the session is derived here from the announced
parameters and every holder's nonce (a holder refuses an announcement without its own nonce or
with other parameters than its configuration), the messages are signed and sealed, and the
outcome is a key only with a quorum of holders' signatures (:func:`accept_outcome`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlora.ceremony._exchange import RELAY, CeremonyAborted, SecureExchange
from fedlora.ceremony._statement import KeyStatement, accept_key
from fedlora.crypto import (
    KeyShare,
    ThresholdPublicKey,
    canonical_digest,
    ticket_quorum,
    verify_signature,
)
from fedlora.crypto._keygen import KeygenParams, run_party
from fedlora.errors import ConfigError, CryptoError, FedLoraError, RemoteError, VerificationError

__all__ = [
    "KeygenOutcome",
    "KeygenRelay",
    "KeygenStart",
    "accept_outcome",
    "check_logged_keys",
    "check_start",
    "generate_as_holder",
    "session_id",
]


@dataclass(frozen=True)
class KeygenStart:
    """What the relay announces once every holder said it is ready."""

    federation_id: str
    attempt: int
    holders: tuple[str, ...]
    nonces: tuple[bytes, ...]
    threshold: int
    bits: int


@dataclass(frozen=True)
class KeygenOutcome:
    """A generated key as anyone may receive it: the key, the session and transcript digest the
    holders signed, and their signatures (holder id → Ed25519 signature)."""

    session: bytes
    public_key: ThresholdPublicKey
    transcript: bytes
    signatures: Mapping[str, bytes]


class KeygenRelay(Protocol):
    """What a holder needs from the relay; every call may block until the others caught up.

    Raises (every method):
        RemoteError: the relay refuses, or reports the attempt ended (its log names whom to blame).
        FedLoraError: the relay cannot be reached.
    """

    def hello(self, nonce: bytes) -> KeygenStart: ...  # waits for every holder

    def post(self, session: bytes, number: int, recipient: str, message: bytes) -> None: ...

    def collect(self, session: bytes, number: int, sender: str) -> bytes: ...

    def done(
        self, session: bytes, public_key: ThresholdPublicKey, transcript: bytes, signature: bytes
    ) -> KeygenOutcome: ...

    def abort(self, session: bytes, reason: str, party: str | None) -> None: ...


def session_id(start: KeygenStart) -> bytes:
    """The session every derived value is bound to: the announcement and every holder's nonce."""
    return canonical_digest(
        "keygen-session",
        [
            ("federation_id", start.federation_id),
            ("attempt", start.attempt),
            ("holders", "\n".join(start.holders)),
            ("threshold", start.threshold),
            ("bits", start.bits),
            ("nonces", b"".join(start.nonces)),
        ],
    )


class _Rounds:
    """:class:`fedlora.ceremony._exchange.Relay` over a :class:`KeygenRelay`: post to every
    holder, then collect from every holder, in share order."""

    def __init__(self, relay: KeygenRelay, session: bytes, holders: Sequence[str]) -> None:
        self.relay, self.session, self.holders = relay, session, tuple(holders)

    def round(self, index: int, number: int, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        for j, message in sorted(outgoing.items()):
            self.relay.post(self.session, number, self.holders[j - 1], message)
        return {
            j: self.relay.collect(self.session, number, pid)
            for j, pid in enumerate(self.holders, start=1)
            if j != index
        }


def check_start(
    start: KeygenStart,
    nonce: bytes,
    *,
    federation_id: str,
    me: str,
    holders: Sequence[str],
    threshold: int,
    bits: int,
) -> int:
    """This holder's index in an announced attempt, after checking the announcement against its
    configuration and that it carries this holder's nonce.

    Raises:
        ConfigError: other parameters than this holder's ``keys.generation``.
        CeremonyAborted: the announcement lacks this holder's nonce (the relay is blamed).
    """
    expected = (federation_id, tuple(holders), threshold, bits)
    announced = (start.federation_id, start.holders, start.threshold, start.bits)
    if announced != expected:
        raise ConfigError(
            f"the coordinator announces a {start.threshold}-of-{len(start.holders)} key of "
            f"{start.bits} bits for federation {start.federation_id!r} held by "
            f"{', '.join(start.holders)}; keys.generation says {threshold}-of-{len(holders)}, "
            f"{bits} bits, held by {', '.join(holders)} for {federation_id!r}: the two must agree"
        )
    index = start.holders.index(me) + 1
    if len(start.nonces) != len(start.holders) or start.nonces[index - 1] != nonce:
        raise CeremonyAborted(
            "the relay announced a session without this holder's nonce", party=RELAY
        )
    return index


def generate_as_holder(
    relay: KeygenRelay,
    *,
    federation_id: str,
    me: str,
    holders: Sequence[str],
    threshold: int,
    bits: int,
    signing_key: Ed25519PrivateKey,
    x25519_key: X25519PrivateKey,
    signing_keys: Mapping[str, bytes],
    x25519_keys: Mapping[str, bytes],
    batch: int = 1024,
    previous: ThresholdPublicKey | None = None,
) -> tuple[KeygenOutcome, KeyShare]:
    """Take part in one attempt: returns the accepted outcome and this holder's share.

    ``signing_keys`` / ``x25519_keys``: every holder's pinned public keys (raw bytes);
    ``previous``: for a re-key, the key this one replaces (see :func:`accept_outcome`).

    Raises:
        CeremonyAborted: the attempt stopped (``party`` names whom to blame); the relay was told.
        ConfigError: the relay announces other parameters than this holder's configuration.
        VerificationError: the relay's outcome is not this key with a quorum of signatures.
    """
    nonce = secrets.token_bytes(32)
    start = relay.hello(nonce)
    index = check_start(
        start,
        nonce,
        federation_id=federation_id,
        me=me,
        holders=holders,
        threshold=threshold,
        bits=bits,
    )
    session = session_id(start)
    params = KeygenParams(tuple(holders), threshold, bits, batch=batch, session=session)
    exchange = SecureExchange(
        session=session,
        parties=tuple(holders),
        index=index,
        signing_key=signing_key,
        x25519_key=x25519_key,
        signing_keys=signing_keys,
        x25519_keys=x25519_keys,
        relay=_Rounds(relay, session, holders),
    )
    try:
        result = run_party(params, index, exchange)
    except RemoteError:
        raise  # the relay ended the attempt (its audit log says why)
    except FedLoraError as exc:  # this holder found the fault: the relay records the blame
        with contextlib.suppress(FedLoraError):  # away: the others stop at their deadline
            relay.abort(session, str(exc), exc.party)
        if isinstance(exc, CeremonyAborted):
            raise
        raise CeremonyAborted(str(exc), party=exc.party) from None
    statement = KeyStatement(
        federation_id, session, result.public_key.fingerprint, tuple(holders), result.transcript
    )
    outcome = relay.done(session, result.public_key, result.transcript, statement.sign(signing_key))
    if outcome.public_key.fingerprint != result.public_key.fingerprint or (
        outcome.session != session or outcome.transcript != result.transcript
    ):
        raise VerificationError("the relay returned another key than the one this holder generated")
    accept_outcome(
        outcome,
        federation_id=federation_id,
        holders=holders,
        threshold=threshold,
        signing_keys=signing_keys,
        previous=previous,
    )
    return outcome, result.share


def accept_outcome(
    outcome: KeygenOutcome,
    *,
    federation_id: str,
    holders: Sequence[str],
    threshold: int,
    signing_keys: Mapping[str, bytes],
    quorum: int | None = None,
    previous: ThresholdPublicKey | None = None,
) -> ThresholdPublicKey:
    """A member's check of a generated key: held by the configured holders with the configured
    threshold, and signed by a quorum (``⌈(ℓ + t)/2⌉``) of them, each against its pinned key.
    A re-key (``previous``: the key it succeeds) must also be signed by a quorum of the previous
    key's holders (``signing_keys`` pins them too): the coordinator and a few holders cannot move
    the federation to a key the others did not take part in.

    Raises:
        VerificationError: naming what does not hold.
    """
    key = outcome.public_key
    if key.party_ids != tuple(holders) or key.threshold != threshold:
        raise VerificationError(
            f"the generated key is a {key.threshold}-of-{key.parties} key held by "
            f"{', '.join(key.party_ids)}; keys.generation expects {threshold}-of-{len(holders)} "
            f"held by {', '.join(holders)}"
        )
    statement = KeyStatement(
        federation_id, outcome.session, key.fingerprint, tuple(holders), outcome.transcript
    )
    try:
        accept_key(
            statement,
            key,
            outcome.signatures,
            signing_keys,
            federation_id=federation_id,
            quorum=quorum,
        )
    except CryptoError as exc:
        raise VerificationError(str(exc)) from None
    if previous is not None:
        need = ticket_quorum(previous.parties, previous.threshold)
        digest = statement.digest()
        signed = [
            h
            for h in previous.party_ids
            if h in outcome.signatures
            and h in signing_keys
            and _verifies(signing_keys[h], digest, outcome.signatures[h])
        ]
        if len(signed) < need:
            raise VerificationError(
                f"the new key is signed by {len(signed)} holders of the key it replaces "
                f"({', '.join(signed) or 'none'}); a re-key needs {need} of "
                f"{', '.join(previous.party_ids)}"
            )
    return key


def _verifies(public: bytes, digest: bytes, signature: bytes) -> bool:
    try:
        verify_signature(public, digest, signature)
    except FedLoraError:
        return False
    return True


def check_logged_keys(events: Sequence[Mapping[str, Any]], federation_id: str) -> list[str]:
    """An auditor's check of every generated key in a log (``key_generated`` entries): each is
    the key its fingerprint names, signed by a quorum of its holders (each checked against the
    signing key the log's ``federation_started`` records for it), and a re-key also by a quorum of
    the key it replaces, which must be the previous one; ``federation_started`` and every key
    change name a key the log generated. Returns one line per key (none for a dealt key).

    Raises:
        VerificationError: naming the entry (by index) and what does not hold.
    """
    started = next((e for e in events if e.get("event") == "federation_started"), None)
    pinned: dict[str, bytes] = {}
    for party in (started or {}).get("parties", []):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            pinned[str(party["id"])] = bytes.fromhex(party["signing_public_key"])
    previous: ThresholdPublicKey | None = None
    generated: list[str] = []
    lines = []
    for entry in events:
        if entry.get("event") != "key_generated":
            continue
        where = f"audit entry {entry.get('index', '?')} (key_generated)"
        try:
            key = ThresholdPublicKey.from_json(json.dumps(entry["public_key"]).encode())
            if key.fingerprint.hex() != entry["key_fingerprint"]:
                raise VerificationError("its key is not the one its fingerprint names")
            replaces = entry.get("replaces")
            if replaces is not None and (
                previous is None or previous.fingerprint.hex() != replaces
            ):
                raise VerificationError("it replaces a key this log did not generate before it")
            outcome = KeygenOutcome(
                bytes.fromhex(entry["session"]),
                key,
                bytes.fromhex(entry["transcript"]),
                {h: bytes.fromhex(s) for h, s in entry["signatures"].items()},
            )
            if started is not None:
                accept_outcome(
                    outcome,
                    federation_id=federation_id,
                    holders=key.party_ids,
                    threshold=key.threshold,
                    signing_keys=pinned,
                    previous=previous if replaces is not None else None,
                )
        except VerificationError as exc:
            raise VerificationError(f"{where}: {exc}") from None
        except (FedLoraError, KeyError, TypeError, ValueError, AttributeError):
            raise VerificationError(f"{where} is malformed") from None
        previous = key
        generated.append(key.fingerprint.hex())
        signers = ", ".join(sorted(outcome.signatures))
        lines.append(
            f"key {key.fingerprint.hex()[:16]}… ({key.threshold}-of-{key.parties}) generated by "
            f"its holders, signed by {signers}"
            + (f", replacing {replaces[:16]}…" if replaces else "")
            + ("" if started is not None else " (signatures not checked: no federation yet)")
        )
    if generated and started is not None and started.get("key_fingerprint") not in generated:
        raise VerificationError(
            f"audit entry {started.get('index', '?')} (federation_started) names a key the log "
            "did not generate"
        )
    for entry in events:
        change = (entry.get("changes") or {}).get("keys.threshold_public_key")
        if entry.get("event") == "config_changed" and change and change[1] not in generated:
            raise VerificationError(
                f"audit entry {entry.get('index', '?')} (config_changed) moves the federation "
                "to a key the log did not generate"
            )
    return lines
