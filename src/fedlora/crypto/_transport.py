"""Key-share transport: each share file is encrypted to its party's X25519 key.

ECIES-style sealing with primitives from pyca/cryptography: a fresh ephemeral X25519 key agrees a
secret with the recipient's static key; HKDF-SHA256 (RFC 5869) derives an AES-256-GCM key bound
to both public keys; the party id, the threshold key's fingerprint and both public keys are the
associated data. So a share file that is tampered with, addressed to another party, or belongs to
another key fails to open with an error that says which — and never yields a wrong share.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

import gmpy2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedlora.crypto._threshold_keys import KeyShare, ThresholdPublicKey
from fedlora.crypto._util import Rng, system_rng
from fedlora.errors import CryptoError

__all__ = ["open_key_share", "seal_key_share", "x25519_public_bytes"]

_FORMAT = "fedlora-keyshare/1"
_INFO = b"fedlora/keyshare/v1"


def x25519_public_bytes(key: X25519PublicKey | X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    if not isinstance(public, X25519PublicKey):
        raise CryptoError(f"expected an X25519 key, got {type(key).__name__}")
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _aad(party_id: str, fingerprint: bytes, recipient: bytes, ephemeral: bytes) -> bytes:
    pid = party_id.encode()
    return b"".join(
        [
            _FORMAT.encode(),
            b"\x00",
            len(pid).to_bytes(2, "big"),
            pid,
            fingerprint,
            recipient,
            ephemeral,
        ]
    )


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + ephemeral + recipient
    ).derive(shared)


def seal_key_share(share: KeyShare, recipient: X25519PublicKey, *, rng: Rng | None = None) -> bytes:
    """Encrypt ``share`` to ``recipient``; returns the share file's bytes (JSON).

    Raises:
        CryptoError: wrong argument types.
    """
    if not isinstance(share, KeyShare):
        raise CryptoError(f"share must be a KeyShare, got {type(share).__name__}")
    source = system_rng(rng)
    ephemeral_key = X25519PrivateKey.from_private_bytes(source.getrandbits(256).to_bytes(32, "big"))
    recipient_raw = x25519_public_bytes(recipient)
    ephemeral_raw = x25519_public_bytes(ephemeral_key)
    key = _derive(ephemeral_key.exchange(recipient), ephemeral_raw, recipient_raw)
    nonce = source.getrandbits(96).to_bytes(12, "big")
    aad = _aad(share.party_id, share.key_fingerprint, recipient_raw, ephemeral_raw)
    sealed = AESGCM(key).encrypt(nonce, share.to_bytes(), aad)
    doc = {
        "format": _FORMAT,
        "party_id": share.party_id,
        "key_fingerprint": share.key_fingerprint.hex(),
        "recipient": recipient_raw.hex(),
        "ephemeral": ephemeral_raw.hex(),
        "nonce": nonce.hex(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _field(doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise CryptoError(f"share file lacks the string field {name!r}")
    return value


def _hexfield(doc: dict[str, object], name: str, length: int) -> bytes:
    try:
        raw = bytes.fromhex(_field(doc, name))
    except ValueError:
        raise CryptoError(f"share file field {name!r} is not hex") from None
    if len(raw) != length:
        raise CryptoError(f"share file field {name!r} must be {length} bytes, got {len(raw)}")
    return raw


def open_key_share(
    sealed: bytes,
    recipient: X25519PrivateKey,
    *,
    party_id: str,
    public_key: ThresholdPublicKey,
) -> KeyShare:
    """Decrypt and check a share file for ``party_id`` under ``public_key``.

    Beyond decrypting, the share is checked against its verification key
    (``v^(Δ·sᵢ) = vᵢ``), so a share that decrypts but is not the dealt one is refused too.

    Raises:
        CryptoError: malformed file; addressed to another party, key or X25519 key; tampered
            (authentication failed); or a share that does not match its verification key.
    """
    if not isinstance(recipient, X25519PrivateKey):
        raise CryptoError(f"recipient must be an X25519PrivateKey, got {type(recipient).__name__}")
    try:
        doc = json.loads(bytes(sealed).decode())
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        raise CryptoError("share file is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise CryptoError(f"share file must have format {_FORMAT!r}")
    addressed_to = _field(doc, "party_id")
    if addressed_to != party_id:
        raise CryptoError(f"share file is for party {addressed_to!r}, not {party_id!r}")
    fingerprint = _hexfield(doc, "key_fingerprint", 32)
    if not hmac.compare_digest(fingerprint, public_key.fingerprint):
        raise CryptoError(
            "share file belongs to another threshold key than the one given (its key "
            f"{fingerprint.hex()[:16]}…, given {public_key.fingerprint.hex()[:16]}…): the key share "
            "and the threshold public key must come from the same dealing"
        )
    recipient_raw = _hexfield(doc, "recipient", 32)
    own_raw = x25519_public_bytes(recipient)
    if not hmac.compare_digest(recipient_raw, own_raw):
        raise CryptoError("share file is encrypted to a different X25519 key than the one given")
    ephemeral_raw = _hexfield(doc, "ephemeral", 32)
    nonce = _hexfield(doc, "nonce", 12)
    try:
        sealed_bytes = base64.b64decode(_field(doc, "ciphertext"), validate=True)
    except binascii.Error:
        raise CryptoError("share file field 'ciphertext' is not base64") from None
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError:
        raise CryptoError("share file has an invalid ephemeral key") from None
    key = _derive(shared, ephemeral_raw, recipient_raw)
    try:
        plaintext = AESGCM(key).decrypt(
            nonce, sealed_bytes, _aad(party_id, fingerprint, recipient_raw, ephemeral_raw)
        )
    except InvalidTag:
        raise CryptoError(
            "share file failed authentication: it was tampered with or corrupted"
        ) from None
    share = KeyShare.from_bytes(plaintext)
    index = public_key.index_of(party_id)
    if share.party_id != party_id or share.index != index or share.key_fingerprint != fingerprint:
        raise CryptoError("share file contents do not match its envelope")
    n2 = public_key.nsquare
    if (
        gmpy2.powmod(public_key.v, public_key.delta * share.secret, n2)
        != public_key.verification_keys[index - 1]
    ):
        raise CryptoError(f"share of party {party_id!r} does not match its verification key")
    return share
