"""File helpers: atomic, durable writes (that never clobber, or that replace on purpose)."""

from __future__ import annotations

import os
from pathlib import Path

from fedlora.errors import FedLoraError


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a new, fsynced temporary file beside ``path``; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a crash of this pid's predecessor
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def sync_folder(folder: Path) -> None:
    """Make a rename or new file in ``folder`` durable (fsync the directory)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_new_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably; refuse to overwrite.

    The bytes go to a temporary file in the same folder, are fsynced, and are linked into place
    only if ``path`` does not exist yet, so a crash leaves either nothing or the whole file and an
    existing key is never replaced.

    Raises:
        FedLoraError: ``path`` exists already.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FedLoraError(f"{path} exists already; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)


def replace_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably, replacing what was there."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)


def read_file(path: Path, what: str) -> bytes:
    """Read a whole file, turning OS errors into a message that names the file and its role."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FedLoraError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FedLoraError(f"cannot read {what} {path}: {exc.strerror}") from None


def check_private(path: Path, what: str) -> None:
    """Refuse a private key file that other users may read or write (POSIX permissions).

    Raises:
        FedLoraError: naming the file, its mode and the fix.
    """
    if os.name != "posix":  # pragma: no cover - Windows ACLs are not modes
        return
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise FedLoraError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FedLoraError(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise FedLoraError(
            f"{what} {path} is a private key readable by other users (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )


class StateLock:
    """An exclusive lock on a state folder, held while one coordinator or client uses it.

    Two instances on one folder would race on its ledger, receipts and audit log; the second is
    refused. The lock is an ``flock`` on ``<folder>/.lock``, released by the OS when the process
    dies (a ``kill -9`` leaves no stale lock).
    """

    def __init__(self, folder: Path, what: str, *, wait_s: float = 0.0) -> None:
        """``wait_s``: how long to wait for another holder to finish (0: refuse at once)."""
        import fcntl
        import time

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".lock"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise FedLoraError(
                f"another {what} (pid {holder}) is using the state folder {folder}; stop it first, "
                "or give this one another state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1
