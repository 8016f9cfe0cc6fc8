"""The coordinator's tamper-evident audit log (DESIGN.md §7).

Storage, in ``<state_dir>/audit/``:

* ``entries.log`` — one canonical JSON object per line (sorted keys, no spaces, ASCII). The
  Merkle leaf of entry ``i`` is ``SHA-256(0x00 ‖ line)`` (RFC 6962).
* ``checkpoints.log`` — after every entry, a signed tree head: ``{log_id, tree_size, root,
  timestamp_ms, signature}``, Ed25519 over :func:`fedlora.crypto.checkpoint_digest`. Because
  every entry is followed by a checkpoint, verification names the exact first bad entry.

Each append is one ``write`` plus ``fsync``. After a crash, a torn last line (never
acknowledged, as acknowledgements follow the fsync) is cut off and a missing last checkpoint is
re-signed, so the log verifies again on restart.

:func:`verify_log` is pure: bytes in, a summary out, or :class:`VerificationError` naming the
first bad entry or checkpoint. On its own a log can only show that it is consistent with itself: a
coordinator that drops its last entries together with their checkpoints leaves a shorter log that
still verifies. So :func:`verify_log` also takes *anchors* the coordinator cannot take back: signed
checkpoints an auditor trusts (each client keeps the newest it saw) and the clients' receipts, each
carrying the signed checkpoint and inclusion proof of its ``contribution_accepted`` entry
(DESIGN.md §4, "Anchored log"; docs/audit.md).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import (
    CompactRange,
    checkpoint_digest,
    consistency_proof,
    ed25519_public_bytes,
    inclusion_proof,
    leaf_hash,
    receipt_digest,
    sign_digest,
    verify_consistency,
    verify_inclusion,
    verify_signature,
)
from fedlora.errors import FedLoraError, NotFoundError, OutOfRangeError, VerificationError
from fedlora.events import Event

__all__ = [
    "AuditLog",
    "AuditSummary",
    "Receipt",
    "SignedCheckpoint",
    "canonical_json",
    "read_log_files",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
    "verify_entry_inclusion",
    "verify_log",
    "verify_receipt",
]

ENTRIES = "entries.log"
CHECKPOINTS = "checkpoints.log"


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The one byte encoding of an entry: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class AuditSummary:
    entries: int
    checkpoints: int
    root: bytes
    log_id: str
    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class SignedCheckpoint:
    """A signed tree head: the coordinator's commitment to the first ``tree_size`` entries."""

    log_id: str
    tree_size: int
    root: bytes
    timestamp_ms: int
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        """The shape of a ``checkpoints.log`` line (hex strings)."""
        return {
            "log_id": self.log_id,
            "root": self.root.hex(),
            "signature": self.signature.hex(),
            "timestamp_ms": self.timestamp_ms,
            "tree_size": self.tree_size,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> SignedCheckpoint:
        """Parse a ``checkpoints.log`` line's object.

        Raises:
            VerificationError: missing fields or fields of the wrong type or size.
        """
        try:
            log_id, size, stamp = doc["log_id"], doc["tree_size"], doc["timestamp_ms"]
            root, signature = bytes.fromhex(doc["root"]), bytes.fromhex(doc["signature"])
        except (KeyError, TypeError, ValueError):
            raise VerificationError("checkpoint is malformed") from None
        if not isinstance(log_id, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (size, stamp)
        ):
            raise VerificationError("checkpoint has fields of the wrong type")
        if len(root) != 32 or len(signature) != 64:
            raise VerificationError("checkpoint root must be 32 bytes and signature 64 bytes")
        return cls(log_id, size, root, stamp, signature)


def verify_checkpoint(
    cp: SignedCheckpoint, public_key: bytes, *, log_id: str | None = None
) -> None:
    """Check a checkpoint's signature (and its log id, when given); return ``None`` or raise.

    Raises:
        VerificationError: another log's checkpoint, or not signed by ``public_key``.
    """
    if log_id is not None and cp.log_id != log_id:
        raise VerificationError(f"checkpoint is for log {cp.log_id!r}, expected {log_id!r}")
    try:
        digest = checkpoint_digest(
            log_id=cp.log_id,
            tree_size=cp.tree_size,
            root_hash=cp.root,
            timestamp_ms=cp.timestamp_ms,
        )
        verify_signature(public_key, digest, cp.signature)
    except FedLoraError:
        raise VerificationError(
            f"checkpoint (tree size {cp.tree_size}) is not signed by the coordinator's key"
        ) from None


def verify_entry_inclusion(
    entry: bytes, index: int, proof: Sequence[bytes], cp: SignedCheckpoint
) -> None:
    """Check that ``entry`` (canonical JSON bytes) is entry ``index`` of ``cp``'s tree.

    Raises:
        VerificationError: the proof does not lead to the checkpoint's root.
    """
    try:
        verify_inclusion(leaf_hash(entry), index, cp.tree_size, list(proof), cp.root)
    except FedLoraError as exc:
        raise VerificationError(
            f"audit entry {index} is not in the log of the signed checkpoint (tree size {cp.tree_size}): {exc}"
        ) from None


def verify_checkpoint_consistency(
    old: SignedCheckpoint, new: SignedCheckpoint, proof: Sequence[bytes]
) -> None:
    """Check that ``new`` extends ``old`` (both already signature-checked): append-only, no fork.

    Raises:
        VerificationError: ``new`` is smaller (the log shrank), has the same size and another root,
            or the consistency proof fails (the log was rewritten: a fork).
    """
    if new.log_id != old.log_id:
        raise VerificationError(f"checkpoint log id changed from {old.log_id!r} to {new.log_id!r}")
    if new.tree_size < old.tree_size:
        raise VerificationError(
            f"the audit log shrank: a checkpoint of {new.tree_size} entries after one of {old.tree_size}"
        )
    if new.timestamp_ms < old.timestamp_ms:
        raise VerificationError("checkpoint time went backwards")
    if new.tree_size == old.tree_size:
        if new.root != old.root:
            raise VerificationError(
                f"the audit log forked: two different roots for {new.tree_size} entries"
            )
        return
    try:
        verify_consistency(old.tree_size, new.tree_size, old.root, new.root, list(proof))
    except FedLoraError:
        raise VerificationError(
            f"the audit log forked or was rewritten: the checkpoint of {new.tree_size} entries does not "
            f"extend the one of {old.tree_size}"
        ) from None


CONTRIBUTION_ACCEPTED = "contribution_accepted"


class _Malformed(Exception):
    """One field of a receipt could not be read; caught in :meth:`Receipt.from_dict`."""


def _field(doc: Mapping[str, Any], key: str, kind: str, length: int = 0) -> Any:
    """Read ``doc[key]`` as ``kind``: "str", "count" (an int >= 0, not a bool) or "hex" bytes."""
    if key not in doc:
        raise _Malformed(f"field {key!r} is missing")
    value = doc[key]
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "count" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if kind == "hex" and isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise _Malformed(f"field {key!r} is not hex") from None
        if length and len(raw) != length:
            raise _Malformed(f"field {key!r} must be {length} bytes, got {len(raw)}")
        return raw
    expected = {"str": "a string", "count": "an integer >= 0", "hex": "a hex string"}[kind]
    raise _Malformed(f"field {key!r} must be {expected}, got {type(value).__name__}")


@dataclass(frozen=True)
class Receipt:
    """The coordinator's signed receipt for one accepted contribution: the message it answers an
    upload with, and the document a client keeps (``<client state>/receipts/*.json``).

    The coordinator signs (federation, round, client, contribution digest, log index, receive
    time) with its Ed25519 key (:func:`fedlora.crypto.receipt_digest`); the receipt also carries
    the ``contribution_accepted`` audit line itself (``entry``), a signed checkpoint whose tree
    holds it (``checkpoint``) and its RFC 6962 audit path (``inclusion``), so the receipt alone
    proves the entry is in the log. ``ciphertexts_digest`` is the client's own (what it sent),
    added when it keeps the receipt; ``duplicate`` (on the wire only) says the upload had been
    accepted before.
    """

    federation_id: str
    round_number: int
    client_id: str
    contribution_digest: bytes
    log_index: int
    received_at_ms: int
    signature: bytes
    entry: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: SignedCheckpoint
    ciphertexts_digest: bytes | None = None
    duplicate: bool = False

    @property
    def name(self) -> str:
        """How errors name the receipt: its round and client."""
        return f"receipt (round {self.round_number}, client {self.client_id})"

    def digest(self) -> bytes:
        """What the coordinator signs (:func:`fedlora.crypto.receipt_digest`)."""
        return receipt_digest(
            federation_id=self.federation_id,
            round_number=self.round_number,
            client_id=self.client_id,
            contribution=self.contribution_digest,
            log_index=self.log_index,
            received_at_ms=self.received_at_ms,
        )

    def to_dict(self, coordinator_key: bytes) -> dict[str, Any]:
        """The document a client keeps (hex strings for bytes), naming the coordinator's key."""
        doc: dict[str, Any] = {
            "federation_id": self.federation_id,
            "round": self.round_number,
            "client_id": self.client_id,
            "contribution_digest": self.contribution_digest.hex(),
            "log_index": self.log_index,
            "received_at_ms": self.received_at_ms,
            "signature": self.signature.hex(),
            "coordinator_signing_public_key": coordinator_key.hex(),
            "entry": self.entry.decode("ascii", errors="replace"),
            "inclusion": [h.hex() for h in self.inclusion],
            "checkpoint": self.checkpoint.to_dict(),
        }
        if self.ciphertexts_digest is not None:
            doc["ciphertexts_digest"] = self.ciphertexts_digest.hex()
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Receipt:
        """Parse a receipt document (a JSON object; hex strings for bytes).

        Raises:
            VerificationError: not an object, missing fields, or fields of the wrong type or size;
                the message names the receipt's round and client when those two could be read.
        """
        name = "receipt"
        if isinstance(doc, Mapping) and isinstance(doc.get("client_id"), str):
            name = f"receipt (round {doc.get('round')!r}, client {doc['client_id']})"
        if not isinstance(doc, Mapping):
            raise VerificationError(f"{name} is malformed: it is not a JSON object")
        try:
            fields: dict[str, Any] = {
                "federation_id": _field(doc, "federation_id", "str"),
                "round_number": _field(doc, "round", "count"),
                "client_id": _field(doc, "client_id", "str"),
                "contribution_digest": _field(doc, "contribution_digest", "hex", 32),
                "log_index": _field(doc, "log_index", "count"),
                "received_at_ms": _field(doc, "received_at_ms", "count"),
                "signature": _field(doc, "signature", "hex", 64),
            }
            entry = _field(doc, "entry", "str")
            if not entry.isascii():
                raise _Malformed("field 'entry' must be ASCII (canonical JSON)")
            fields["entry"] = entry.encode("ascii")
            proof = doc.get("inclusion")
            if not isinstance(proof, list):
                raise _Malformed("field 'inclusion' must be a list of hex hashes")
            fields["inclusion"] = tuple(
                _field({"inclusion": h}, "inclusion", "hex", 32) for h in proof
            )
            if doc.get("ciphertexts_digest") is not None:
                fields["ciphertexts_digest"] = _field(doc, "ciphertexts_digest", "hex", 32)
            if "checkpoint" not in doc:
                raise _Malformed("field 'checkpoint' is missing")
        except _Malformed as exc:
            raise VerificationError(f"{name} is malformed: {exc}") from None
        try:
            fields["checkpoint"] = SignedCheckpoint.from_dict(doc["checkpoint"])
        except VerificationError as exc:
            raise VerificationError(f"{name} is malformed: its {exc}") from None
        return cls(**fields)


def _check_contribution_entry(obj: Any, receipt: Receipt, where: str) -> None:
    """Check that a parsed audit entry records exactly the contribution a receipt acknowledges."""
    if not isinstance(obj, dict):
        raise VerificationError(f"{receipt.name}: {where} is not a JSON object")
    expected: dict[str, Any] = {
        "event": CONTRIBUTION_ACCEPTED,
        "index": receipt.log_index,
        "round": receipt.round_number,
        "client": receipt.client_id,
    }
    for key, value in expected.items():
        if obj.get(key) != value or isinstance(obj.get(key), bool):
            raise VerificationError(
                f"{receipt.name}: {where} is not this receipt's contribution: its {key} is "
                f"{obj.get(key)!r}, the receipt says {value!r}"
            )
    digests = [("contribution_digest", receipt.contribution_digest)]
    if receipt.ciphertexts_digest is not None:
        digests.append(("ciphertexts_digest", receipt.ciphertexts_digest))
    for key, digest in digests:
        try:
            logged = bytes.fromhex(obj.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            logged = b""
        if not hmac.compare_digest(logged, digest):
            raise VerificationError(
                f"{receipt.name}: {where} is not this receipt's contribution: its {key} is "
                f"{str(obj.get(key))[:16]}…, the receipt says {digest.hex()[:16]}…"
            )


def verify_receipt(receipt: Receipt, public_key: bytes) -> None:
    """Check a receipt on its own, offline; return ``None`` or raise.

    Checks the coordinator's signature over the receipt, that its checkpoint is signed by ``public_key`` for the receipt's federation, that its entry is
    entry ``log_index`` of that checkpoint's tree (RFC 6962 inclusion) and that the entry is the
    canonical ``contribution_accepted`` line for the receipt's round, client and digests. This proves the coordinator committed to the entry in a signed tree head. It does not show
    that the log an auditor holds still contains it: pass the receipt to :func:`verify_log` for
    that.

    Raises:
        VerificationError: naming the receipt's round and client; the receipt is not signed by
            ``public_key``, its checkpoint is another federation's or unsigned, its entry is not in
            the checkpoint's tree (an altered entry or a wrong path), or the entry records another
            contribution.
    """
    try:
        verify_signature(public_key, receipt.digest(), receipt.signature)
    except FedLoraError:
        raise VerificationError(
            f"{receipt.name} is not signed by the coordinator's key: it was altered, or another "
            "coordinator signed it"
        ) from None
    try:
        verify_checkpoint(receipt.checkpoint, public_key, log_id=receipt.federation_id)
    except VerificationError as exc:
        raise VerificationError(f"{receipt.name}: its {exc}") from None
    try:
        verify_entry_inclusion(
            receipt.entry, receipt.log_index, receipt.inclusion, receipt.checkpoint
        )
    except VerificationError as exc:
        raise VerificationError(
            f"{receipt.name}: its entry and inclusion proof do not match its signed checkpoint "
            f"(the receipt was altered or damaged): {exc}"
        ) from None
    try:
        obj = json.loads(receipt.entry)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VerificationError(f"{receipt.name}: its entry is not valid JSON") from None
    if not isinstance(obj, dict) or canonical_json(obj) != receipt.entry:
        raise VerificationError(f"{receipt.name}: its entry is not in canonical form")
    _check_contribution_entry(obj, receipt, f"its entry (audit entry {receipt.log_index})")


def _lines(data: bytes) -> list[bytes]:
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise VerificationError(
            "the last line is incomplete (no newline): the file was truncated or torn"
        )
    return data[:-1].split(b"\n")


def _check_anchor(
    cp: SignedCheckpoint,
    public_key: bytes,
    log_id: str | None,
    root_at: Mapping[int, bytes],
    who: str,
    noun: str,
) -> None:
    """Check that the log holds the tree ``cp`` signs: neither cut short nor rewritten.

    ``noun`` names ``cp`` after an article ("trusted checkpoint"); ``who`` starts each message.
    """
    try:
        verify_checkpoint(cp, public_key, log_id=log_id)
    except VerificationError as exc:
        raise VerificationError(f"{who}: {exc}") from None
    held = len(root_at) - 1
    if cp.tree_size > held:
        raise VerificationError(
            f"{who}: the log holds {held} entries but a {noun} covers {cp.tree_size}: entries were "
            "removed (the log was cut short)"
        )
    if not hmac.compare_digest(root_at[cp.tree_size], cp.root):
        raise VerificationError(
            f"{who}: the log was rewritten: it differs from the {noun} of {cp.tree_size} entries"
        )


def verify_log(
    entries_data: bytes,
    checkpoints_data: bytes,
    public_key: bytes,
    *,
    trusted: Sequence[SignedCheckpoint] = (),
    receipts: Sequence[Mapping[str, Any]] = (),
) -> AuditSummary:
    """Verify an audit log offline with the coordinator's Ed25519 public key.

    The log on its own: every entry is canonical JSON with consecutive indices and non-decreasing
    times; every checkpoint is correctly signed, is for the same log id (the ``federation_id`` of
    a leading ``federation_started`` entry), has a time no earlier than the previous checkpoint's,
    a strictly growing tree size and the root of exactly that many entries; the last checkpoint
    covers the whole log.

    Anchors, which catch a log cut short or rewritten by whoever holds the signing key:

    * ``trusted`` — checkpoints the auditor trusts (a client's ``checkpoint.json``): each must be
      signed by ``public_key``, be for this log, and sign a tree the log holds (size at most the
      number of entries, and that prefix's root).
    * ``receipts`` — client receipt documents (see :class:`Receipt`): each must be signed by
      ``public_key`` and be for this federation; its entry must be the log's line at its index and
      record its round, client and contribution digest; its checkpoint, when it carries one, is
      checked like a trusted checkpoint and its inclusion proof against that checkpoint.

    Raises:
        VerificationError: naming the first bad entry or checkpoint, the trusted checkpoint (by
            tree size) or the receipt (by round and client) that the log fails.
    """
    try:
        entry_lines = _lines(entries_data)
    except VerificationError as exc:
        raise VerificationError(f"{ENTRIES}: {exc}") from None
    try:
        cp_lines = _lines(checkpoints_data)
    except VerificationError as exc:
        raise VerificationError(f"{CHECKPOINTS}: {exc}") from None
    events: list[dict[str, Any]] = []
    roots = CompactRange()
    root_at: dict[int, bytes] = {0: roots.root()}
    last_time = 0
    for i, line in enumerate(entry_lines):
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VerificationError(f"audit entry {i} is not valid JSON") from None
        if not isinstance(obj, dict) or canonical_json(obj) != line:
            raise VerificationError(f"audit entry {i} is not in canonical form (altered)")
        if obj.get("index") != i:
            raise VerificationError(
                f"audit entry {i} carries index {obj.get('index')!r}: entries were reordered, removed or inserted"
            )
        t = obj.get("time_ms")
        if not isinstance(t, int) or t < last_time:
            raise VerificationError(f"audit entry {i} has a time before its predecessor's")
        last_time = t
        roots.append(leaf_hash(line))
        root_at[i + 1] = roots.root()
        events.append(obj)
    # The federation a log belongs to is named twice: by its first entry and by every checkpoint.
    started_id: str | None = None
    if events and events[0].get("event") == "federation_started":
        value = events[0].get("federation_id")
        started_id = value if isinstance(value, str) else None
    log_id = ""
    first_id: str | None = None
    last_size = 0
    last_stamp = 0
    for j, line in enumerate(cp_lines):
        where = f"checkpoint {j}"
        try:
            parsed = SignedCheckpoint.from_dict(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VerificationError(f"{where} is malformed") from None
        except VerificationError as exc:
            raise VerificationError(f"{where}: {exc}") from None
        log_id, size, root = parsed.log_id, parsed.tree_size, parsed.root
        stamp, signature = parsed.timestamp_ms, parsed.signature
        try:
            digest = checkpoint_digest(
                log_id=log_id, tree_size=size, root_hash=root, timestamp_ms=stamp
            )
            verify_signature(public_key, digest, signature)
        except FedLoraError:
            raise VerificationError(
                f"{where} (tree size {size}) is not signed by the coordinator's key"
            ) from None
        if first_id is None:
            first_id = log_id
            if started_id is not None and log_id != started_id:
                raise VerificationError(
                    f"{where} is for log {log_id!r}, but audit entry 0 starts federation "
                    f"{started_id!r}"
                )
        elif log_id != first_id:
            raise VerificationError(
                f"{where} is for log {log_id!r}, but checkpoint 0 is for {first_id!r}: the log id "
                "changed mid-log"
            )
        if stamp < last_stamp:
            raise VerificationError(
                f"{where} has time {stamp} ms, before checkpoint {j - 1}'s {last_stamp} ms: "
                "checkpoint time went backwards"
            )
        last_stamp = stamp
        if size <= last_size:
            raise VerificationError(
                f"{where} has tree size {size}, not larger than the previous {last_size}"
            )
        if size > len(entry_lines):
            raise VerificationError(
                f"{where} covers {size} entries but the log holds {len(entry_lines)}: entries were removed (truncated)"
            )
        if root != root_at[size]:
            raise VerificationError(
                f"audit entry {size - 1} does not match the signed checkpoint for tree size {size}: it was altered"
            )
        last_size = size
    if last_size != len(entry_lines):
        raise VerificationError(
            f"audit entry {last_size} and after are not covered by any signed checkpoint"
        )
    # An emptied log has no checkpoint left to name it; the anchors then only need the key.
    anchor_id = first_id if first_id is not None else started_id
    for k, cp in enumerate(trusted):
        _check_anchor(
            cp,
            public_key,
            anchor_id,
            root_at,
            f"trusted checkpoint {k}",
            "trusted checkpoint",
        )
    for doc in receipts:
        receipt = Receipt.from_dict(doc)
        if anchor_id is not None and receipt.federation_id != anchor_id:
            raise VerificationError(
                f"{receipt.name} is for federation {receipt.federation_id!r}, but this log is "
                f"{anchor_id!r}"
            )
        verify_receipt(receipt, public_key)
        _check_anchor(
            receipt.checkpoint, public_key, anchor_id, root_at, receipt.name, "receipt's checkpoint"
        )
        if receipt.log_index >= len(entry_lines):
            raise VerificationError(
                f"{receipt.name}: the log holds {len(entry_lines)} entries but the receipt is for "
                f"entry {receipt.log_index}: entries were removed (the log was cut short)"
            )
        if receipt.entry is not None and receipt.entry != entry_lines[receipt.log_index]:
            raise VerificationError(
                f"{receipt.name}: the log was rewritten: audit entry {receipt.log_index} differs "
                "from the entry in the receipt"
            )
        _check_contribution_entry(
            events[receipt.log_index], receipt, f"audit entry {receipt.log_index} of the log"
        )
    return AuditSummary(
        len(entry_lines), len(cp_lines), root_at[len(entry_lines)], log_id, tuple(events)
    )


def read_log_files(path: Path) -> tuple[bytes, bytes, Path]:
    """Find and read a log given a state folder, its ``audit/`` folder or its ``entries.log``."""
    folder = path
    if path.is_file():
        folder = path.parent
    elif (path / "audit" / ENTRIES).exists():
        folder = path / "audit"
    if not (folder / ENTRIES).exists():
        raise FedLoraError(
            f"no audit log at {path} (expected {ENTRIES} in it or in its audit/ folder)"
        )
    entries = (folder / ENTRIES).read_bytes()
    checkpoints = (folder / CHECKPOINTS).read_bytes() if (folder / CHECKPOINTS).exists() else b""
    return entries, checkpoints, folder


class AuditLog:
    """Append-only writer; thread-safe. Every append is durable before it returns."""

    def __init__(
        self,
        folder: Path,
        log_id: str,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: seconds since the epoch for every entry's and checkpoint's time; the
        coordinator gives its own, so the times it signs elsewhere (receipts) are the log's."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log_id, self._key = folder, log_id, signing_key
        self._clock = clock
        self.public_key = ed25519_public_bytes(signing_key)
        self._lock = threading.Lock()
        self._entries_path, self._cp_path = folder / ENTRIES, folder / CHECKPOINTS
        self._leaves: list[bytes] = []
        self._range = CompactRange()
        self.observers: list[Callable[[str, int, dict[str, Any]], None]] = []
        self._recover()

    def _recover(self) -> None:
        for path in (self._entries_path, self._cp_path):
            data = path.read_bytes() if path.exists() else b""
            if data and not data.endswith(b"\n"):  # a torn, never-acknowledged last line
                with open(path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
                    os.fsync(fh.fileno())
        data = self._entries_path.read_bytes() if self._entries_path.exists() else b""
        self._last_time = 0
        for line in _lines(data):
            self._leaves.append(leaf_hash(line))
            self._range.append(self._leaves[-1])
            self._last_time = json.loads(line)["time_ms"]
        cps = _lines(self._cp_path.read_bytes()) if self._cp_path.exists() else []
        self._last_cp: bytes | None = cps[-1] if cps else None
        self._last_stamp = 0
        covered = 0
        if self._last_cp is not None:
            last = json.loads(self._last_cp)
            if last["log_id"] != self.log_id:
                # Appending would put two log ids in one log, which verify_log refuses.
                raise FedLoraError(
                    f"the audit log in {self.folder} is for log {last['log_id']!r}, not "
                    f"{self.log_id!r}: use another state folder for another federation"
                )
            covered, self._last_stamp = last["tree_size"], last["timestamp_ms"]
        if covered < self._range.size:  # crashed between an entry and its checkpoint
            self._checkpoint()

    @property
    def size(self) -> int:
        return self._range.size

    def _append_line(self, path: Path, line: bytes) -> None:
        with open(path, "ab") as fh:
            fh.write(line + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _checkpoint(self) -> None:
        # Checkpoint times never go backwards, even when the wall clock does (verify_log checks).
        stamp = max(int(self._clock() * 1000), self._last_time, self._last_stamp)
        root = self._range.root()
        digest = checkpoint_digest(
            log_id=self.log_id, tree_size=self.size, root_hash=root, timestamp_ms=stamp
        )
        cp = {
            "log_id": self.log_id,
            "root": root.hex(),
            "signature": sign_digest(self._key, digest).hex(),
            "timestamp_ms": stamp,
            "tree_size": self.size,
        }
        line = canonical_json(cp)
        self._append_line(self._cp_path, line)
        self._last_cp, self._last_stamp = line, stamp

    def record(self, event: Event) -> int:
        """Append one typed event (:mod:`fedlora.events`); return its index."""
        return self.append(event.kind, **event.fields())

    def record_timed(self, event: Event) -> tuple[int, int]:
        """:meth:`record`, returning the entry's index and its ``time_ms`` (what a replay of the
        log will read back, so a receipt signs the same time before and after a restart)."""
        return self._append(event.kind, event.fields())

    def append(self, event: str, **fields: Any) -> int:
        """Append one event, fsync it and its checkpoint; return its index. Then tell each of
        :attr:`observers` (logging, metrics): ``observer(event, index, fields)``; an observer
        that fails is logged, never the append."""
        return self._append(event, fields)[0]

    def _append(self, event: str, fields: dict[str, Any]) -> tuple[int, int]:
        with self._lock:
            index = self.size
            self._last_time = stamp = max(int(self._clock() * 1000), self._last_time)
            line = canonical_json({"event": event, "index": index, "time_ms": stamp, **fields})
            self._append_line(self._entries_path, line)
            self._leaves.append(leaf_hash(line))
            self._range.append(self._leaves[-1])
            self._checkpoint()
        for observe in self.observers:
            try:
                observe(event, index, fields)
            except Exception:
                logging.getLogger("fedlora.audit").exception("an audit observer failed")
        return index, stamp

    def entries(self, start: int = 0, limit: int = 0) -> list[bytes]:
        """Entries ``start`` .. ``start + limit`` (``limit`` 0: to the end); ``start`` equal to the
        log's size gives none (a reader that is up to date).

        Raises:
            OutOfRangeError: ``start`` past the end of the log.
        """
        with self._lock:
            if start > self.size:
                raise OutOfRangeError(f"no entry {start}: the log holds {self.size} entries")
            lines = _lines(self._entries_path.read_bytes()) if self._entries_path.exists() else []
        end = len(lines) if limit == 0 else min(len(lines), start + limit)
        return lines[start:end]

    def _last_checkpoint_line(self) -> bytes:
        with self._lock:
            line = self._last_cp
        if line is None:
            raise NotFoundError(
                f"the audit log in {self.folder} has no checkpoint yet (no entries)"
            )
        return line

    def latest_checkpoint(self) -> dict[str, Any]:
        """The last line of ``checkpoints.log`` as a dict (hex strings), as the Audit RPC serves it.

        Raises:
            FedLoraError: the log is still empty.
        """
        return dict(json.loads(self._last_checkpoint_line()))

    def latest_signed_checkpoint(self) -> SignedCheckpoint:
        """The last line of ``checkpoints.log``, parsed: the newest signed tree head.

        Raises:
            FedLoraError: the log is still empty.
        """
        return SignedCheckpoint.from_dict(json.loads(self._last_checkpoint_line()))

    def inclusion(self, index: int, tree_size: int) -> tuple[bytes, list[bytes]]:
        """Leaf hash and RFC 6962 audit path of entry ``index`` in the tree of ``tree_size``."""
        with self._lock:
            if not 0 <= index < tree_size <= self.size:
                raise OutOfRangeError(
                    f"no entry {index} in a tree of size {tree_size} (log size {self.size})"
                )
            leaves = self._leaves[:tree_size]
        return leaves[index], inclusion_proof(index, leaves)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 consistency proof that the tree of ``old_size`` is a prefix of ``new_size``'s.

        Verify it with :func:`fedlora.crypto.verify_consistency` or
        :func:`verify_checkpoint_consistency`. Sizes range over ``0 <= old_size <= new_size <=
        size``; equal sizes and ``old_size == 0`` give an empty proof.

        Raises:
            FedLoraError: sizes out of that range.
        """
        with self._lock:
            valid = (
                all(isinstance(v, int) and not isinstance(v, bool) for v in (old_size, new_size))
                and 0 <= old_size <= new_size <= self.size
            )
            if not valid:
                raise OutOfRangeError(
                    f"no consistency proof from tree size {old_size!r} to {new_size!r} "
                    f"(need 0 <= old size <= new size <= log size {self.size})"
                )
            leaves = self._leaves[:new_size]
        # The proof is O(n) hashing: computed outside the lock so appends are not held up.
        return consistency_proof(old_size, leaves)


def events_by_round(events: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if isinstance(e.get("round"), int):
            out.setdefault(e["round"], []).append(e)
    return out
