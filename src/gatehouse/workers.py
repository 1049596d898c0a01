"""``gatehouse serve --workers N``: N server processes sharing one port.

The parent validates the policy and loads the data file into Redis once, then
starts N children, each a full server (its own index following Redis) bound
with SO_REUSEPORT so the kernel spreads connections across them. SIGTERM or
SIGINT to the parent drains every child; if one child dies, the others are
stopped too rather than serving with less capacity than asked for unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from gatehouse.graph.bootstrap import load_data
from gatehouse.policy.loader import load_policy
from gatehouse.server import ServerConfig, open_store

log = logging.getLogger("gatehouse.workers")


async def _preload(config: ServerConfig) -> None:
    policy = await asyncio.to_thread(load_policy, config.policy_dir)
    if config.data_file is None:
        return
    store = open_store(config)
    try:
        await load_data(store, policy, config.data_file)
    finally:
        await store.close()


def run_workers(config: ServerConfig, count: int, child_args: Sequence[str],
                child_env: Mapping[str, str | None]) -> int:
    """Start ``count`` children running ``gatehouse serve`` with ``child_args``, their
    environment changed by ``child_env`` (a value of None removes the variable)."""
    asyncio.run(_preload(config))
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children: list[subprocess.Popen[bytes]] = []
    for i in range(count):
        env = {**os.environ, "GATEHOUSE_WORKER": str(i)}
        for name, value in child_env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        children.append(subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli", "serve", *child_args], env=env))
    log.info("workers started", extra={"workers": count, "address": config.listen,
                                       "pids": [c.pid for c in children]})
    code = 0
    while not stopping:
        dead = [c for c in children if c.poll() is not None]
        if dead:
            log.error("a worker exited; stopping the others",
                      extra={"pid": dead[0].pid, "code": dead[0].returncode})
            code = 1
            break
        time.sleep(0.2)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + config.grace_seconds + 10
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    log.info("workers stopped")
    return code
