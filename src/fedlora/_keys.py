"""``fedlora keys``: the key ceremony's file handling around :mod:`fedlora.crypto`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from rich.console import Console

from fedlora._files import read_file, write_new_file
from fedlora.config import MIN_KEY_BITS
from fedlora.crypto import (
    ThresholdPublicKey,
    ed25519_public_bytes,
    generate_threshold_key,
    open_key_share,
    seal_key_share,
    x25519_public_bytes,
)
from fedlora.errors import FedLoraError

console = Console(stderr=True)


def make_party(party_id: str, out: Path) -> int:
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_new_file(out / f"{party_id}.x25519", pem, mode=0o600)
    write_new_file(out / f"{party_id}.x25519.pub", (x25519_public_bytes(key).hex() + "\n").encode())
    console.print(
        f"wrote {out / (party_id + '.x25519')} (keep private) and {party_id}.x25519.pub (send to the dealer)"
    )
    return 0


def make_signing(party_id: str, out: Path) -> int:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_new_file(out / f"{party_id}.ed25519", pem, mode=0o600)
    public = ed25519_public_bytes(key).hex()
    write_new_file(out / f"{party_id}.ed25519.pub", (public + "\n").encode())
    console.print(f"wrote {out / (party_id + '.ed25519')} (keep private); public key {public}")
    return 0


def _load_public(path: Path) -> X25519PublicKey:
    text = read_file(path, "X25519 public key file").decode(errors="replace").strip()
    try:
        raw = bytes.fromhex(text)
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise FedLoraError(f"{path} is not an X25519 public key (expected 64 hex digits)") from None


def _load_private(path: Path) -> X25519PrivateKey:
    data = read_file(path, "X25519 private key file")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise FedLoraError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise FedLoraError(f"{path} holds a {type(key).__name__}, not an X25519 key")
    return key


def deal(
    parties: Sequence[str],
    threshold: int,
    bits: int,
    out: Path,
    *,
    insecure_small_key: bool = False,
) -> int:
    """Deal a ``threshold``-of-n key to ``parties`` (``ID=PUBFILE``) and write it under ``out``.

    Raises:
        FedLoraError: ``threshold`` below 2, ``bits`` below 2048 without ``insecure_small_key``,
            a malformed party or key file, or key material already in ``out``.
    """
    # Refuse unsafe parameters before reading any file: these are usage errors, not bad inputs.
    if threshold < 2:
        raise FedLoraError(
            f"--threshold {threshold}: a key needing fewer than 2 partial decryptions lets one share "
            "holder decrypt anything, a single client's update included; use --threshold 2 or more"
        )
    if bits < MIN_KEY_BITS and not insecure_small_key:
        raise FedLoraError(
            f"--bits {bits}: fedlora refuses keys below {MIN_KEY_BITS} bits; use --bits 2048 or "
            "3072 (or add --insecure-small-key, for tests and demos only)"
        )
    recipients: dict[str, X25519PublicKey] = {}
    for item in parties:
        pid, sep, pubfile = item.partition("=")
        if not sep or not pid or not pubfile:
            raise FedLoraError(f"--party {item!r} must look like ID=PUBFILE")
        if pid in recipients:
            raise FedLoraError(f"party {pid!r} is named twice")
        recipients[pid] = _load_public(Path(pubfile))
    if bits < MIN_KEY_BITS:
        console.print(
            f"[bold red]WARNING: dealing an INSECURE {bits}-bit key (--insecure-small-key): "
            "for tests and demos only, never in production[/]",
            soft_wrap=True,  # one line, however narrow the terminal
        )
    key_path = out / "threshold-key.json"
    share_paths = {pid: out / "shares" / f"{pid}.share.json" for pid in recipients}
    for path in [key_path, *share_paths.values()]:
        if path.exists():
            raise FedLoraError(f"{path} exists already; refusing to overwrite key material")
    start = time.monotonic()
    with console.status(f"generating safe primes for a {bits}-bit modulus and dealing shares…"):
        dealt = generate_threshold_key(bits, threshold, list(recipients))
    sealed = {s.party_id: seal_key_share(s, recipients[s.party_id]) for s in dealt.shares}
    write_new_file(key_path, dealt.public_key.to_json())
    for pid, blob in sealed.items():
        write_new_file(share_paths[pid], blob, mode=0o600)
    del dealt  # the factorization was never kept; the plaintext shares go with this object
    console.print(
        f"dealt a {threshold}-of-{len(recipients)} key ({bits} bits) in {time.monotonic() - start:.1f}s\n"
        f"public key: {key_path}\nshares:     {out / 'shares'}/<party>.share.json (each encrypted to its party)"
    )
    return 0


def check_share(party_id: str, private: Path, share: Path, public_key: Path) -> int:
    key = ThresholdPublicKey.from_json(read_file(public_key, "threshold public key"))
    opened = open_key_share(
        read_file(share, "share file"), _load_private(private), party_id=party_id, public_key=key
    )
    console.print(
        f"share of {opened.party_id!r} (index {opened.index}) opens and matches its verification key; "
        f"threshold key {key.fingerprint.hex()[:16]}…, {key.threshold}-of-{key.parties}"
    )
    return 0
