#!/usr/bin/env python3
"""gRPC load generator: N calls in flight for a fixed time against one target.

One client process, ``grpc.aio``, one channel. Every target goes through the
same code path: the requests are protobuf messages built from the request mix
(``bench/dataset.py``) and serialized *before* any timing; the timed loop
sends those bytes through ``channel.unary_unary(method)`` without serializers
and takes the raw response bytes, so the client does the same work per call
whatever the target (decoding is done, and checked, by ``verify`` instead).

Targets (``--target``):

* ``gatehouse-check`` / ``null-check`` — ``gatehouse.v1.AuthorizationService/Check``,
  one check per call (gatehouse, or ``bench/null_server.py``);
* ``gatehouse-bulk`` / ``null-bulk`` — ``CheckBulk`` with 50 checks per call
  (one subject, flows of one workspace);
* ``cerbos-check`` — ``cerbos.svc.v1.CerbosService/CheckResources`` with one
  resource; ``cerbos-bulk`` — the same with the batch's 50 resources.

``run`` warms up, then counts calls that complete inside a fixed window and
the latency of calls that start and end inside it; it reads the CPU time of
this process (``os.times``) and of the server (``/proc/<pid>/stat``
utime + stime, all threads) at both ends of the window. ``verify`` sends
every request of the mix once and prints the decisions (JSON).

    .venv/bin/python bench/load.py run --target gatehouse-check --address 127.0.0.1:50051 \\
        --mix bench/.data/coupler-200o-20240601.mix.json --concurrency 64 --duration 20 \\
        --server-pid PID
    .venv/bin/python bench/load.py verify --target cerbos-check --address ... --mix ...

Both print one JSON object on stdout. ``bench/compare.py`` drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dataset import NO_ROLE, load_mix  # noqa: E402

GATEHOUSE_CHECK = "/gatehouse.v1.AuthorizationService/Check"
GATEHOUSE_BULK = "/gatehouse.v1.AuthorizationService/CheckBulk"
CERBOS_CHECK = "/cerbos.svc.v1.CerbosService/CheckResources"
TARGETS = ("gatehouse-check", "gatehouse-bulk", "keyed-check", "keyed-bulk", "null-check",
           "null-bulk", "cerbos-check", "cerbos-bulk")
KEY_ENV = "GATEHOUSE_API_KEY"
"""When set, every call carries ``authorization: Bearer <key>`` (the key never goes in argv)."""
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 << 20)]

Call = Callable[[bytes], Awaitable[bytes]]


# -- requests ----------------------------------------------------------------


def _gatehouse_request(subject: str, action: str, flow: str) -> Any:
    from gatehouse.v1 import authorization_pb2 as pb

    return pb.CheckRequest(subject=pb.ObjectReference(type="user", id=subject), action=action,
                           resource=pb.ObjectReference(type="data_flow", id=flow))


def cerbos_roles(unit: dict[str, Any]) -> list[str]:
    """The principal's roles for the flow's workspace, plus ``owner`` for the org owner."""
    roles = list(unit["roles"]) + (["owner"] if unit["org_owner"] else [])
    return roles or [NO_ROLE]


def _cerbos_request(unit: dict[str, Any], items: Sequence[dict[str, Any]]) -> Any:
    from cerbos.engine.v1 import engine_pb2
    from cerbos.request.v1 import request_pb2
    from google.protobuf import struct_pb2

    entries = []
    for it in items:
        attr = {"owner": struct_pb2.Value(string_value=it["flow_owner"]),
                "workspace": struct_pb2.Value(string_value=unit["workspace"])}
        entries.append(request_pb2.CheckResourcesRequest.ResourceEntry(
            actions=[it["action"]],
            resource=engine_pb2.Resource(kind="data_flow", id=it["flow"], attr=attr)))
    return request_pb2.CheckResourcesRequest(
        principal=engine_pb2.Principal(id=unit["subject"], roles=cerbos_roles(unit)),
        resources=entries)


def build(target: str, mix: dict[str, Any]) -> tuple[str, list[Any], int]:
    """(method, request messages, decisions per call) for ``target``."""
    system, kind = target.split("-")
    if kind == "check":
        units = [(r, [r]) for r in mix["requests"]]
    else:
        units = [(b, [{**it, "workspace": b["workspace"]} for it in b["items"]])
                 for b in mix["batches"]]
    per_call = len(units[0][1])
    if system == "cerbos":
        return CERBOS_CHECK, [_cerbos_request(u, items) for u, items in units], per_call
    if kind == "check":
        msgs = [_gatehouse_request(r["subject"], r["action"], r["flow"]) for r, _ in units]
        return GATEHOUSE_CHECK, msgs, 1
    from gatehouse.v1 import authorization_pb2 as pb

    msgs = [pb.CheckBulkRequest(items=[_gatehouse_request(u["subject"], it["action"], it["flow"])
                                       for it in items]) for u, items in units]
    return GATEHOUSE_BULK, msgs, per_call


def decode(target: str, raw: bytes, msg: Any) -> list[bool | None]:
    """Decisions in a response (None for an item that came back as an error)."""
    if target.startswith("cerbos"):
        from cerbos.effect.v1 import effect_pb2
        from cerbos.response.v1 import response_pb2

        resp = response_pb2.CheckResourcesResponse.FromString(raw)
        out: list[bool | None] = []
        for entry, result in zip(msg.resources, resp.results, strict=True):
            if result.resource.id != entry.resource.id:
                raise SystemExit(f"cerbos answered {result.resource.id} for {entry.resource.id}")
            out.append(result.actions[entry.actions[0]] == effect_pb2.EFFECT_ALLOW)
        return out
    from gatehouse.v1 import authorization_pb2 as pb

    if target.endswith("-check"):
        return [pb.CheckResponse.FromString(raw).decision == pb.DECISION_ALLOW]
    bulk = pb.CheckBulkResponse.FromString(raw)
    return [item.response.decision == pb.DECISION_ALLOW
            if item.WhichOneof("result") == "response" else None for item in bulk.results]


# -- measuring ---------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live child processes (``--workers``), in
    seconds (Linux /proc)."""
    total = 0
    fields = _stat(pid)
    total += int(fields[11]) + int(fields[12])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                child = _stat(int(entry))
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(v[:8]) - v[3] - v[4] - v[7]) / tick, v[7] / tick


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_values: Sequence[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


async def run_load(call: Call, payloads: Sequence[bytes], concurrency: int, warmup: float,
                   duration: float, server_pid: int | None) -> dict[str, Any]:
    """Keep ``concurrency`` calls in flight for ``warmup + duration`` seconds."""
    n = len(payloads)
    next_index = 0
    stop = False
    done: list[tuple[int, int]] = []  # (start ns, end ns) of each completed call
    errors: list[str] = []

    async def worker() -> None:
        nonlocal next_index
        clock = time.perf_counter_ns
        record = done.append
        while not stop:
            payload = payloads[next_index % n]
            next_index += 1
            t0 = clock()
            try:
                await call(payload)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
                if len(errors) > 100:
                    raise
                continue
            record((t0, clock()))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    w0, c0, m0 = time.perf_counter_ns(), self_cpu_seconds(), machine_cpu()
    s0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    errors_before = len(errors)
    await asyncio.sleep(duration)
    w1, c1, m1 = time.perf_counter_ns(), self_cpu_seconds(), machine_cpu()
    s1 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    errors_in_window = len(errors) - errors_before
    stop = True
    await asyncio.gather(*tasks)
    window = (w1 - w0) / 1e9
    completed = sum(1 for _, t1 in done if w0 <= t1 <= w1)
    lat = sorted(t1 - t0 for t0, t1 in done if t0 >= w0 and t1 <= w1)
    return {
        "window_s": round(window, 3),
        "calls": completed,
        "calls_per_s": completed / window,
        "latency_samples": len(lat),
        "p50_ms": percentile(lat, 50) / 1e6,
        "p90_ms": percentile(lat, 90) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "client_cpu_s": c1 - c0,
        "server_cpu_s": (s1 - s0) if server_pid else None,
        "machine_busy_s": m1[0] - m0[0],  # every process and the kernel, all CPUs
        "machine_steal_s": m1[1] - m0[1],
        "errors": errors_in_window,
        "first_errors": errors[:3],
    }


async def verify_all(call: Call, payloads: Sequence[bytes], concurrency: int
                     ) -> list[bytes]:
    """Send every payload once (``concurrency`` in flight); the raw responses, in order."""
    out: list[bytes] = [b""] * len(payloads)
    it = iter(range(len(payloads)))

    async def worker() -> None:
        for i in it:
            out[i] = await call(payloads[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    mix = load_mix(Path(args.mix))
    method, msgs, per_call = build(args.target, mix)
    payloads = [m.SerializeToString() for m in msgs]
    if args.tls_ca:
        creds = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
        opened = grpc.aio.secure_channel(args.address, creds, options=[
            *CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost")])
    else:
        opened = grpc.aio.insecure_channel(args.address, options=CHANNEL_OPTIONS)
    key = os.environ.get(KEY_ENV)
    async with opened as channel:
        plain: Any = channel.unary_unary(method)
        call: Call = plain
        if key:
            metadata = (("authorization", f"Bearer {key}"),)

            def call(payload: bytes) -> Awaitable[bytes]:
                out: Awaitable[bytes] = plain(payload, metadata=metadata)
                return out

        await asyncio.wait_for(channel.channel_ready(), 30)
        if args.mode == "verify":
            raws = await verify_all(call, payloads, args.concurrency)
            decisions = [decode(args.target, raw, msg) for raw, msg in zip(raws, msgs,
                                                                               strict=True)]
            return {"target": args.target, "decisions": decisions}
        result = await run_load(call, payloads, args.concurrency, args.warmup, args.duration,
                                args.server_pid)
    return {"target": args.target, "method": method, "concurrency": args.concurrency,
            "decisions_per_call": per_call,
            "decisions_per_s": result["calls_per_s"] * per_call,
            "distinct_payloads": len(payloads), "warmup_s": args.warmup, **result}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("mode", choices=("run", "verify"))
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("--address", required=True, help="loopback host:port of the server")
    p.add_argument("--mix", required=True, help="request mix file from bench/dataset.py")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    p.add_argument("--duration", type=float, default=20.0, help="timed window, seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up before it, seconds")
    p.add_argument("--server-pid", type=int, help="read this process's CPU time")
    p.add_argument("--tls-ca", help="use TLS, trusting this CA (PEM)")
    args = p.parse_args(argv)
    host = args.address.rsplit(":", 1)[0].strip("[]")
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        p.error("only loopback addresses are allowed")
    print(json.dumps(asyncio.run(amain(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
