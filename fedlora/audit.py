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
first bad entry or checkpoint.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.crypto import (
    CompactRange,
    checkpoint_digest,
    verify_consistency,
    verify_inclusion,
    ed25519_public_bytes,
    inclusion_proof,
    leaf_hash,
    sign_digest,
    verify_signature,
)
from fedlora.errors import FedLoraError, VerificationError

__all__ = [
    "AuditLog",
    "AuditSummary",
    "SignedCheckpoint",
    "canonical_json",
    "read_log_files",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
    "verify_entry_inclusion",
    "verify_log",
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


def verify_checkpoint(cp: SignedCheckpoint, public_key: bytes, *, log_id: str | None = None) -> None:
    """Check a checkpoint's signature (and its log id, when given); return ``None`` or raise.

    Raises:
        VerificationError: another log's checkpoint, or not signed by ``public_key``.
    """
    if log_id is not None and cp.log_id != log_id:
        raise VerificationError(
            f"checkpoint is for log {cp.log_id!r}, expected {log_id!r}"
        )
    try:
        digest = checkpoint_digest(
            log_id=cp.log_id, tree_size=cp.tree_size, root_hash=cp.root, timestamp_ms=cp.timestamp_ms
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


def _lines(data: bytes) -> list[bytes]:
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise VerificationError(
            "the last line is incomplete (no newline): the file was truncated or torn"
        )
    return data[:-1].split(b"\n")


def verify_log(entries_data: bytes, checkpoints_data: bytes, public_key: bytes) -> AuditSummary:
    """Verify an audit log offline with the coordinator's Ed25519 public key.

    Checks that every entry is canonical JSON with consecutive indices and non-decreasing times,
    that every checkpoint is correctly signed, has a strictly growing tree size and the root of
    exactly that many entries, and that the last checkpoint covers the whole log.

    Raises:
        VerificationError: naming the first bad entry or checkpoint.
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
    log_id = ""
    last_size = 0
    for j, line in enumerate(cp_lines):
        where = f"checkpoint {j}"
        try:
            cp = json.loads(line)
            log_id = cp["log_id"]
            size, root = cp["tree_size"], bytes.fromhex(cp["root"])
            stamp, signature = cp["timestamp_ms"], bytes.fromhex(cp["signature"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise VerificationError(f"{where} is malformed") from None
        if not isinstance(size, int) or not isinstance(stamp, int) or not isinstance(log_id, str):
            raise VerificationError(f"{where} has fields of the wrong type")
        try:
            digest = checkpoint_digest(
                log_id=log_id, tree_size=size, root_hash=root, timestamp_ms=stamp
            )
            verify_signature(public_key, digest, signature)
        except FedLoraError:
            raise VerificationError(
                f"{where} (tree size {size}) is not signed by the coordinator's key"
            ) from None
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

    def __init__(self, folder: Path, log_id: str, signing_key: Ed25519PrivateKey) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log_id, self._key = folder, log_id, signing_key
        self.public_key = ed25519_public_bytes(signing_key)
        self._lock = threading.Lock()
        self._entries_path, self._cp_path = folder / ENTRIES, folder / CHECKPOINTS
        self._leaves: list[bytes] = []
        self._range = CompactRange()
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
        covered = json.loads(cps[-1])["tree_size"] if cps else 0
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
        stamp = max(int(time.time() * 1000), self._last_time)
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
        self._append_line(self._cp_path, canonical_json(cp))

    def append(self, event: str, **fields: Any) -> int:
        """Append one event, fsync it and its checkpoint; return its index."""
        with self._lock:
            index = self.size
            self._last_time = max(int(time.time() * 1000), self._last_time)
            line = canonical_json(
                {"event": event, "index": index, "time_ms": self._last_time, **fields}
            )
            self._append_line(self._entries_path, line)
            self._leaves.append(leaf_hash(line))
            self._range.append(self._leaves[-1])
            self._checkpoint()
            return index

    def entries(self, start: int = 0, limit: int = 0) -> list[bytes]:
        with self._lock:
            lines = _lines(self._entries_path.read_bytes()) if self._entries_path.exists() else []
        end = len(lines) if limit == 0 else min(len(lines), start + limit)
        return lines[start:end]

    def latest_checkpoint(self) -> dict[str, Any]:
        with self._lock:
            lines = _lines(self._cp_path.read_bytes())
        return dict(json.loads(lines[-1]))

    def inclusion(self, index: int, tree_size: int) -> tuple[bytes, list[bytes]]:
        """Leaf hash and RFC 6962 audit path of entry ``index`` in the tree of ``tree_size``."""
        with self._lock:
            if not 0 <= index < tree_size <= self.size:
                raise FedLoraError(
                    f"no entry {index} in a tree of size {tree_size} (log size {self.size})"
                )
            leaves = self._leaves[:tree_size]
        return leaves[index], inclusion_proof(index, leaves)


def events_by_round(events: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if isinstance(e.get("round"), int):
            out.setdefault(e["round"], []).append(e)
    return out
