"""One writer per folder: an exclusive lock on ``FOLDER/.normlab.lock``.

The lock is ``fcntl.flock`` on an open file, so the operating system releases it when the
holder exits in any way (``kill -9`` included): there is never a stale lock to remove by hand.
The holder writes its pid into the file, so a refused process can say who holds it. The lock
is re-entrant within one process (the lab takes it, then the CLI's report step inside it).
On a platform without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["FolderBusy", "folder_lock"]

LOCK_NAME = ".normlab.lock"
_held: dict[str, list] = {}  # resolved folder -> [fd, depth]


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""

    def __init__(self, folder, pid: str):
        self.folder, self.pid = Path(folder), pid
        super().__init__(f"{folder} is in use by another normlab process (pid {pid}); wait "
                         "for it to finish or use another --out")


@contextlib.contextmanager
def folder_lock(folder):
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block.

    Raises ``FolderBusy`` at once (no waiting) if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    name = str(folder.resolve())
    if name in _held:
        _held[name][1] += 1
        try:
            yield
        finally:
            _held[name][1] -= 1
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise FolderBusy(folder, pid) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[name] = [fd, 1]
        yield
    finally:
        _held.pop(name, None)
        os.close(fd)  # releases the lock
