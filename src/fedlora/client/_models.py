"""What a client keeps of what it helped build: every published global adapter, with its proof.

After the federation ends the coordinator may be gone; the bank must still hold the model and be
able to show where it came from. For each global version the coordinator publishes, the client
downloads it, finds its ``global_published`` audit entry, checks that entry's inclusion in the
checkpoint it has anchored (a log that shrank or forked has stopped the client before this), and
checks the downloaded bytes against the digest in the entry. It then writes, atomically,
``<state_dir>/models/v00003/``:

* ``global.f32`` — the shared vector (little-endian float32), whose SHA-256 the entry names;
* ``adapter/`` — the same version in peft's format (LoRA models), loadable with peft alone;
* ``provenance.json`` — the entry, its index, the inclusion proof, the signed checkpoint and, when
  this client contributed to the round that produced the version, its receipt;
* ``final.json`` — only for the version a ``federation_finished`` entry names, with that entry's
  own inclusion proof.

:func:`verify_kept` re-checks all of it offline with the pinned coordinator key; ``fedlora
export`` uses it and never contacts the coordinator.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedlora.audit import SignedCheckpoint, verify_checkpoint, verify_entry_inclusion
from fedlora.client._transport import MemberTransport
from fedlora.crypto import leaf_hash, merkle_root
from fedlora.errors import ConfigError, VerificationError
from fedlora.protocol import FLOWER_LAYOUT

MODELS = "models"
SCAN = "log-scan.json"  # beside models/, which holds only the kept versions
MAX_VERSION = 10_000_000  # a version is a round number; anything else in a log is ignored
WriteAdapter = Callable[[np.ndarray, Path], None]


def version_folder(state_dir: Path, version: int) -> Path:
    return state_dir / MODELS / f"v{version:05d}"


@dataclass(frozen=True)
class KeptModel:
    """A kept global version, verified."""

    version: int
    folder: Path
    digest: bytes
    final: bool
    round_closed: bool  # a round produced it (version 0 is the untrained start)

    @property
    def adapter(self) -> Path | None:
        path = self.folder / "adapter"
        return path if path.is_dir() else None

    def vector(self) -> np.ndarray:
        return np.frombuffer((self.folder / "global.f32").read_bytes(), dtype="<f4").astype(
            np.float32
        )


def _proof_doc(
    entry: bytes, index: int, proof: list[bytes], cp: SignedCheckpoint
) -> dict[str, Any]:
    return {
        "entry": entry.decode(),
        "index": index,
        "inclusion": [h.hex() for h in proof],
        "checkpoint": cp.to_dict(),
    }


def _check_proof_doc(
    doc: Any, coordinator_key: bytes, federation_id: str, where: str
) -> dict[str, Any]:
    """The entry a provenance document proves, after checking signature and inclusion."""
    try:
        entry = doc["entry"].encode()
        index = doc["index"]
        proof = [bytes.fromhex(h) for h in doc["inclusion"]]
        cp = SignedCheckpoint.from_dict(doc["checkpoint"])
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise VerificationError(f"{where} is malformed") from None
    verify_checkpoint(cp, coordinator_key, log_id=federation_id)
    verify_entry_inclusion(entry, index, proof, cp)
    parsed = json.loads(entry)
    if not isinstance(parsed, dict) or parsed.get("index") != index:
        raise VerificationError(f"{where}: the entry's index does not match its proof")
    return parsed


def _file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_atomically(final: Path, fill: Callable[[Path], None]) -> None:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(doc, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _entry(line: bytes, index: int) -> dict[str, Any]:
    """A log line as an object, or VerificationError (never a raw parse error)."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise VerificationError(f"audit entry {index} is not a JSON object") from None
    if not isinstance(doc, dict) or doc.get("index") != index:
        raise VerificationError(f"audit entry {index} is not the log's entry {index}")
    return doc


def _version(value: Any, index: int) -> int:
    if type(value) is not int or not 0 <= value <= MAX_VERSION:
        raise VerificationError(f"audit entry {index} names an impossible global version")
    return int(value)


def _digest(value: Any, index: int) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise VerificationError(f"audit entry {index} has no valid global digest")
    return value


