"""The trusted-dealer ceremony: deal a threshold key, seal every share to its party, write the files.

The dealer briefly knows the factorization and every share; it keeps neither. Only the public
key and the sealed shares (each readable by its party alone, :func:`fedlora.crypto.seal_key_share`)
ever leave this module or reach a disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedlora._files import write_new_file
from fedlora.crypto import ThresholdPublicKey, generate_threshold_key, seal_key_share
from fedlora.errors import FedLoraError

__all__ = [
    "KEY_FILE",
    "SHARES_FOLDER",
    "CeremonyFiles",
    "SealedKey",
    "ceremony_files",
    "deal_sealed_key",
    "run_dealer_ceremony",
]

KEY_FILE = "threshold-key.json"
"""The public threshold key's file name in the ceremony's output folder."""

SHARES_FOLDER = "shares"
"""The folder, inside the output folder, holding ``<party>.share.json`` (each sealed to its party)."""


@dataclass(frozen=True)
class SealedKey:
    """A dealt key as it may leave the dealer: the public key and each party's sealed share file.

    Attributes:
        public_key: the threshold public key (modulus, threshold, parties, verification keys).
        sealed_shares: party id → the bytes of its share file, encrypted to its X25519 key.
    """

    public_key: ThresholdPublicKey
    sealed_shares: Mapping[str, bytes]


@dataclass(frozen=True)
class CeremonyFiles:
    """Where a ceremony writes: the public key file and one share file per party."""

    public_key: Path
    shares: Mapping[str, Path]


def ceremony_files(out: Path, party_ids: Iterable[str]) -> CeremonyFiles:
    """The files a ceremony for ``party_ids`` writes under ``out``."""
    return CeremonyFiles(
        public_key=out / KEY_FILE,
        shares={pid: out / SHARES_FOLDER / f"{pid}.share.json" for pid in party_ids},
    )


def deal_sealed_key(
    recipients: Mapping[str, X25519PublicKey], threshold: int, bits: int
) -> SealedKey:
    """Deal a ``threshold``-of-``len(recipients)`` key and seal each share to its party's key.

    Party order (and so share indices) follows ``recipients``. Safe-prime generation dominates
    the time: about a second for 2048 bits on 2 cores.

    Raises:
        CryptoError: invalid ``bits``, ``threshold`` or party ids (see
            :func:`fedlora.crypto.generate_threshold_key`).
    """
    dealt = generate_threshold_key(bits, threshold, list(recipients))
    sealed = {s.party_id: seal_key_share(s, recipients[s.party_id]) for s in dealt.shares}
    public_key = dealt.public_key
    del dealt  # the factorization was never kept; the plaintext shares go with this object
    return SealedKey(public_key=public_key, sealed_shares=sealed)


def run_dealer_ceremony(
    recipients: Mapping[str, X25519PublicKey], threshold: int, bits: int, out: Path
) -> CeremonyFiles:
    """Run the trusted-dealer ceremony and write its files under ``out``.

    Writes ``out/threshold-key.json`` (public, mode 0644) and ``out/shares/<party>.share.json``
    (mode 0600, each sealed to that party's X25519 key), every file atomically and durably
    (:func:`fedlora._files.write_new_file`). Existing key material is checked for before the
    (slow) dealing starts, and never overwritten.

    Raises:
        FedLoraError: a file the ceremony would write exists already.
        CryptoError: invalid ``bits``, ``threshold`` or party ids.
    """
    files = ceremony_files(out, recipients)
    for path in [files.public_key, *files.shares.values()]:
        if path.exists():
            raise FedLoraError(f"{path} exists already; refusing to overwrite key material")
    sealed = deal_sealed_key(recipients, threshold, bits)
    write_new_file(files.public_key, sealed.public_key.to_json())
    for pid, blob in sealed.sealed_shares.items():
        write_new_file(files.shares[pid], blob, mode=0o600)
    return files
