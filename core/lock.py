"""One run per folder: an advisory lock (``flock``) on a file inside the folder.

The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a crashed run
never leaves a stale lock behind. The holder writes who it is into the file, so a refused run can say
which process holds the folder. A lock released on a folder that holds nothing else (a run refused before it
wrote anything) takes the folder with it, and the parent folders it had to create.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import InvalidInputError

_HELD: dict[str, "FolderLock"] = {}


class FolderBusyError(InvalidInputError):
    """Another process is already working in this folder."""


class FolderLock:
    """Exclusive lock on ``folder`` (through ``folder/name``); ``acquire`` fails at once if it is held."""

    def __init__(self, folder, name: str = ".run.lock", what: str = "folder"):
        self.folder = Path(os.path.realpath(folder))
        self.path = self.folder / name
        self.what = what
        self._fh = None
        self._created: list[Path] = []

    def acquire(self) -> "FolderLock":
        missing, d = [], self.folder
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                h = json.loads(holder)
                who = f"process {h['pid']} on {h['host']} since {h['since']} ({h['command']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise FolderBusyError(
                f"{self.what} {self.folder} is in use by {who}; wait for that run to finish, or use another "
                "folder (two runs writing one folder would mix their outputs)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._remove_if_only_the_lock()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def _remove_if_only_the_lock(self) -> None:
        """A folder holding nothing but this lock (nothing was written) goes, with the parents this lock made."""
        try:
            if [p.name for p in self.folder.iterdir()] != [self.path.name]:
                return
            self.path.unlink()
            for d in self._created:  # a folder that was there before stays
                d.rmdir()  # only empty folders; stops at the first that is not
        except OSError:
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def hold_for_process(folder, name: str = ".run.lock", what: str = "folder") -> FolderLock:
    """Lock ``folder`` until this process ends (idempotent within the process)."""
    key = os.path.realpath(os.path.join(folder, name))
    if key not in _HELD:
        _HELD[key] = FolderLock(folder, name, what).acquire()
    return _HELD[key]
