"""``fedlora keys``: party key pairs, the dealer ceremony (:mod:`fedlora.ceremony`), share checks."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from fedlora.ceremony import SHARES_FOLDER, run_dealer_ceremony
from fedlora.config import MIN_KEY_BITS, check_id
from fedlora.crypto import (
    ThresholdPublicKey,
    ed25519_public_bytes,
    open_key_share,
    x25519_public_bytes,
)
from fedlora.errors import FedLoraError

console = Console(stderr=True)


def register(sub: Any) -> None:
    keys = sub.add_parser(
        "keys", help="key ceremony: party keys, threshold-key generation or dealing"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    signing = keys_sub.add_parser(
        "signing", help="create an Ed25519 signing key pair (party or coordinator)"
    )
    signing.add_argument("--id", required=True, help="party id, or 'coordinator'")
    signing.add_argument(
        "--out", type=Path, required=True, help="folder for ID.ed25519 and ID.ed25519.pub"
    )
    signing.set_defaults(handler=lambda args: make_signing(args.id, args.out))
    party = keys_sub.add_parser(
        "party", help="create a party's X25519 key pair, to which its key share is encrypted"
    )
    party.add_argument("--id", required=True, help="party id, e.g. bank-a")
    party.add_argument(
        "--out", type=Path, required=True, help="folder for ID.x25519 and ID.x25519.pub"
    )
    party.set_defaults(handler=lambda args: make_party(args.id, args.out))
    dealer = keys_sub.add_parser(
        "deal",
        help="deal a t-of-n threshold Paillier key, one encrypted share file per party",
        description="Generates safe primes, deals the key, writes threshold-key.json and "
        "shares/ID.share.json (each encrypted to that party's X25519 key), then forgets the "
        "factorization and the shares.",
    )
    dealer.add_argument(
        "--party",
        action="append",
        required=True,
        metavar="ID=PUBFILE",
        help="a party and its X25519 public key file (repeat for each party)",
    )
    dealer.add_argument(
        "--threshold", type=int, required=True, help="t: partial decryptions needed"
    )
    dealer.add_argument(
        "--bits",
        type=int,
        default=2048,
        help="modulus size: 2048 (default) or 3072; smaller only with --insecure-small-key",
    )
    dealer.add_argument(
        "--insecure-small-key",
        action="store_true",
        help="allow --bits below 2048: an easily factored key, for tests and demos only",
    )
    dealer.add_argument(
        "--out", type=Path, required=True, help="folder for the key and share files"
    )
    dealer.set_defaults(handler=_deal)
    generate = keys_sub.add_parser(
        "generate",
        help="take part in (a holder) or wait for the holders' key generation, without a dealer",
        description="For a member whose YAML sets keys.generation: connects to the coordinator, "
        "which relays the holders' signed and sealed messages; a holder computes its share with "
        "the others and keeps it sealed in keys.key_share; every member then accepts the key into "
        "keys.threshold_public_key only with a statement signed by a quorum of the holders. "
        "`fedlora client` does the same on its first start; this runs it on its own.",
    )
    generate.add_argument("--config", type=Path, required=True, help="the member's YAML")
    generate.set_defaults(handler=lambda args: generate_key(args.config))
    check = keys_sub.add_parser("check-share", help="open and verify a party's share file")
    check.add_argument("--id", required=True, help="party id")
    check.add_argument("--private", type=Path, required=True, help="the party's ID.x25519 file")
    check.add_argument("--share", type=Path, required=True, help="the party's share file")
    check.add_argument("--public-key", type=Path, required=True, help="threshold-key.json")
    check.set_defaults(
        handler=lambda args: check_share(args.id, args.private, args.share, args.public_key)
    )


def generate_key(config_path: Path) -> int:
    """``fedlora keys generate``: the member's side of the holders' key generation."""
    from fedlora.client import GrpcTransport
    from fedlora.client._member import Member
    from fedlora.config import load_client_config
    from fedlora.errors import ConfigError

    config = load_client_config(config_path)
    if config.keys.generation is None:
        raise ConfigError(
            f"{config_path}: keys.generation is not set: this federation's key was dealt "
            "(its file is keys.threshold_public_key)"
        )
    if config.keys.threshold_public_key.exists():
        console.print(f"{config.keys.threshold_public_key} exists already: nothing to generate")
        return 0
    transport = GrpcTransport(config, on_retry=lambda message: console.print(message))
    try:
        member = Member(config, transport, console=console)
        member.open_keys()
    finally:
        transport.close()
    assert member.key is not None
    role = "holds a share" if member.share is not None else "holds no share"
    console.print(
        f"key {member.key.fingerprint.hex()[:16]}… ({member.key.threshold}-of-"
        f"{member.key.parties}) accepted; {config.id} {role}"
    )
    return 0


def _deal(args: argparse.Namespace) -> int:
    return deal(
        args.party, args.threshold, args.bits, args.out, insecure_small_key=args.insecure_small_key
    )


def make_party(party_id: str, out: Path) -> int:
    check_id(party_id, "--id")
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_new_file(out / f"{party_id}.x25519", pem, mode=0o600)
    write_new_file(out / f"{party_id}.x25519.pub", (x25519_public_bytes(key).hex() + "\n").encode())
    console.print(
        f"wrote {out / (party_id + '.x25519')} (keep private) and {party_id}.x25519.pub (send to the dealer)"
    )
    return 0


def make_signing(party_id: str, out: Path) -> int:
    check_id(party_id, "--id")
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
        check_id(pid, "--party")
        if pid in recipients:
            raise FedLoraError(f"party {pid!r} is named twice")
        recipients[pid] = _load_public(Path(pubfile))
    if bits < MIN_KEY_BITS:
        console.print(
            f"[bold red]WARNING: dealing an INSECURE {bits}-bit key (--insecure-small-key): "
            "for tests and demos only, never in production[/]",
            soft_wrap=True,  # one line, however narrow the terminal
        )
    start = time.monotonic()
    with console.status(f"generating safe primes for a {bits}-bit modulus and dealing shares…"):
        files = run_dealer_ceremony(recipients, threshold, bits, out)
    console.print(
        f"dealt a {threshold}-of-{len(recipients)} key ({bits} bits) in {time.monotonic() - start:.1f}s\n"
        f"public key: {files.public_key}\nshares:     {out / SHARES_FOLDER}/<party>.share.json (each encrypted to its party)"
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
