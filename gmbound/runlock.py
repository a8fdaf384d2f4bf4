"""An exclusive lock on a run folder, so that two training runs never write into one folder.

``RunLock(folder)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<folder>/.gmbound.lock`` and
holds it until released (a context manager). The kernel drops a flock when its process dies, so
a lock file left behind by a killed run never blocks the next one: only a *live* holder counts.
The file records the holder's PID, host and start time, for the refusal message only; the lock
itself is the flock, never the file's existence or content. The file is not deleted on release:
unlinking a lock file lets a third process lock a fresh inode while a second still waits on the
old one.

POSIX only (``fcntl``). On network file systems flock is as reliable as the server makes it.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".gmbound.lock"


class RunLockedError(RuntimeError):
    """The run folder is locked by another live process; the message names it."""


class RunLock:
    """Exclusive, non-blocking lock on a run folder (created if missing)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunLockedError`` naming the holder (never waits)."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"run folder {self.folder} is in use by another gmbound run ({holder}); "
                                 "wait for it to finish, or choose another out_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale PID for the next reader; harmless if it fails
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's record, read through our own descriptor (the holder may be writing it)."""
    for _ in range(20):  # the holder truncates, then writes: give it a moment to finish
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "holder's PID not recorded yet"
