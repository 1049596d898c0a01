#!/usr/bin/env python3
"""gatehouse vs Cerbos vs a null Python gRPC server, over gRPC, in one run.

Starts three servers on free loopback ports:

* **gatehouse** — ``gatehouse serve`` with ``policies/coupler``, the memory
  store (``--redis`` for a private Redis) and the dataset of
  ``bench/dataset.py`` (200 organizations by default), one process;
* **Cerbos** — the real PDP (``@cerbos/cerbos-linux-<arch>`` from npm,
  installed under ``bench/.peers/`` when absent) with the resource policy in
  ``bench/cerbos/policies/``, disk storage, gRPC on loopback;
* **null** — ``bench/null_server.py``: a ``grpc.aio`` server with gatehouse's
  protos, constant ``DECISION_ALLOW`` (the ceiling of the stock Python gRPC
  server; gatehouse serves from its own transport, ``gatehouse.transport``).

Before any timing it sends every request of the mix (single checks and
50-check batches) to gatehouse and to Cerbos and compares each decision with
the other server and with an independent model of the Coupler table; any
mismatch stops the run (exit status 1).

Then it runs ``bench/load.py`` (a separate client process, ``grpc.aio``) for
each target at each concurrency (64 and 1 by default), ``--rounds`` times,
interleaving the targets so that drift on the shared machine spreads over all
of them, and prints one table (medians over rounds) plus the ratios:

* gatehouse Check calls/s ÷ Cerbos CheckResources(1) calls/s, 64 in flight;
* gatehouse Check p50 ÷ null Check p50, 1 in flight;
* gatehouse CheckBulk(50) decisions/s ÷ Cerbos CheckResources(50) decisions/s, 64 in flight.

All three servers stay up for the whole run; the two not being measured are
idle (their CPU shows in the "other CPU" column, with everything else the
machine ran in the window). Before each measurement it waits (up to
``--quiet-wait`` seconds) for the machine to be idle.

    .venv/bin/python bench/compare.py            # full run (about 10 minutes)
    .venv/bin/python bench/compare.py --quick    # smoke run: 10 orgs, 3 s per target
    .venv/bin/python bench/compare.py --profile  # also py-spy the gatehouse server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _table import print_rows  # noqa: E402 - a sibling module of this script

from bench import dataset  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402

PEERS = ROOT / "bench" / ".peers"
CERBOS_POLICIES = ROOT / "bench" / "cerbos" / "policies"
CERBOS_VERSION = "0.55.0"
LOAD = ROOT / "bench" / "load.py"
SYSTEMS = ("gatehouse", "cerbos", "null")
KEYED = "keyed"
"""``--secure``: a second gatehouse with an API key on every call and Check audit sampled at 1 %."""
BENCH_KEY = "bench-" + "k" * 40
"""The key the keyed server's keys file holds (a benchmark's throwaway, by environment only)."""
KINDS = ("check", "bulk")


def progress(msg: str) -> None:
    print(f"… {msg}", file=sys.stderr, flush=True)


# -- servers -------------------------------------------------------------------


def cerbos_binary(version: str = CERBOS_VERSION) -> Path:
    """The Cerbos PDP binary from npm, installed under bench/.peers/ when absent."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower())
    if arch is None:
        raise SystemExit(f"no Cerbos npm package for {platform.machine()}")
    pkg = f"@cerbos/cerbos-linux-{arch}"
    pkg_dir = PEERS / "node_modules" / pkg
    binary = pkg_dir / f"cerbos-linux-{arch}"
    installed = None
    if (pkg_dir / "package.json").exists():
        installed = json.loads((pkg_dir / "package.json").read_text()).get("version")
    if not binary.exists() or installed != version:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to install the Cerbos PDP (npm install --prefix "
                             f"bench/.peers {pkg}@{version})")
        progress(f"installing {pkg}@{version} under {PEERS.relative_to(ROOT)}")
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(PEERS),
                        f"{pkg}@{version}"], check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
    if not binary.exists():
        raise SystemExit(f"npm installed {pkg} but {binary} is missing")
    return binary


