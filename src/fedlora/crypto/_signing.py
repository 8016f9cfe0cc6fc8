"""Ed25519 signatures over canonical, domain-separated digests (RFC 8032 via pyca/cryptography).

Everything signed is first reduced to a SHA-256 digest of a canonical encoding: a domain tag
naming what is signed, then each field as ``name, type, length, value``. Field order is fixed by
the caller, names are part of the encoding, and no two different field lists encode alike, so a
signature over one kind of object can never be presented as a signature over another.

A contribution's signature binds federation id, round, client id, codec parameters, threshold-key
fingerprint, weight and the ciphertext digest (DESIGN.md §3), so it cannot be replayed into another
round or federation, or re-attached to other ciphertexts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedlora.errors import CryptoError, VerificationError

__all__ = [
    "Field",
    "canonical_digest",
    "canonical_encode",
    "checkpoint_digest",
    "contribution_digest",
    "ed25519_public_bytes",
    "partial_statement_digest",
    "proof_context",
    "receipt_digest",
    "sign_digest",
    "ticket_digest",
    "verify_signature",
]

Field = tuple[str, "int | str | bytes"]
_PREFIX = b"fedlora/v1\x00"


def canonical_encode(domain: str, fields: Sequence[Field]) -> bytes:
    """Unambiguous byte encoding of a domain tag and an ordered list of named fields.

    ``int`` (≥ 0, arbitrary size) is minimal big-endian; ``str`` is UTF-8; ``bytes`` raw. Each field
    is ``len(name)‖name‖type‖len(value)‖value`` with 2- and 4-byte lengths.

    Raises:
        CryptoError: negative ints, bools, other types, or over-long names or values.
    """
    if not isinstance(domain, str) or not domain or "\x00" in domain:
        raise CryptoError("domain must be a non-empty string without NUL")
    if not isinstance(fields, (list, tuple)):
        raise CryptoError(
            f"fields must be a list of (name, value) pairs, got {type(fields).__name__}"
        )
    out = [_PREFIX, domain.encode(), b"\x00", len(fields).to_bytes(4, "big")]
    for field in fields:
        if not (isinstance(field, tuple) and len(field) == 2 and isinstance(field[0], str)):
            raise CryptoError("each field must be a (name, value) pair with a string name")
        name, value = field
        raw_name = name.encode()
        if isinstance(value, bool):
            raise CryptoError(f"field {name!r}: booleans are not encoded; use 0/1 explicitly")
        if isinstance(value, int):
            if value < 0:
                raise CryptoError(f"field {name!r} must be non-negative")
            tag, raw = b"i", value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
        elif isinstance(value, str):
            tag, raw = b"s", value.encode()
        elif isinstance(value, (bytes, bytearray)):
            tag, raw = b"b", bytes(value)
        else:
            raise CryptoError(f"field {name!r} has unsupported type {type(value).__name__}")
        if len(raw_name) > 0xFFFF or len(raw) > 0xFFFFFFFF:
            raise CryptoError(f"field {name!r} is too long to encode")
        out += [len(raw_name).to_bytes(2, "big"), raw_name, tag, len(raw).to_bytes(4, "big"), raw]
    return b"".join(out)


def canonical_digest(domain: str, fields: Sequence[Field]) -> bytes:
    """SHA-256 of :func:`canonical_encode`."""
    return hashlib.sha256(canonical_encode(domain, fields)).digest()


def contribution_digest(
    *,
    federation_id: str,
    round_number: int,
    client_id: str,
    codec_digest: bytes,
    key_fingerprint: bytes,
    weight: int,
    ciphertexts_digest: bytes,
    value_count: int,
    global_version: int,
    global_digest: bytes,
) -> bytes:
    """What a client signs when it submits an encrypted update (DESIGN.md §3).

    ``global_version`` and ``global_digest`` name the global model the update was trained from,
    so a coordinator that served different models to different clients cannot put their updates
    into one aggregate: the decryptors verify every signature against one version and digest.
    """
    return canonical_digest(
        "contribution/v2",
        [
            ("federation_id", federation_id),
            ("round", round_number),
            ("client_id", client_id),
            ("codec", codec_digest),
            ("key_fingerprint", key_fingerprint),
            ("weight", weight),
            ("value_count", value_count),
            ("ciphertexts", ciphertexts_digest),
            ("global_version", global_version),
            ("global_digest", global_digest),
        ],
    )


def proof_context(
    *, federation_id: str, round_number: int, client_id: str, key_fingerprint: bytes
) -> bytes:
    """The context a contribution's proof of plaintext knowledge is bound to (who, where, when)."""
    return canonical_encode(
        "contribution-proof",
        [
            ("federation_id", federation_id),
            ("round", round_number),
            ("client_id", client_id),
            ("key_fingerprint", key_fingerprint),
        ],
    )


