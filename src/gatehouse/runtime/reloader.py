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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gatehouse.errors import PolicyError
from gatehouse.filewatch import Settle
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


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """The last rejected reload: when, and its problems as ``file:line:col path: message``."""

    at: float
    """Wall-clock seconds (``time.time()``)."""
    problems: tuple[str, ...]


class PolicyReloader:
    """Recompiles ``policy_dir`` when it changes (or when asked) and swaps the result in."""

    def __init__(self, follower: IndexFollower, policy_dir: Path,
                 load: Callable[[Path], CompiledPolicy] = load_policy) -> None:
        self.follower = follower
        self.policy_dir = policy_dir
        self._load = load
        self.reloads = 0
        """Edits compiled and swapped in since start (the metrics read these counters)."""
        self.failures = 0
        """Reload attempts that were rejected or failed since start."""
        self.loaded_at = time.time()
        """When the policy in force was loaded (wall clock)."""
        self.last_failure: ReloadFailure | None = None
        """The last reload attempt's problems, when it was rejected; None after a success."""
        self._settle: Settle[Signature | None] = Settle(None)
        self._lock: asyncio.Lock | None = None

    async def reload_now(self) -> CompiledPolicy:
        """Compile the folder now and serve it (the admin ReloadPolicy).

        Raises PolicyError with every problem when the set is broken; the
        policy in force keeps serving. Serialized with the watcher's reloads.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            sig = self._signature()
            try:
                new = await asyncio.to_thread(self._compile_or_raise)
            except PolicyError as exc:
                self._rejected(exc)
                raise
            self._settle.seen = sig
            self._swap(new)
            return new

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
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._settle.seen = self._signature()
        while True:
            await asyncio.sleep(interval)
            try:
                if not self._settle.changed(self._signature()):
                    continue
                async with self._lock:
                    new = await asyncio.to_thread(self._compile)
                    if new is not None:
                        self._swap(new)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("policy reload failed; still serving %s, watching on",
                              self.follower.policy.version)

    def _compile_or_raise(self) -> CompiledPolicy:
        with _cyclic_gc_paused():
            return self._load(self.policy_dir)

    def _compile(self) -> CompiledPolicy | None:
        try:
            return self._compile_or_raise()
        except PolicyError as exc:
            self._rejected(exc)
            return None

    def _rejected(self, exc: PolicyError) -> None:
        self.failures += 1
        problems = exc.problems
        self.last_failure = ReloadFailure(time.time(), tuple(str(p) for p in problems))
        log.error("policy reload rejected; still serving %s", self.follower.policy.version,
                  extra={"problems": [str(p) for p in problems[:LOGGED_PROBLEMS]],
                         "problem_count": len(problems)})

    def _swap(self, new: CompiledPolicy) -> None:
        old = self.follower.policy.version
        if new.version != old:
            log.info("policy reloaded", extra={"old_version": old,
                                               "policy_version": new.version})
        self.follower.set_policy(new)
        self.last_failure = None
        if new.version != old:
            self.loaded_at = time.time()
        self.reloads += 1