@dataclass
class Server:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60
    address: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    tls_ca: Path | None = None
    """Set when the server speaks TLS: the CA its certificate chains to."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        self._t0 = time.perf_counter()

    def wait(self) -> None:
        assert self.proc is not None
        if self.tls_ca is None:
            wait_serving(self.address, self.proc, self.log_path,  # type: ignore[arg-type]
                         timeout=self.start_timeout)
        else:
            wait_serving_tls(self, self.tls_ca)
        self.started_s = time.perf_counter() - self._t0

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_serving_tls(server: Server, ca: Path) -> None:
    """The TLS twin of ``wait_serving``: a gRPC health check over TLS until it answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert server.proc is not None
    creds = grpc.ssl_channel_credentials(ca.read_bytes())
    deadline = time.monotonic() + server.start_timeout
    with grpc.secure_channel(server.address, creds, options=[
            ("grpc.ssl_target_name_override", "localhost")]) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise SystemExit(f"{server.name} exited:\n{server.log_path.read_text()[-3000:]}")
            try:
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    return  # answered over TLS: serving (Cerbos names its services)
            time.sleep(0.1)  # poll interval of a bounded wait
    raise SystemExit(f"{server.name} did not serve over TLS:\n"
                     f"{server.log_path.read_text()[-3000:]}")


def cerbos_config(directory: Path, grpc_port: int, http_port: int,
                  certs: Any = None) -> Path:
    path = directory / "cerbos.yaml"
    tls = ("  tls:\n"
           f"    cert: {json.dumps(str(certs.cert))}\n"
           f"    key: {json.dumps(str(certs.key))}\n") if certs is not None else ""
    path.write_text(
        "server:\n"
        f'  httpListenAddr: "127.0.0.1:{http_port}"\n'
        f'  grpcListenAddr: "127.0.0.1:{grpc_port}"\n'
        + tls +
        "storage:\n"
        "  driver: disk\n"
        "  disk:\n"
        f"    directory: {json.dumps(str(CERBOS_POLICIES))}\n"
        "    watchForChanges: false\n"
        "telemetry:\n"
        "  disabled: true\n"
    )
    return path


def keys_file(directory: Path) -> Path:
    """A keys file holding ``BENCH_KEY`` with the check scope."""
    import hashlib

    path = directory / "keys.yaml"
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    path.write_text(f"keys:\n  - name: bench\n    sha256: {digest}\n    scopes: [check]\n")
    return path


def make_servers(tmp: Path, data_path: Path, redis_url: str | None,
                 load_timeout: float, workers: int = 1, keyed: bool = False,
                 certs: Any = None) -> dict[str, Server]:
    venv_gatehouse = Path(sys.executable).parent / "gatehouse"
    gatehouse = ([str(venv_gatehouse)] if venv_gatehouse.exists()
                 else [sys.executable, "-m", "gatehouse.cli"])
    tls_args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)] if certs else []
    ca = certs.ca if certs else None
    servers: dict[str, Server] = {}
    for name in ("gatehouse", KEYED) if keyed else ("gatehouse",):
        port = free_port()
        args = [*gatehouse, "serve", "--listen", f"127.0.0.1:{port}", "--policy",
                "policies/coupler", "--data", str(data_path), "--no-watch", "--log-level",
                "warning", *tls_args]
        if redis_url:
            args += ["--redis-url", redis_url, "--redis-prefix", f"bench{port}"]
        if workers > 1:
            args += ["--workers", str(workers)]
        if name == KEYED:
            args += ["--api-keys", str(keys_file(tmp)), "--audit-log", str(tmp / "audit.log"),
                     "--audit-sample-checks", "0.01"]
        servers[name] = Server(name, args, tmp / f"{name}.log", {"PYTHONUNBUFFERED": "1"},
                               load_timeout, f"127.0.0.1:{port}", tls_ca=ca)
    port = free_port()
    null_tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)] if certs else []
    servers["null"] = Server("null", [sys.executable, str(ROOT / "bench" / "null_server.py"),
                                      "--listen", f"127.0.0.1:{port}", *null_tls],
                             tmp / "null.log", {}, 60, f"127.0.0.1:{port}", tls_ca=ca)
    port, http = free_port(), free_port()
    conf = cerbos_config(tmp, port, http, certs)
    servers["cerbos"] = Server("cerbos", [str(cerbos_binary()), "server", f"--config={conf}",
                                          "--log-level=warn"],
                               tmp / "cerbos.log", {"CERBOS_NO_TELEMETRY": "1"}, 60,
                               f"127.0.0.1:{port}", tls_ca=ca)
    return servers


