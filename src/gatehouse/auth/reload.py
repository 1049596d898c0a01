"""Reloading the keys file without a restart.

The watcher polls the file's signature (inode, size, modification time) on
the event loop every second; once a change has stayed put for one poll it
reads and checks the file off the loop. A valid file replaces the key table
in one assignment; an invalid or unreadable one is logged with its
positioned problems and the previous table keeps serving. Logs name keys,
never show keys or hashes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gatehouse.auth.authenticator import Authenticator
from gatehouse.auth.keys import KeyTable, load_keys
from gatehouse.errors import KeysFileError
from gatehouse.filewatch import Mark, Settle, stat_mark

log = logging.getLogger("gatehouse.auth")

Signature = Mark | None
LOGGED_PROBLEMS = 50


def signature(path: Path) -> Signature:
    return stat_mark(path)


class KeysWatcher:
    """Keeps ``authenticator`` serving the newest valid version of ``path``."""

    def __init__(self, authenticator: Authenticator, path: Path,
                 load: Callable[[Path], KeyTable] = load_keys) -> None:
        self.authenticator = authenticator
        self.path = path
        self._load = load
        self._settle = Settle(signature(path))
        self.reloads = 0
        """Key tables swapped in since start."""
        self.failures = 0
        """Changed files that were rejected since start."""

    async def watch(self, interval: float = 1.0) -> None:
        """Poll every ``interval`` seconds until cancelled; never stops on a bad file."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self._settle.changed(signature(self.path)):
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("api keys reload failed; the previous keys keep serving")

    async def reload(self) -> bool:
        """Read the file now; True when its table replaced the one in force."""
        try:
            table = await asyncio.to_thread(self._load, self.path)
        except KeysFileError as exc:
            self.failures += 1
            log.error("api keys reload rejected; the previous keys keep serving",
                      extra={"file": str(self.path),
                             "problems": [str(p) for p in exc.problems[:LOGGED_PROBLEMS]],
                             "problem_count": len(exc.problems)})
            return False
        old = set(self.authenticator.table.names)
        new = set(table.names)
        self.authenticator.replace(table)
        self.reloads += 1
        log.info("api keys reloaded", extra={"file": str(self.path), "keys": len(new),
                                             "added": sorted(new - old),
                                             "removed": sorted(old - new)})
        return True


__all__ = ["KeysWatcher", "signature"]
