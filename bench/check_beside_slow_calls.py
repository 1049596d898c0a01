#!/usr/bin/env python3
"""Check latency while the server's event loop is busy with a slow call.

Check is answered on the transport's poll thread; ComputeUsage, listings and
writes run on the asyncio loop. This loads the organization of
``bench/usage.py`` (1,000 workspaces) into a private Redis, starts
``gatehouse serve`` on it, keeps one client asking Check back to back, and
in the middle issues the first (cold, 0.3 to 0.5 s) ComputeUsage of that
organization. It prints Check latency before and during that call.

    .venv/bin/python bench/check_beside_slow_calls.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from gatehouse.v1 import authorization_pb2 as apb  # noqa: E402
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc  # noqa: E402
from gatehouse.v1 import usage_pb2, usage_pb2_grpc  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        redis = RedisServer(tmp).start()
        try:
            asyncio.run(load(redis.url, "bs", build_ops(1000, 20000, 50000)))
            address = f"127.0.0.1:{free_port()}"
            log = tmp / "server.log"
            server = subprocess.Popen(
                [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", address,
                 "--policy", str(ROOT / "policies/coupler"), "--redis-url", redis.url,
                 "--redis-prefix", "bs", "--no-watch", "--log-level", "warning"],
                stdout=log.open("w"), stderr=subprocess.STDOUT)
            try:
                wait_serving(address, server, log, timeout=120)
                result = measure(address)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            redis.stop()
    if args.json:
        print(json.dumps(result))
        return
    print(f"cold ComputeUsage on the loop       {result['slow_call_ms']:.0f} ms")
    print(f"Check before  (n={result['before_n']:>4})           p50 {result['before_p50_ms']:.2f}"
          f"  p99 {result['before_p99_ms']:.2f} ms")
    print(f"Check during  (n={result['during_n']:>4})           p50 {result['during_p50_ms']:.2f}"
          f"  p99 {result['during_p99_ms']:.2f}  max {result['during_max_ms']:.2f} ms")


def measure(address: str) -> dict[str, float]:
    with grpc.insecure_channel(address) as ch:
        check = apb_grpc.AuthorizationServiceStub(ch).Check
        usage = usage_pb2_grpc.UsageServiceStub(ch)
        req = apb.CheckRequest(subject=apb.ObjectReference(type="user", id="p1"), action="view",
                               resource=apb.ObjectReference(type="workspace", id="w1"))
        for _ in range(200):
            check(req)
        lat: list[float] = []
        stop = threading.Event()

        def checker() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                check(req, timeout=10)
                lat.append((time.perf_counter() - t0) * 1000)

        thread = threading.Thread(target=checker)
        thread.start()
        time.sleep(1.0)
        before = list(lat)
        t0 = time.perf_counter()
        usage.ComputeUsage(usage_pb2.ComputeUsageRequest(organization_id="big"), timeout=60)
        slow = (time.perf_counter() - t0) * 1000
        during = lat[len(before):]
        stop.set()
        thread.join()
    return {"slow_call_ms": slow, "before_n": len(before),
            "before_p50_ms": quantile(before, 0.5), "before_p99_ms": quantile(before, 0.99),
            "during_n": len(during), "during_p50_ms": quantile(during, 0.5),
            "during_p99_ms": quantile(during, 0.99), "during_max_ms": max(during)}


if __name__ == "__main__":
    main()