# -- the client ------------------------------------------------------------------


def run_client(mode: str, target: str, server: Server, mix_path: Path,
               concurrency: int, duration: float = 0, warmup: float = 0) -> dict[str, Any]:
    args = [sys.executable, str(LOAD), mode, "--target", target, "--address", server.address,
            "--mix", str(mix_path), "--concurrency", str(concurrency)]
    if mode == "run":
        args += ["--duration", str(duration), "--warmup", str(warmup),
                 "--server-pid", str(server.pid)]
    if server.tls_ca is not None:
        args += ["--tls-ca", str(server.tls_ca)]
    env = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_API_KEY"}
    if server.name == KEYED:
        env["GATEHOUSE_API_KEY"] = BENCH_KEY
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=warmup + duration + 300)
    if proc.returncode != 0:
        raise SystemExit(f"load.py {mode} {target} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def machine_busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4] - v[7]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait until the machine is idle (< threshold cores busy over 1 s); seconds waited."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        busy = machine_busy() - b0
        waited = time.monotonic() - t0
        if busy < threshold or waited >= limit:
            if busy >= threshold:
                progress(f"machine still busy ({busy:.2f} cores used by others); measuring anyway")
            return waited


# -- verification ----------------------------------------------------------------


def verify(servers: dict[str, Server], mix_path: Path, mix: dict[str, Any]) -> dict[str, Any]:
    """Every request of the mix to gatehouse and Cerbos: decisions equal, and equal the model."""
    expected = {
        "check": [r["expected"] for r in mix["requests"]],
        "bulk": [[it["expected"] for it in b["items"]] for b in mix["batches"]],
    }
    labels = {
        "check": [f"{r['subject']} {r['action']} {r['flow']} ({r['category']})"
                  for r in mix["requests"]],
        "bulk": [[f"{b['subject']} {it['action']} {it['flow']} ({b['category']}, batch)"
                  for it in b["items"]] for b in mix["batches"]],
    }
    got: dict[str, dict[str, list[Any]]] = {}
    for system in ("gatehouse", "cerbos"):
        for kind in KINDS:
            progress(f"verifying {system}-{kind} on {len(expected[kind]):,} calls")
            res = run_client("verify", f"{system}-{kind}", servers[system], mix_path, 16)
            got.setdefault(system, {})[kind] = res["decisions"]
    report: dict[str, Any] = {"decisions": 0, "allowed": 0, "mismatches": []}
    for kind in KINDS:
        exp = expected[kind]
        if kind == "check":
            flat_exp = exp
            flat_gh = [d[0] for d in got["gatehouse"][kind]]
            flat_cb = [d[0] for d in got["cerbos"][kind]]
            flat_lbl = labels[kind]
        else:
            flat_exp = [x for b in exp for x in b]
            flat_gh = [x for b in got["gatehouse"][kind] for x in b]
            flat_cb = [x for b in got["cerbos"][kind] for x in b]
            flat_lbl = [x for b in labels[kind] for x in b]
        report["decisions"] += len(flat_exp)
        report["allowed"] += sum(flat_exp)
        for e, g, c, lbl in zip(flat_exp, flat_gh, flat_cb, flat_lbl, strict=True):
            if not (e == g == c):
                report["mismatches"].append(f"{lbl}: model {e}, gatehouse {g}, cerbos {c}")
    if KEYED in servers:  # the keyed server answers exactly as the open one (and is reachable)
        progress(f"verifying {KEYED}-check with its API key")
        keyed = run_client("verify", f"{KEYED}-check", servers[KEYED], mix_path, 16)
        for lbl, g, k in zip(labels["check"], got["gatehouse"]["check"], keyed["decisions"],
                             strict=True):
            if g != k:
                report["mismatches"].append(f"{lbl}: gatehouse {g}, keyed {k}")
    return report


# -- timing -----------------------------------------------------------------------


def runs_plan(concurrencies: Sequence[int], targets: Sequence[str]) -> list[tuple[str, int]]:
    return [(t, c) for c in concurrencies for kind in KINDS for s in (*SYSTEMS, KEYED)
            if (t := f"{s}-{kind}") in targets]


def measure(servers: dict[str, Server], mix_path: Path, plan: list[tuple[str, int]],
            rounds: int, duration: float, warmup: float, quiet_wait: float
            ) -> dict[tuple[str, int], list[dict[str, Any]]]:
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    total = rounds * len(plan)
    n = 0
    for r in range(rounds):
        for target, conc in plan:
            n += 1
            waited = wait_quiet(quiet_wait)
            server = servers[target.split("-")[0]]
            res = run_client("run", target, server, mix_path, conc, duration, warmup)
            res["quiet_wait_s"] = round(waited, 1)
            res["round"] = r + 1
            results.setdefault((target, conc), []).append(res)
            progress(f"[{n}/{total}] round {r + 1} {target} c={conc}: "
                     f"{res['calls_per_s']:,.0f} calls/s, {res['decisions_per_s']:,.0f} "
                     f"decisions/s, p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                     f"server {res['server_cpu_s']:.1f} s, client {res['client_cpu_s']:.1f} s "
                     f"CPU" + (f", {res['errors']} errors" if res["errors"] else ""))
    return results


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    other = [r["machine_busy_s"] - r["client_cpu_s"] - r["server_cpu_s"] for r in runs]
    return {
        "calls_per_s": med("calls_per_s"),
        "decisions_per_s": med("decisions_per_s"),
        "p50_ms": med("p50_ms"),
        "p90_ms": med("p90_ms"),
        "p99_ms": med("p99_ms"),
        "server_cpu_s": med("server_cpu_s"),
        "client_cpu_s": med("client_cpu_s"),
        "other_cpu_s": statistics.median(other),
        "steal_s": statistics.median(r["machine_steal_s"] for r in runs),
        "window_s": med("window_s"),
        "server_us_per_decision": statistics.median(
            1e6 * r["server_cpu_s"] / max(1, r["calls"] * r["decisions_per_call"])
            for r in runs),
        "calls_per_s_runs": [round(r["calls_per_s"]) for r in runs],
        "errors": sum(r["errors"] for r in runs),
    }


def ratios(summary: dict[tuple[str, int], dict[str, Any]],
           results: dict[tuple[str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def ratio(a: tuple[str, int], b: tuple[str, int], key: str) -> dict[str, Any] | None:
        if a not in summary or b not in summary:
            return None
        per_round = [ra[key] / rb[key] for ra, rb in zip(results[a], results[b], strict=True)]
        return {"value": summary[a][key] / summary[b][key],
                "per_round": [round(x, 3) for x in per_round]}

    out = []
    for name, a, b, key in (
        ("gatehouse Check calls/s / Cerbos CheckResources(1) calls/s, 64 in flight",
         ("gatehouse-check", 64), ("cerbos-check", 64), "calls_per_s"),
        ("gatehouse Check p50 / null server Check p50, 1 in flight",
         ("gatehouse-check", 1), ("null-check", 1), "p50_ms"),
        ("gatehouse CheckBulk(50) decisions/s / Cerbos CheckResources(50) decisions/s, "
         "64 in flight", ("gatehouse-bulk", 64), ("cerbos-bulk", 64), "decisions_per_s"),
        ("gatehouse with a key per call and 1 % Check audit / without, Check calls/s, "
         "64 in flight", ("keyed-check", 64), ("gatehouse-check", 64), "calls_per_s"),
        ("gatehouse with a key per call / Cerbos, Check calls/s, 64 in flight",
         ("keyed-check", 64), ("cerbos-check", 64), "calls_per_s"),
    ):
        r = ratio(a, b, key)
        if r is not None:
            out.append({"ratio": name, **r})
    return out


# -- profiling --------------------------------------------------------------------


def profile_gatehouse(server: Server, mix_path: Path, duration: float, warmup: float,
                      out_dir: Path) -> dict[str, Any]:
    """py-spy the gatehouse server while the client runs gatehouse-check at 64 in flight.

    ``--gil`` samples only the thread holding the GIL, so idle waits drop out and
    the shares are of the Python CPU time. Time spent in grpc's Cython/C code
    called from the event loop shows as ``Handle._run`` self time.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")
    raw = out_dir / "profile-gatehouse-check.txt"
    svg = out_dir / "profile-gatehouse-check.svg"
    client = subprocess.Popen(
        [sys.executable, str(LOAD), "run", "--target", "gatehouse-check", "--address",
         server.address, "--mix", str(mix_path), "--concurrency", "64", "--duration",
         str(duration + 2), "--warmup", str(warmup), "--server-pid", str(server.pid)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    for fmt, path in (("raw", raw), ("flamegraph", svg)):
        subprocess.run([py_spy, "record", "--pid", str(server.pid), "--rate", "200", "--gil",
                        "--duration", str(max(1, int(duration / 2))), "--format", fmt,
                        "--output", str(path)], check=True, timeout=duration + 60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client.communicate(timeout=duration + 60)
    return {"raw": str(raw), "svg": str(svg), "top": top_frames(raw)}


GATEHOUSE_FRAMES = ("AuthorizationServicer.Check ", "Decisions.check ", "validate_request ",
                    "check_input ", "check_response ", "check (check.py)", "consistency ")


def top_frames(raw: Path, n: int = 60) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in
                sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"self_pct": top(own), "inclusive_pct": top(incl), "samples": [("total", total)]}


# -- output -----------------------------------------------------------------------


def print_table(summary: dict[tuple[str, int], dict[str, Any]], rat: list[dict[str, Any]],
                meta: dict[str, Any]) -> None:
    print(f"gatehouse vs Cerbos {meta['cerbos_version']} vs null gRPC server — "
          f"{meta['orgs']} orgs, {meta['relationships']:,} relationships; "
          f"{meta['rounds']} round(s) x {meta['duration_s']:g} s (+{meta['warmup_s']:g} s "
          f"warm-up), medians; {meta['cpus']} CPUs, Python {meta['python']}, "
          f"gatehouse {meta['gatehouse_revision']}")
    head = ("target", "in flight", "calls/s", "decisions/s", "p50 ms", "p99 ms",
            "server CPU s", "client CPU s", "other CPU s", "steal s", "server µs/decision")
    rows = [head]
    for (target, conc), s in summary.items():
        rows.append((target, str(conc), f"{s['calls_per_s']:,.0f}", f"{s['decisions_per_s']:,.0f}",
                     f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['server_cpu_s']:.1f}",
                     f"{s['client_cpu_s']:.1f}", f"{max(0.0, s['other_cpu_s']):.1f}",
                     f"{s['steal_s']:.1f}", f"{s['server_us_per_decision']:,.0f}"))
    print_rows(rows)
    print()
    for r in rat:
        runs = ", ".join(f"{x:.2f}" for x in r["per_round"])
        print(f"{r['ratio']}: {r['value']:.2f}" + (f"  (rounds: {runs})"
                                                     if len(r["per_round"]) > 1 else ""))


def source_revision() -> str:
    """The commit the gatehouse server ran from (read-only git), "+dirty" if src/ has edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    dataset.add_shape_args(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10 orgs, 1 round, 3 s per target (+1 s warm-up)")
    p.add_argument("--duration", type=float, help="timed window per run, s (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up before each window, s (default 3)")
    p.add_argument("--rounds", type=int, help="rounds over all targets (default 3)")
    p.add_argument("--concurrency", default="64,1", help="calls in flight, comma-separated")
    p.add_argument("--targets", default=",".join(f"{s}-{k}" for s in SYSTEMS for k in KINDS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--quiet-wait", type=float, default=60,
                   help="wait up to this many s for an idle machine before each run")
    p.add_argument("--redis", action="store_true",
                   help="run gatehouse on a private Redis instead of the memory store")
    p.add_argument("--workers", type=int, default=1,
                   help="gatehouse server processes (above 1 implies --redis)")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, py-spy the gatehouse server under Check at 64 in flight")
    p.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    p.add_argument("--secure", action="store_true",
                   help="also run a gatehouse that requires an API key on every call and "
                   "audits 1 %% of Checks (targets keyed-check, keyed-bulk)")
    p.add_argument("--tls", action="store_true",
                   help="every server (gatehouse, Cerbos, null) serves TLS; clients verify it")
    args = p.parse_args(argv)
    if args.quick and not args.orgs:
        args.orgs = 10
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    targets = args.targets.split(",")
    if args.secure and args.targets == p.get_default("targets"):
        targets += [f"{KEYED}-{k}" for k in KINDS]
    bad = set(targets) - {f"{s}-{k}" for s in (*SYSTEMS, KEYED) for k in KINDS}
    if bad:
        p.error(f"unknown targets: {', '.join(sorted(bad))}")

    revision = source_revision()
    shape = dataset.shape_from_args(args)
    n_req, n_batch = (5_000, 200) if args.quick else (20_000, 1_000)
    data_path, mix_path = dataset.ensure(shape, n_req, n_batch, progress=progress)
    mix = dataset.load_mix(mix_path)
    relationships = len(json.loads(data_path.read_text())["relationships"])

    out_dir = dataset.DATA_DIR
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gh-compare-")))
        redis_url = None
        if args.redis or args.workers > 1:
            from tests.redis_server import RedisServer

            redis = RedisServer(tmp / "redis").start()
            stack.callback(redis.stop)
            redis_url = redis.url
        certs = None
        if args.tls:
            from bench import certs as certificates

            certs = certificates.make(tmp / "certs")
        servers = make_servers(tmp, data_path, redis_url,
                               load_timeout=max(120.0, relationships / 1000),
                               workers=args.workers, keyed=args.secure, certs=certs)
        for s in servers.values():
            stack.callback(s.stop)
        cerbos_version = subprocess.run([servers["cerbos"].args[0], "--version"],
                                        capture_output=True, text=True,
                                        timeout=30).stdout.split()[0]
        for s in servers.values():
            progress(f"starting {s.name} on {s.address}")
            s.start()
        for name in ("null", "cerbos", "gatehouse", *((KEYED,) if args.secure else ())):
            servers[name].wait()
            progress(f"{name} serving after {servers[name].started_s:.1f} s, "
                     f"RSS {servers[name].rss_mib():,.0f} MiB")

        report = verify(servers, mix_path, mix)
        progress(f"verified {report['decisions']:,} decisions "
                 f"({100 * report['allowed'] / report['decisions']:.1f} % allowed): "
                 f"{len(report['mismatches'])} mismatch(es)")
        if report["mismatches"]:
            for m in report["mismatches"][:20]:
                print(f"MISMATCH {m}", file=sys.stderr)
            print(f"{len(report['mismatches'])} decision(s) differ; not timing", file=sys.stderr)
            return 1

        plan = runs_plan(concurrencies, targets)
        results = measure(servers, mix_path, plan, rounds, duration, warmup, args.quiet_wait)
        summary = {key: summarize(results[key]) for key in plan}
        rat = ratios(summary, results)
        profile = None
        if args.profile:
            progress("profiling the gatehouse server with py-spy (not part of the table)")
            profile = profile_gatehouse(servers["gatehouse"], mix_path, max(duration, 10),
                                        warmup, out_dir)
        rss = {name: round(s.rss_mib()) for name, s in servers.items()}
        started = {name: round(s.started_s, 1) for name, s in servers.items()}

    meta = {
        "gatehouse_revision": revision,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "cerbos_version": cerbos_version,
        "orgs": shape.orgs, "seed": shape.seed, "relationships": relationships,
        "rounds": rounds, "duration_s": duration, "warmup_s": warmup,
        "store": "redis" if args.redis else "memory", "server_rss_mib": rss,
        "tls": args.tls, "secure": args.secure,
        "server_start_s": started, "verified_decisions": report["decisions"],
        "verified_allowed": report["allowed"],
    }
    out = {**meta, "results": [{"target": t, "concurrency": c, **summary[(t, c)],
                                "runs": results[(t, c)]} for t, c in plan],
           "ratios": rat, **({"profile": profile} if profile else {})}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved = out_dir / f"compare-{stamp}.json"
    saved.write_text(json.dumps(out, indent=1))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_table(summary, rat, meta)
        print(f"\nservers: start {started} s, RSS {rss} MiB; "
              f"verified {report['decisions']:,} decisions, 0 mismatches; full results "
              f"{saved.relative_to(ROOT)}")
        if profile:
            print(f"\npy-spy of gatehouse under Check at 64 in flight: {profile['svg']}")
            print("  share of the GIL-holding thread's samples, including callees:")
            for frame, pct in profile["top"]["inclusive_pct"]:
                if any(frame.startswith(f) for f in GATEHOUSE_FRAMES):
                    print(f"    {pct:5.1f} %  {frame}")
            print("  top by self time:")
            for frame, pct in profile["top"]["self_pct"][:12]:
                print(f"    {pct:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
