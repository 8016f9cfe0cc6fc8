"""The key generation's messages between holders: signed, end-to-end encrypted, in order.

:func:`fedlora.crypto._keygen.run_party` speaks in rounds of ``{recipient: payload}``;
:class:`SecureExchange` carries each round through an untrusted relay (the coordinator, or
Flower's server) so that the relay learns nothing of a payload and can change, replay, reorder
or drop nothing without the holders noticing:

* a payload is encoded canonically (:func:`encode_payload`; never pickle: a holder decodes only
  integers, bytes, uint16 arrays and lists, tuples and int-keyed maps of them, within limits);
* the sender signs ``(session, round, sender, recipient, SHA-256(payload))`` with its Ed25519
  key — a recipient can later show anyone what the sender sent it (blame for a discarded
  candidate), and nobody can forge a holder's message;
* payload and signature are sealed with AES-256-GCM under a key the two holders alone derive
  (static X25519 of both, HKDF bound to the session and the pair); the header is the associated
  data and the nonce is ``(round, sender, recipient)``, used once per session;
* every round, every holder sends to every holder and expects exactly one message from each; a
  missing one, one from outside the key's holders, another session's or another round's, or
  one that does not open or verify, aborts the generation with the party to blame
  (:class:`CeremonyAborted`: ``party`` is a holder id, or ``"relay"``). Nothing is kept.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlora.crypto import canonical_digest
from fedlora.errors import CryptoError

__all__ = [
    "CeremonyAborted",
    "MemoryRelay",
    "Relay",
    "SecureExchange",
    "decode_payload",
    "encode_payload",
]

MAX_PAYLOAD = 64 << 20  # bytes of one message's payload: a round of 8,192 candidates fits
MAX_MESSAGE = MAX_PAYLOAD + 1024  # a sealed message: payload, signature and the AEAD tag
MAX_DEPTH = 4
MAX_ITEMS = 1 << 20
RELAY = "relay"


class CeremonyAborted(CryptoError):
    """The key generation stopped; ``party`` names the holder (or ``"relay"``) to blame."""


# -- payloads ----------------------------------------------------------------------------------
def encode_payload(value: Any) -> bytes:
    """Canonical bytes of a payload: None, int, bytes, a uint16 array, or lists, tuples and
    int-keyed dicts of them (keys sorted)."""
    out: list[bytes] = []

    def put(v: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise CryptoError("payload nested too deeply")
        if v is None:
            out.append(b"N")
        elif isinstance(v, bool):
            raise CryptoError("payloads carry no booleans")
        elif isinstance(v, int):
            raw = abs(v).to_bytes((abs(v).bit_length() + 7) // 8, "big")
            out.extend([b"I" if v >= 0 else b"J", len(raw).to_bytes(4, "big"), raw])
        elif isinstance(v, bytes):
            out.extend([b"B", len(v).to_bytes(4, "big"), v])
        elif isinstance(v, np.ndarray):
            if v.dtype != np.uint16 or v.ndim > 8:
                raise CryptoError("payload arrays are uint16 with at most 8 axes")
            out.extend([b"A", bytes([v.ndim]), *(d.to_bytes(4, "big") for d in v.shape)])
            out.append(np.ascontiguousarray(v, dtype=">u2").tobytes())
        elif isinstance(v, (list, tuple)):
            out.extend([b"L" if isinstance(v, list) else b"T", len(v).to_bytes(4, "big")])
            for item in v:
                put(item, depth + 1)
        elif isinstance(v, dict):
            out.extend([b"D", len(v).to_bytes(4, "big")])
            for key in sorted(v):
                if isinstance(key, bool) or not isinstance(key, int):
                    raise CryptoError("payload maps are keyed by integers")
                put(key, depth + 1)
                put(v[key], depth + 1)
        else:
            raise CryptoError(f"payloads carry no {type(v).__name__}")

    put(value, 0)
    data = b"".join(out)
    if len(data) > MAX_PAYLOAD:
        raise CryptoError(f"payload of {len(data)} bytes is over the limit of {MAX_PAYLOAD}")
    return data


def decode_payload(data: bytes) -> Any:
    """The inverse of :func:`encode_payload`, refusing anything else: trailing bytes, lengths
    beyond the data, depth or item counts over the limits, unknown tags.

    Raises:
        CryptoError: naming what is malformed.
    """
    if len(data) > MAX_PAYLOAD:
        raise CryptoError("payload over the limit")
    pos = 0
    items = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise CryptoError("payload truncated")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def length() -> int:
        return int.from_bytes(take(4), "big")

    def get(depth: int) -> Any:
        nonlocal items
        items += 1
        if depth > MAX_DEPTH or items > MAX_ITEMS:
            raise CryptoError("payload nested too deeply or too many items")
        tag = take(1)
        if tag == b"N":
            return None
        if tag in (b"I", b"J"):
            value = int.from_bytes(take(length()), "big")
            return value if tag == b"I" else -value
        if tag == b"B":
            return take(length())
        if tag == b"A":
            ndim = take(1)[0]
            if ndim > 8:
                raise CryptoError("payload array has too many axes")
            shape = tuple(length() for _ in range(ndim))
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if count > MAX_PAYLOAD // 2:
                raise CryptoError("payload array too large")
            raw = take(2 * count)
            return np.frombuffer(raw, dtype=">u2").astype(np.uint16).reshape(shape)
        if tag in (b"L", b"T"):
            n = length()
            if n > MAX_ITEMS:
                raise CryptoError("payload list too long")
            seq = [get(depth + 1) for _ in range(n)]
            return seq if tag == b"L" else tuple(seq)
        if tag == b"D":
            n = length()
            if n > MAX_ITEMS:
                raise CryptoError("payload map too long")
            out = {}
            for _ in range(n):
                key = get(depth + 1)
                if not isinstance(key, int) or key in out:
                    raise CryptoError("payload map keys must be distinct integers")
                out[key] = get(depth + 1)
            return out
        raise CryptoError(f"payload has an unknown tag {tag!r}")

    value = get(0)
    if pos != len(data):
        raise CryptoError("payload has trailing bytes")
    return value


# -- the relay ---------------------------------------------------------------------------------
class Relay(Protocol):
    """Carries one round: a holder hands in its sealed messages ``{recipient index: bytes}`` and
    gets back the sealed messages addressed to it ``{claimed sender index: bytes}``. Untrusted."""

    def round(self, index: int, number: int, outgoing: dict[int, bytes]) -> dict[int, bytes]: ...


class MemoryRelay:
    """A relay for holders running as threads of one process (tests). ``tamper`` lets a test
    play a hostile relay: it sees ``(number, sender, recipient, message)`` and returns the
    message to deliver (or None to drop it)."""

    def __init__(
        self,
        ell: int,
        *,
        timeout_s: float = 30.0,
        tamper: Callable[[int, int, int, bytes], bytes | None] | None = None,
    ) -> None:
        self.ell, self.tamper = ell, tamper
        self._boxes: dict[int, dict[int, bytes]] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(ell, timeout=timeout_s)

    def round(self, index: int, number: int, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        with self._lock:
            self._boxes[index] = outgoing
        try:
            self._barrier.wait()
            incoming: dict[int, bytes] = {}
            for sender, box in sorted(self._boxes.items()):
                if index in box:
                    message = box[index]
                    if self.tamper is not None:
                        tampered = self.tamper(number, sender, index, message)
                        if tampered is None:
                            continue
                        message = tampered
                    incoming[sender] = message
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CeremonyAborted(
                "a holder stopped answering: the round's messages did not all arrive",
                party=RELAY,
            ) from None
        return incoming

    def abort(self) -> None:
        self._barrier.abort()


# -- the exchange ------------------------------------------------------------------------------
def _pair_key(
    mine: X25519PrivateKey, theirs: X25519PublicKey, session: bytes, low: int, high: int
) -> AESGCM:
    shared = mine.exchange(theirs)
    info = b"fedlora/keygen/pair\0" + session + low.to_bytes(2, "big") + high.to_bytes(2, "big")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
    return AESGCM(key)


def _header(session: bytes, number: int, sender: int, recipient: int) -> bytes:
    return (
        b"fedlora/keygen/msg\0"
        + session
        + number.to_bytes(4, "big")
        + sender.to_bytes(2, "big")
        + recipient.to_bytes(2, "big")
    )


def _nonce(number: int, sender: int, recipient: int) -> bytes:
    return number.to_bytes(8, "big") + sender.to_bytes(2, "big") + recipient.to_bytes(2, "big")


def message_digest(
    session: bytes, number: int, sender: str, recipient: str, payload: bytes
) -> bytes:
    """What a holder signs for one message (and what a blame check verifies)."""
    return canonical_digest(
        "keygen-message",
        [
            ("session", session),
            ("round", number),
            ("sender", sender),
            ("recipient", recipient),
            ("payload", hashlib.sha256(payload).digest()),
        ],
    )


class SecureExchange:
    """:data:`fedlora.crypto._keygen.Exchange` for holder ``index`` over an untrusted relay."""

    def __init__(
        self,
        *,
        session: bytes,
        parties: tuple[str, ...],
        index: int,
        signing_key: Ed25519PrivateKey,
        x25519_key: X25519PrivateKey,
        signing_keys: Mapping[str, bytes],
        x25519_keys: Mapping[str, bytes],
        relay: Relay | None,
    ) -> None:
        """``signing_keys`` / ``x25519_keys``: every holder's pinned public keys (raw bytes);
        ``relay``: None for a push transport, which calls :meth:`seal` and :meth:`open` itself."""
        if len(session) != 32:
            raise CryptoError("a key generation session id is 32 bytes")
        self.session, self.parties, self.index, self.relay = session, parties, index, relay
        self.signing_key = signing_key
        self.number = 0
        self._verify = {
            j: Ed25519PublicKey.from_public_bytes(signing_keys[pid])
            for j, pid in enumerate(parties, start=1)
        }
        self._aead = {
            j: _pair_key(
                x25519_key,
                X25519PublicKey.from_public_bytes(x25519_keys[pid]),
                session,
                min(index, j),
                max(index, j),
            )
            for j, pid in enumerate(parties, start=1)
            if j != index
        }

    def _blame(self, sender: int, why: str) -> CeremonyAborted:
        who = self.parties[sender - 1] if 1 <= sender <= len(self.parties) else f"#{sender}"
        return CeremonyAborted(
            f"key generation aborted in round {self.number}: {why} ({who})", party=who
        )

    def __call__(self, outgoing: Mapping[int, Any]) -> dict[int, Any]:
        self.number += 1
        sealed, own = self.seal(outgoing)
        assert self.relay is not None, "a push transport seals and opens each round itself"
        return self.open(self.relay.round(self.index, self.number, sealed), own)

    def seal(self, outgoing: Mapping[int, Any]) -> tuple[dict[int, bytes], dict[int, Any]]:
        """Round :attr:`number`'s messages to the others, signed and sealed, and what this
        holder sends itself (``{its index: payload}``, as the others get theirs: encoded and
        decoded; empty when it sends itself nothing)."""
        n, me = self.number, self.index
        sealed: dict[int, bytes] = {}
        own: dict[int, Any] = {}
        for j, value in outgoing.items():
            payload = encode_payload(value)
            if j == me:
                own[me] = decode_payload(payload)
                continue
            digest = message_digest(
                self.session, n, self.parties[me - 1], self.parties[j - 1], payload
            )
            signature = self.signing_key.sign(digest)
            sealed[j] = self._aead[j].encrypt(
                _nonce(n, me, j), payload + signature, _header(self.session, n, me, j)
            )
        return sealed, own

    def open(self, delivered: Mapping[int, bytes], own: Mapping[int, Any]) -> dict[int, Any]:
        """Round :attr:`number`'s messages to this holder: each must come from another holder,
        open for this session and round, and carry its sender's signature.

        Raises:
            CeremonyAborted: naming the holder to blame, or the relay.
        """
        n, me = self.number, self.index
        missing = sorted(set(self._aead) - set(delivered))
        if missing:  # every holder sends to every holder in every round
            raise self._blame(
                missing[0], "no message from it arrived (it stopped, or the relay dropped it)"
            )
        incoming: dict[int, Any] = dict(own)
        for sender, message in delivered.items():
            if sender not in self._aead:
                raise CeremonyAborted(
                    f"key generation aborted in round {n}: the relay delivered a message from "
                    f"{sender!r}, who holds no share of this key",
                    party=RELAY,
                )
            try:
                opened = self._aead[sender].decrypt(
                    _nonce(n, sender, me), message, _header(self.session, n, sender, me)
                )
            except InvalidTag:
                raise CeremonyAborted(
                    f"key generation aborted in round {n}: the message from "
                    f"{self.parties[sender - 1]!r} does not open for this session and round "
                    "(altered, replayed or reordered on the way)",
                    party=RELAY,
                ) from None
            payload, signature = opened[:-64], opened[-64:]
            digest = message_digest(
                self.session, n, self.parties[sender - 1], self.parties[me - 1], payload
            )
            try:
                self._verify[sender].verify(signature, digest)
            except InvalidSignature:
                raise self._blame(sender, "its message is not signed by its pinned key") from None
            try:
                incoming[sender] = decode_payload(payload)
            except CryptoError as exc:
                raise self._blame(sender, f"its message is malformed: {exc}") from None
        return incoming
