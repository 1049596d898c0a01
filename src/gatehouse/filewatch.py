"""Noticing that files the server reads have changed: the policy folder, the keys
file, the TLS certificates.

Each of them is polled (a few ``stat`` calls, no inotify: it works the same on
bind mounts, Kubernetes secret volumes and network file systems) and compared
with what was loaded. Two pieces are shared:

- ``stat_mark``: what identifies one version of a file — device, inode,
  modification time and size. A file replaced by rename gets a new inode even
  when its size and time look the same.
- ``Settle``: a change counts once two polls in a row see it, so a file (or
  a folder of files) being written is read once, when it is done, not half-way.

Importable from every layer: it imports nothing of gatehouse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Generic, TypeVar

Mark = tuple[int, int, int, int]
S = TypeVar("S")


def stat_mark(path: Path | str) -> Mark | None:
    """(device, inode, mtime in ns, size) of ``path``; None when it cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class Settle(Generic[S]):
    """Debounces a polled signature against ``seen``, the one last loaded.

    ``changed(sig)`` is True once per change, on the second poll in a row that
    sees the same new signature (which becomes ``seen``). A loader that reads the
    files by other means sets ``seen`` itself.
    """

    __slots__ = ("_pending", "seen")

    def __init__(self, seen: S) -> None:
        self.seen = seen
        self._pending: S | None = None

    def changed(self, sig: S) -> bool:
        if sig == self.seen:
            self._pending = None
            return False
        if sig != self._pending:
            self._pending = sig
            return False
        self.seen, self._pending = sig, None
        return True


__all__ = ["Mark", "Settle", "stat_mark"]
