"""File helpers for the command line: atomic, durable writes that never clobber."""

from __future__ import annotations

import os
from pathlib import Path

from fedlora.errors import FedLoraError


def write_new_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably; refuse to overwrite.

    The bytes go to a temporary file in the same folder, are fsynced, and are linked into place
    only if ``path`` does not exist yet, so a crash leaves either nothing or the whole file and an
    existing key is never replaced.

    Raises:
        FedLoraError: ``path`` exists already.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FedLoraError(f"{path} exists already; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_file(path: Path, what: str) -> bytes:
    """Read a whole file, turning OS errors into a message that names the file and its role."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FedLoraError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FedLoraError(f"cannot read {what} {path}: {exc.strerror}") from None
