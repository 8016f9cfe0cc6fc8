"""The statement that makes a generated key the federation's: signed by a quorum of its holders.

After a key generation every holder signs one :class:`KeyStatement` — the federation, the
session, the new key's fingerprint, the holders, and the digest of the public values it saw
(:attr:`fedlora.crypto._keygen.PartyResult.transcript`). A member (and the audit log) accepts a
generated key, or a re-key, only with signatures from a quorum of those holders
(:func:`accept_key`) — never on the coordinator's word alone, which relays but cannot sign as a
holder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import (
    ThresholdPublicKey,
    canonical_digest,
    sign_digest,
    ticket_quorum,
    verify_signature,
)
from fedlora.errors import CryptoError, VerificationError

__all__ = ["KeyStatement", "accept_key"]


@dataclass(frozen=True)
class KeyStatement:
    """What every holder of a generated key signs."""

    federation_id: str
    session: bytes
    key_fingerprint: bytes
    holders: tuple[str, ...]
    transcript: bytes

    def digest(self) -> bytes:
        return canonical_digest(
            "keygen-statement",
            [
                ("federation_id", self.federation_id),
                ("session", self.session),
                ("key_fingerprint", self.key_fingerprint),
                ("holders", "\n".join(self.holders)),
                ("transcript", self.transcript),
            ],
        )

    def sign(self, signing_key: Ed25519PrivateKey) -> bytes:
        return sign_digest(signing_key, self.digest())


def accept_key(
    statement: KeyStatement,
    key: ThresholdPublicKey,
    signatures: Mapping[str, bytes],
    pinned: Mapping[str, bytes],
    *,
    federation_id: str,
    quorum: int | None = None,
) -> set[str]:
    """Accept ``key`` only if ``statement`` names it and this federation, and carries valid
    signatures from at least ``quorum`` (default ``⌈(ℓ + t)/2⌉``) of its holders, each checked
    against the holder's pinned Ed25519 key. Returns the holders whose signatures are valid.

    Raises:
        VerificationError: naming what is wrong (the key, the federation, the holders, or too
            few valid signatures — and whose failed).
    """
    if statement.federation_id != federation_id:
        raise VerificationError(
            f"the key statement is for federation {statement.federation_id!r}, not {federation_id!r}"
        )
    if statement.key_fingerprint != key.fingerprint:
        raise VerificationError("the key statement names another key than the one offered")
    if statement.holders != key.party_ids:
        raise VerificationError("the key statement names other holders than the key")
    need = quorum if quorum is not None else ticket_quorum(key.parties, key.threshold)
    digest = statement.digest()
    valid, failed = set(), []
    for holder, signature in signatures.items():
        if holder not in statement.holders or holder not in pinned:
            failed.append(f"{holder!r} (not a holder of this key)")
            continue
        try:
            verify_signature(pinned[holder], digest, signature)
        except (VerificationError, CryptoError):
            failed.append(f"{holder!r} (signature does not verify)")
            continue
        valid.add(holder)
    if len(valid) < need:
        detail = f"; refused: {', '.join(failed)}" if failed else ""
        raise VerificationError(
            f"the key statement carries {len(valid)} valid holder signatures, {need} are "
            f"required{detail}"
        )
    return valid