class ModelKeeper:
    """Finds newly published global versions in the anchored log and keeps each one verified.

    Every audit line it reads is authenticated: the lines fetched must be exactly the log's
    entries up to the anchored checkpoint (their Merkle root is recomputed and compared), so a
    coordinator can neither hide an entry from one client nor show it another.
    """

    def __init__(self, state_dir: Path, federation_id: str, coordinator_key: bytes) -> None:
        self.state_dir = state_dir
        self.federation_id = federation_id
        self.coordinator_key = coordinator_key
        self._leaves: list[bytes] = []  # leaf hashes of the entries read so far
        self._lines: dict[int, bytes] = {}  # index -> the entries that matter here
        self._published: dict[int, tuple[int, bytes, str]] = {}  # version -> (index, entry, digest)
        self._finished: tuple[int, bytes, int, str] | None = None  # the newest one
        self._opened: dict[int, tuple[int, str]] = {}  # round -> (global version, digest)
        self.layout: list[list[Any]] | None = None  # a Flower federation's array layout, signed
        self._saved = 0
        self._load_scan()

    @property
    def scanned(self) -> int:
        """How many of the log's entries have been read, authenticated and recorded on disk."""
        return self._saved

    # What was read is kept in <state>/log-scan.json, so that a restart (or, on Flower, the next
    # message) reads only the entries since. The file is this client's own, like its ledger; it
    # is re-checked when loaded (each kept entry against its leaf hash, then parsed as if read
    # now), and the next scan checks the whole prefix, as its leaves are part of the root.
    def _scan_path(self) -> Path:
        return self.state_dir / SCAN

    def _reset(self) -> None:
        self._leaves, self._lines, self._published, self._opened = [], {}, {}, {}
        self._finished, self.layout, self._saved = None, None, 0
        self.settings: dict[str, Any] | None = None  # as federation_started records them

    def _load_scan(self) -> None:
        try:
            doc = json.loads(self._scan_path().read_bytes())
            if not isinstance(doc, dict) or doc.get("federation_id") != self.federation_id:
                return
            raw = bytes.fromhex(doc["leaves"])
            if len(raw) % 32:
                return
            self._leaves = [raw[i : i + 32] for i in range(0, len(raw), 32)]
            for key, value in sorted(doc["entries"].items(), key=lambda kv: int(kv[0])):
                index, line = int(key), bytes.fromhex(value)
                if not 0 <= index < len(self._leaves) or not hmac.compare_digest(
                    leaf_hash(line), self._leaves[index]
                ):
                    raise ValueError("an entry that is not the recorded leaf")
                self._consider(index, line)
        except Exception:
            self._reset()
            return
        self._saved = len(self._leaves)

    def _save_scan(self) -> None:
        if self._saved == len(self._leaves):
            return
        self._scan_path().parent.mkdir(parents=True, exist_ok=True)
        _write_json(
            self._scan_path(),
            {
                "federation_id": self.federation_id,
                "leaves": b"".join(self._leaves).hex(),
                "entries": {str(i): line.hex() for i, line in sorted(self._lines.items())},
            },
        )
        self._saved = len(self._leaves)

    def _consider(self, index: int, line: bytes) -> None:
        """Take note of one authenticated entry (a publication, the end, a Flower layout).

        Raises:
            VerificationError: a malformed entry, or two digests for one version.
        """
        doc = _entry(line, index)
        event = doc.get("event")
        if event == "global_published":
            version = _version(doc.get("version"), index)
            digest = _digest(doc.get("global_digest"), index)
            known = self._published.get(version)
            if known is not None and known[2] != digest:
                raise VerificationError(
                    f"the log publishes two different global adapters as version {version} "
                    f"(entries {known[0]} and {index})"
                )
            self._published.setdefault(version, (index, line, digest))
        elif event == "federation_finished":
            version = _version(doc.get("global_version"), index)
            self._finished = (index, line, version, _digest(doc.get("global_digest"), index))
        elif event == "round_opened":
            number = doc.get("round")
            if type(number) is not int or not 0 < number <= MAX_VERSION:
                raise VerificationError(f"audit entry {index} names an impossible round")
            opened = (
                _version(doc.get("global_version"), index),
                _digest(doc.get("global_digest"), index),
            )
            if self._opened.setdefault(number, opened) != opened:
                raise VerificationError(
                    f"the log opens round {number} twice, from different global models"
                )
        elif event == "federation_started":
            settings = doc.get("settings")
            if not isinstance(settings, dict):
                raise VerificationError(f"audit entry {index} starts a federation without settings")
            layout = settings.get(FLOWER_LAYOUT)
            self.layout = layout if isinstance(layout, list) else None
            self.settings = dict(settings)
        elif event == "config_changed":  # a restart the operator accepted: name -> [old, new]
            changes = doc.get("changes")
            if self.settings is None or not isinstance(changes, dict):
                raise VerificationError(f"audit entry {index} changes settings it cannot")
            for name, change in changes.items():
                if not (isinstance(change, list) and len(change) == 2):
                    raise VerificationError(f"audit entry {index} changes {name!r} malformed")
                self.settings[name] = change[1]
        else:
            return
        self._lines[index] = line

    def published_digest(self, version: int) -> bytes | None:
        """The digest the authenticated log publishes for ``version``, or None if not read."""
        found = self._published.get(version)
        return bytes.fromhex(found[2]) if found is not None else None

    def opened(self, round_number: int) -> tuple[int, bytes] | None:
        """The global version and digest the authenticated log opens ``round_number`` from, or
        None if this client has not read such an entry."""
        found = self._opened.get(round_number)
        return (found[0], bytes.fromhex(found[1])) if found is not None else None

    def kept_through(self) -> int:
        """The newest version ``v`` such that versions 1 … ``v`` are all kept here (0: none)."""
        kept, v = self.kept(), 0
        while v + 1 in kept:
            v += 1
        return v

    def kept(self) -> dict[int, Path]:
        folder = self.state_dir / MODELS
        if not folder.is_dir():
            return {}
        out = {}
        for path in folder.iterdir():
            if path.name.startswith("v") and path.name[1:].isdigit():
                out[int(path.name[1:])] = path
        return out

    def _scan(self, transport: MemberTransport, checkpoint: SignedCheckpoint) -> None:
        """Read the entries up to the checkpoint and check them against its root."""
        start, size = len(self._leaves), checkpoint.tree_size
        if size <= start:
            return
        lines = transport.audit_entries(start, size - start)
        if len(lines) != size - start:
            raise VerificationError(
                f"the coordinator sent {len(lines)} audit entries for {start}..{size - 1}"
            )
        leaves = self._leaves + [leaf_hash(line) for line in lines]
        if not hmac.compare_digest(merkle_root(leaves), checkpoint.root) and start > 0:
            # What this client kept of its earlier reading (log-scan.json) may be what is
            # wrong: forget it and read the log from its start before blaming the coordinator.
            self._scan_path().unlink(missing_ok=True)
            self._reset()
            return self._scan(transport, checkpoint)
        if not hmac.compare_digest(merkle_root(leaves), checkpoint.root):
            raise VerificationError(
                f"the audit entries the coordinator sent are not the log of its signed checkpoint "
                f"(tree size {size})"
            )
        for offset, line in enumerate(lines):
            self._consider(start + offset, line)
        self._leaves = leaves

    def sync(
        self,
        transport: MemberTransport,
        checkpoint: SignedCheckpoint,
        write_adapter: WriteAdapter | None,
        *,
        num_parameters: int,
        max_version: int,
    ) -> list[str]:
        """Keep every version published in the log up to ``checkpoint`` (already anchored).

        Versions above ``max_version`` (the federation's rounds) are not fetched; a download is
        cut off beyond ``num_parameters`` float32 values. Returns one line per version kept or
        marked final, for the operator.

        Raises:
            VerificationError: entries that are not the checkpoint's log, two digests for one
                version, a malformed entry, or a download that does not match its entry's digest
                (nothing is kept for it).
        """
        self._scan(transport, checkpoint)
        kept, lines = self.kept(), []
        for version, (index, entry, digest) in sorted(self._published.items()):
            if version == 0 or version > max_version:
                continue
            if version in kept:
                recorded = json.loads((kept[version] / "provenance.json").read_bytes())
                if recorded.get("global_digest") != digest:
                    raise VerificationError(
                        f"the log names another global adapter as version {version} than the "
                        f"one kept in {kept[version]}"
                    )
                continue
            self._keep(transport, checkpoint, version, index, entry, write_adapter, num_parameters)
            lines.append(f"kept global adapter v{version} (verified against audit entry {index})")
        if self._finished is not None:
            index, entry, version, named = self._finished
            folder = version_folder(self.state_dir, version)
            published = self._published.get(version)
            if published is not None and published[2] != named:
                raise VerificationError(
                    f"the log's federation_finished entry {index} names another digest for "
                    f"version {version} than its global_published entry"
                )
            if folder.is_dir() and not (folder / "final.json").exists():
                proof = transport.inclusion_proof(index, checkpoint.tree_size)
                verify_entry_inclusion(entry, index, proof, checkpoint)
                _write_json(folder / "final.json", _proof_doc(entry, index, proof, checkpoint))
                for other, path in self.kept().items():  # only the newest end is final
                    if other != version:
                        (path / "final.json").unlink(missing_ok=True)
                lines.append(f"global adapter v{version} is the federation's final model")
        self._save_scan()  # only after every version read so far is kept
        return lines

    def _keep(
        self,
        transport: MemberTransport,
        checkpoint: SignedCheckpoint,
        version: int,
        index: int,
        entry: bytes,
        write_adapter: WriteAdapter | None,
        num_parameters: int,
    ) -> None:
        proof = transport.inclusion_proof(index, checkpoint.tree_size)
        verify_entry_inclusion(entry, index, proof, checkpoint)
        expected = bytes.fromhex(json.loads(entry)["global_digest"])
        data, _ = transport.download_global(version, max_bytes=4 * num_parameters)
        if not hmac.compare_digest(hashlib.sha256(data).digest(), expected):
            raise VerificationError(
                f"global adapter v{version} does not match the digest in audit entry {index}"
            )
        if len(data) != 4 * num_parameters:
            raise VerificationError(
                f"global adapter v{version} has {len(data) // 4} values, the model has {num_parameters}"
            )
        vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
        provenance = {
            "federation_id": self.federation_id,
            "version": version,
            "global_digest": expected.hex(),
            **_proof_doc(entry, index, proof, checkpoint),
        }
        if self.layout is not None:
            provenance["layout"] = self.layout  # as the log's federation_started entry names it
        receipt = self.state_dir / "receipts" / f"round-{version:05d}.json"
        if receipt.exists():  # this client contributed to the round that produced the version
            provenance["receipt"] = json.loads(receipt.read_bytes())

        def fill(folder: Path) -> None:
            (folder / "global.f32").write_bytes(data)
            if write_adapter is not None:
                write_adapter(vector, folder / "adapter")
                # The adapter is this client's rendering of the proven vector; its files' digests
                # are recorded so that export notices a file changed since.
                provenance["adapter_files"] = _file_digests(folder / "adapter")
            (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")

        _write_atomically(version_folder(self.state_dir, version), fill)


def _read_doc(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError, UnicodeDecodeError):
        raise VerificationError(f"{path} is unreadable") from None


def verify_kept(
    state_dir: Path, federation_id: str, coordinator_key: bytes, version: int
) -> KeptModel:
    """Re-check a kept version offline: checkpoint signature, inclusion, digest, finality.

    Raises:
        ConfigError: the version is not kept here.
        VerificationError: any check fails (the files were altered, or are not this
            federation's).
    """
    folder = version_folder(state_dir, version)
    if not (folder / "provenance.json").is_file():
        raise ConfigError(f"global version {version} is not kept in {state_dir / MODELS}")
    where = f"{folder / 'provenance.json'}"
    doc = _read_doc(folder / "provenance.json")
    entry = _check_proof_doc(doc, coordinator_key, federation_id, where)
    if entry.get("event") != "global_published" or entry.get("version") != version:
        raise VerificationError(f"{where} does not prove global version {version}")
    try:
        digest = bytes.fromhex(entry["global_digest"])
        data = (folder / "global.f32").read_bytes()
    except (KeyError, ValueError, TypeError, OSError):
        raise VerificationError(f"{folder}: global.f32 or the entry's digest is missing") from None
    if not hmac.compare_digest(hashlib.sha256(data).digest(), digest):
        raise VerificationError(f"{folder / 'global.f32'} does not match its audit entry's digest")
    recorded = doc.get("adapter_files")
    if recorded is not None and (
        not (folder / "adapter").is_dir() or _file_digests(folder / "adapter") != recorded
    ):
        raise VerificationError(
            f"{folder / 'adapter'} changed since the client kept it (its files no longer match "
            "provenance.json)"
        )
    final = False
    if (folder / "final.json").exists():
        where = f"{folder / 'final.json'}"
        finished = _check_proof_doc(
            _read_doc(folder / "final.json"), coordinator_key, federation_id, where
        )
        if (
            finished.get("event") != "federation_finished"
            or finished.get("global_version") != version
        ):
            raise VerificationError(f"{where} does not name global version {version} as final")
        final = True
    return KeptModel(version, folder, digest, final, version > 0)
