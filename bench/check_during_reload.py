#!/usr/bin/env python3
"""Check latency while the server hot-reloads a large policy set.

Loads the organization of ``bench/usage.py`` (1,000 workspaces, 20,000
members, 50,000 connections) into a private Redis, starts ``gatehouse serve``
on it with a copy of policies/coupler that it watches, keeps one client
asking Check back to back, and then adds a policy file just under the
largest the policy limits accept (2,400 extra types, 7,200 rules, all valid). It
prints Check latency before the edit and while the server recompiled and
swapped the policy (until Check answers with the new policy version), and
how long that took. A second edit, a file past the size limit, must be
refused without disturbing Checks.

    .venv/bin/python bench/check_during_reload.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.usage import build_ops, load  # noqa: E402
from gatehouse.limits import LIMITS  # noqa: E402
from gatehouse.v1 import authorization_pb2 as apb  # noqa: E402
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def big_policy_file(limit: int, max_types: int = 2400) -> str:
    """Valid extra types and rules, as many as the policy limits accept: under
    ``limit`` bytes, and ``max_types`` types (about 38 values each, 3 rules each,
    within the values-per-file and rules-per-set limits)."""
    types, rules = ["types:"], ["permissions:"]
    size, i = 0, 0
    while i < max_types:
        t = (f"  extra_{i}:\n    parent: workspace\n    owned: true\n"
             f"    actions: [view, edit, delete]\n")
        r = (f"  extra_{i}:\n    - {{actions: [view, edit], roles: [workspace.admin]}}\n"
             f"    - {{actions: ['*'], roles: [organization.owner]}}\n"
             f"    - {{actions: [delete], roles: [workspace.user], when: owner}}\n")
        if size + len(t) + len(r) > limit - 1024:
            break
        types.append(t)
        rules.append(r)
        size += len(t) + len(r)
        i += 1
    return "".join(line if line.endswith("\n") else line + "\n" for line in types + rules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy = tmp / "policy"
        shutil.copytree(ROOT / "policies/coupler", policy)
        redis = RedisServer(tmp).start()
        try:
            asyncio.run(load(redis.url, "bs", build_ops(1000, 20000, 50000)))
            address = f"127.0.0.1:{free_port()}"
            log = tmp / "server.log"
            server = subprocess.Popen(
                [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", address,
                 "--policy", str(policy), "--redis-url", redis.url, "--redis-prefix", "bs",
                 "--log-level", "warning"],
                stdout=log.open("w"), stderr=subprocess.STDOUT)
            try:
                wait_serving(address, server, log, timeout=120)
                result = measure(address, policy)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            redis.stop()
    if args.json:
        print(json.dumps(result))
        return
    print(f"extra policy file                   {result['file_bytes']:,} bytes")
    print(f"edit -> new policy answering        {result['reload_ms']:.0f} ms")
    for phase in ("before", "during", "oversized"):
        print(f"Check {phase:<10} (n={result[phase + '_n']:>5})    "
              f"p50 {result[phase + '_p50_ms']:.2f}  p99 {result[phase + '_p99_ms']:.2f}  "
              f"max {result[phase + '_max_ms']:.2f} ms")


def measure(address: str, policy: Path) -> dict[str, float]:
    with grpc.insecure_channel(address) as ch:
        check = apb_grpc.AuthorizationServiceStub(ch).Check
        req = apb.CheckRequest(subject=apb.ObjectReference(type="user", id="p1"), action="view",
                               resource=apb.ObjectReference(type="workspace", id="w1"))
        first = check(req)
        for _ in range(200):
            check(req)
        lat: list[tuple[float, float, str]] = []
        stop = threading.Event()

        def checker() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                resp = check(req, timeout=10)
                lat.append((t0, (time.perf_counter() - t0) * 1000, resp.policy_version))

        thread = threading.Thread(target=checker)
        thread.start()
        time.sleep(1.0)
        text = big_policy_file(LIMITS.policy_file_bytes)
        edited = time.perf_counter()
        (policy / "zz_extra.yaml").write_text(text)
        deadline = time.monotonic() + 120
        while not lat or lat[-1][2] == first.policy_version:
            if time.monotonic() > deadline:
                raise SystemExit("the new policy was not served within 120 s")
            time.sleep(0.01)
        reloaded = time.perf_counter()
        time.sleep(0.5)
        oversized_at = time.perf_counter()
        (policy / "zz_huge.yaml").write_text(text * 11)
        time.sleep(3.0)  # two polls of the folder, and the refusal
        stop.set()
        thread.join()

    def phase(lo: float, hi: float) -> list[float]:
        return [ms for t0, ms, _ in lat if lo <= t0 < hi]

    out: dict[str, float] = {"file_bytes": len(text), "reload_ms": (reloaded - edited) * 1000}
    for name, (lo, hi) in {"before": (0.0, edited), "during": (edited, reloaded),
                           "oversized": (oversized_at, float("inf"))}.items():
        xs = phase(lo, hi)
        out.update({f"{name}_n": len(xs), f"{name}_p50_ms": quantile(xs, 0.5),
                    f"{name}_p99_ms": quantile(xs, 0.99), f"{name}_max_ms": max(xs, default=0)})
    return out


if __name__ == "__main__":
    main()
