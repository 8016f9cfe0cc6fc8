"""Files under the coordinator's state folder; every write is fsynced before it counts.

    globals/v00000.f32                    global adapter of each version, float32 little-endian
    rounds/00001/contributions/ID.bin     one client's records (ciphertexts or float32 values)
    rounds/00001/aggregate.bin            the homomorphic sum
    rounds/00001/partials/ID.FIRST.bin    one chunk of one decryptor's partial decryption values
    audit/                                the audit log, which is also the event record

A file is written to a temporary name, fsynced, renamed into place and its folder fsynced, so a
crash leaves either no file or the whole file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedlora._files import sync_folder
from fedlora.errors import NotFoundError


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "globals").mkdir(exist_ok=True)
        (root / "rounds").mkdir(exist_ok=True)

    # -- paths -------------------------------------------------------------------------------
    def round_dir(self, round_number: int) -> Path:
        return self.root / "rounds" / f"{round_number:05d}"

    def contribution_path(self, round_number: int, client_id: str) -> Path:
        return self.round_dir(round_number) / "contributions" / f"{client_id}.bin"

    def aggregate_path(self, round_number: int) -> Path:
        return self.round_dir(round_number) / "aggregate.bin"

    def partial_path(self, round_number: int, party_id: str, first_record: int) -> Path:
        return self.round_dir(round_number) / "partials" / f"{party_id}.{first_record:010d}.bin"

    def global_path(self, version: int) -> Path:
        return self.root / "globals" / f"v{version:05d}.f32"

    # -- writing -----------------------------------------------------------------------------
    def temp_path(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{os.getpid()}.{id(final)}.tmp")

    @staticmethod
    def commit(temp: Path, final: Path) -> None:
        """Rename an fsynced temporary file into place and make the rename durable."""
        os.replace(temp, final)
        sync_folder(final.parent)

    def write_bytes(self, final: Path, data: bytes) -> None:
        temp = self.temp_path(final)
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.commit(temp, final)

    def save_global(self, version: int, vector: np.ndarray) -> bytes:
        data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        self.write_bytes(self.global_path(version), data)
        return hashlib.sha256(data).digest()

    # -- reading -----------------------------------------------------------------------------
    def load_global(self, version: int) -> np.ndarray:
        path = self.global_path(version)
        if not path.exists():
            raise NotFoundError(f"global adapter version {version} does not exist")
        return np.frombuffer(path.read_bytes(), dtype="<f4").astype(np.float32)

    @staticmethod
    def read_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                yield chunk
