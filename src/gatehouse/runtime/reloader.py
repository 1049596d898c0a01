"""Hot reload of the policy folder.

The reloader polls the folder's file signature and, when it changes,
compiles the new set off the event loop and hands it to the follower, which
swaps it in atomically. A broken edit is logged with every problem and the
last good policy keeps serving. Nothing a policy file contains may stop the
watching: an unexpected failure is logged and the next change is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from gatehouse.errors import PolicyError
from gatehouse.policy.loader import load_policy, policy_files
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime.follower import IndexFollower

log = logging.getLogger("gatehouse.reloader")

Signature = tuple[tuple[str, int, int], ...]
# A rejected policy can have thousands of problems; the log shows the first ones.
LOGGED_PROBLEMS = 50


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Compiling allocates hundreds of thousands of objects that live until the
    compile ends; each full collection meanwhile walks all of them holding the
    interpreter (0.2-0.4 s per collection for a policy file near the size
    limit), and Checks on the poll thread wait for it. Reference counting
    still frees the compile's garbage; cycles wait the few seconds until the
    compile is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PolicyReloader:
    """Recompiles ``policy_dir`` when it changes and swaps the result in."""

    def __init__(self, follower: IndexFollower, policy_dir: Path,
                 load: Callable[[Path], CompiledPolicy] = load_policy) -> None:
        self.follower = follower
        self.policy_dir = policy_dir
        self._load = load
        self.reloads = 0
        """Edits compiled and swapped in since start (the metrics read these counters)."""
        self.failures = 0
        """Reload attempts that were rejected or failed since start."""

    def _signature(self) -> Signature:
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in policy_files(self.policy_dir)
            )
        except OSError:
            return ()

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the folder every ``interval`` seconds until cancelled.

        A change is compiled once the folder has looked the same for two polls
        in a row, so an editor (or a deploy) writing several files is compiled
        once, when it is done, not once per file.
        """
        seen = self._signature()
        pending: Signature | None = None
        while True:
            await asyncio.sleep(interval)
            try:
                sig = self._signature()
                if sig == seen:
                    pending = None
                    continue
                if sig != pending:
                    pending = sig
                    continue
                seen, pending = sig, None
                new = await asyncio.to_thread(self._compile)
                if new is not None:
                    self._swap(new)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("policy reload failed; still serving %s, watching on",
                              self.follower.policy.version)

    def _compile(self) -> CompiledPolicy | None:
        try:
            with _cyclic_gc_paused():
                return self._load(self.policy_dir)
        except PolicyError as exc:
            self.failures += 1
            problems = exc.problems
            log.error("policy reload rejected; still serving %s", self.follower.policy.version,
                      extra={"problems": [str(p) for p in problems[:LOGGED_PROBLEMS]],
                             "problem_count": len(problems)})
            return None

    def _swap(self, new: CompiledPolicy) -> None:
        old = self.follower.policy.version
        if new.version != old:
            log.info("policy reloaded", extra={"old_version": old,
                                               "policy_version": new.version})
        self.follower.set_policy(new)
        self.reloads += 1
