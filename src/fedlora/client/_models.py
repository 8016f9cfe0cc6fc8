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
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedlora.audit import SignedCheckpoint, verify_checkpoint, verify_entry_inclusion
from fedlora.client._transport import Transport
from fedlora.errors import ConfigError, VerificationError

MODELS = "models"
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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(doc, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ModelKeeper:
    """Finds newly published global versions in the anchored log and keeps each one verified."""

    def __init__(self, state_dir: Path, federation_id: str, coordinator_key: bytes) -> None:
        self.state_dir = state_dir
        self.federation_id = federation_id
        self.coordinator_key = coordinator_key
        self._scanned = 0  # audit entries read so far (an in-memory cursor; a restart rescans)
        self._published: dict[int, tuple[int, bytes]] = {}  # version -> (index, entry)
        self._finished: tuple[int, bytes] | None = None  # the newest federation_finished

    def kept(self) -> dict[int, Path]:
        folder = self.state_dir / MODELS
        if not folder.is_dir():
            return {}
        out = {}
        for path in folder.iterdir():
            if path.name.startswith("v") and path.name[1:].isdigit():
                out[int(path.name[1:])] = path
        return out

    def sync(
        self,
        transport: Transport,
        checkpoint: SignedCheckpoint,
        write_adapter: WriteAdapter | None,
    ) -> list[str]:
        """Keep every version published in the log up to ``checkpoint`` (already anchored).

        Returns one line per version kept or marked final, for the operator.

        Raises:
            VerificationError: an entry not in the checkpoint's log, or a download that does not
                match its entry's digest (nothing is kept for it).
        """
        size = checkpoint.tree_size
        if size > self._scanned:
            for offset, line in enumerate(
                transport.audit_entries(self._scanned, size - self._scanned)
            ):
                index = self._scanned + offset
                try:
                    doc = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise VerificationError(f"audit entry {index} is not JSON") from None
                if not isinstance(doc, dict):
                    continue
                version = doc.get("version")
                if (
                    doc.get("event") == "global_published"
                    and type(version) is int
                    and 0 < version <= MAX_VERSION
                ):
                    self._published[version] = (index, line)
                elif doc.get("event") == "federation_finished":
                    self._finished = (index, line)
            self._scanned = size
        kept, lines = self.kept(), []
        for version, (index, entry) in sorted(self._published.items()):
            if version == 0 or version in kept:
                continue
            self._keep(transport, checkpoint, version, index, entry, write_adapter)
            lines.append(f"kept global adapter v{version} (verified against audit entry {index})")
        if self._finished is not None:
            index, entry = self._finished
            version = json.loads(entry).get("global_version")
            valid = type(version) is int and 0 < version <= MAX_VERSION
            folder = version_folder(self.state_dir, version) if valid else None
            if folder is not None and folder.is_dir() and not (folder / "final.json").exists():
                proof = transport.inclusion_proof(index, size)
                verify_entry_inclusion(entry, index, proof, checkpoint)
                _write_json(folder / "final.json", _proof_doc(entry, index, proof, checkpoint))
                lines.append(f"global adapter v{version} is the federation's final model")
        return lines

    def _keep(
        self,
        transport: Transport,
        checkpoint: SignedCheckpoint,
        version: int,
        index: int,
        entry: bytes,
        write_adapter: WriteAdapter | None,
    ) -> None:
        proof = transport.inclusion_proof(index, checkpoint.tree_size)
        verify_entry_inclusion(entry, index, proof, checkpoint)
        expected = bytes.fromhex(json.loads(entry)["global_digest"])
        data, _ = transport.download_global(version)
        if not hmac.compare_digest(hashlib.sha256(data).digest(), expected):
            raise VerificationError(
                f"global adapter v{version} does not match the digest in audit entry {index}"
            )
        vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
        provenance = {
            "federation_id": self.federation_id,
            "version": version,
            "global_digest": expected.hex(),
            **_proof_doc(entry, index, proof, checkpoint),
        }
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
    try:
        doc = json.loads((folder / "provenance.json").read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise VerificationError(f"{where} is unreadable") from None
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
        try:
            fin = json.loads((folder / "final.json").read_bytes())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise VerificationError(f"{where} is unreadable") from None
        finished = _check_proof_doc(fin, coordinator_key, federation_id, where)
        if (
            finished.get("event") != "federation_finished"
            or finished.get("global_version") != version
        ):
            raise VerificationError(f"{where} does not name global version {version} as final")
        final = True
    return KeptModel(version, folder, digest, final, version > 0)