def ticket_digest(
    *,
    federation_id: str,
    round_number: int,
    key_fingerprint: bytes,
    aggregate_digest: bytes,
    global_version: int,
    global_digest: bytes,
    contributions: Sequence[tuple[str, bytes]],
) -> bytes:
    """The decryption ticket of a round (DESIGN.md §4, quorum ticket).

    A share holder signs at most one ticket per round, and releases its partial decryption only
    after a quorum of distinct holders signed the same ticket. ``contributions`` are the
    ``(client id, contribution digest)`` pairs of the aggregate, sorted by client id.

    Raises:
        CryptoError: contributions empty, unsorted or with a repeated client id.
    """
    ids = [c[0] for c in contributions] if isinstance(contributions, (list, tuple)) else None
    if not ids or ids != sorted(set(ids)):
        raise CryptoError(
            "ticket contributions must be non-empty, sorted and distinct by client id"
        )
    fields: list[Field] = [
        ("federation_id", federation_id),
        ("round", round_number),
        ("key_fingerprint", key_fingerprint),
        ("aggregate", aggregate_digest),
        ("global_version", global_version),
        ("global_digest", global_digest),
        ("contributions", len(contributions)),
    ]
    for client_id, digest in contributions:
        fields += [("client_id", client_id), ("contribution", digest)]
    return canonical_digest("decryption-ticket", fields)


def partial_statement_digest(
    *,
    federation_id: str,
    round_number: int,
    party_id: str,
    ticket: bytes,
    first_record: int,
    ciphertexts_digest: bytes,
    values_digest: bytes,
    challenge: int,
    response: int,
) -> bytes:
    """What a share holder signs with each chunk of its partial decryption: it answers the
    ciphertexts from ``first_record`` of this ticket's aggregate (their digest) with these
    values and this proof."""
    return canonical_digest(
        "partial-decryption/v2",
        [
            ("federation_id", federation_id),
            ("round", round_number),
            ("party_id", party_id),
            ("ticket", ticket),
            ("first_record", first_record),
            ("ciphertexts", ciphertexts_digest),
            ("values", values_digest),
            ("challenge", challenge),
            ("response", response),
        ],
    )


def receipt_digest(
    *,
    federation_id: str,
    round_number: int,
    client_id: str,
    contribution: bytes,
    log_index: int,
    received_at_ms: int,
) -> bytes:
    """What the coordinator signs when it acknowledges a persisted contribution."""
    return canonical_digest(
        "receipt",
        [
            ("federation_id", federation_id),
            ("round", round_number),
            ("client_id", client_id),
            ("contribution", contribution),
            ("log_index", log_index),
            ("received_at_ms", received_at_ms),
        ],
    )


def checkpoint_digest(*, log_id: str, tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    """What the coordinator signs for an audit-log checkpoint (a signed tree head)."""
    if not isinstance(root_hash, (bytes, bytearray)) or len(root_hash) != 32:
        raise CryptoError("root_hash must be 32 bytes")
    return canonical_digest(
        "checkpoint",
        [
            ("log_id", log_id),
            ("tree_size", tree_size),
            ("root", root_hash),
            ("timestamp_ms", timestamp_ms),
        ],
    )


def ed25519_public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    if not isinstance(public, Ed25519PublicKey):
        raise CryptoError(f"expected an Ed25519 key, got {type(key).__name__}")
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _digest_arg(digest: object) -> bytes:
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        raise CryptoError("digest must be 32 bytes (a SHA-256 output)")
    return bytes(digest)


def sign_digest(private_key: Ed25519PrivateKey, digest: bytes) -> bytes:
    """Ed25519 signature (64 bytes) over a 32-byte canonical digest."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise CryptoError(
            f"private_key must be an Ed25519PrivateKey, got {type(private_key).__name__}"
        )
    return private_key.sign(_digest_arg(digest))


def verify_signature(public_key: Ed25519PublicKey | bytes, digest: bytes, signature: bytes) -> None:
    """Return ``None`` if ``signature`` is valid for ``digest`` under ``public_key``, else raise.

    Raises:
        VerificationError: bad signature, or a malformed key or signature.
    """
    if isinstance(public_key, (bytes, bytearray)):
        if len(public_key) != 32:
            raise VerificationError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
    if not isinstance(public_key, Ed25519PublicKey):
        raise VerificationError(f"expected an Ed25519 public key, got {type(public_key).__name__}")
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        raise VerificationError("signature must be 64 bytes")
    try:
        public_key.verify(bytes(signature), _digest_arg(digest))
    except InvalidSignature:
        raise VerificationError("signature does not verify") from None
