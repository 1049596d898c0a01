"""The ``gatehouse`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gatehouse.errors import DataFileError, GatehouseError, InvalidArgument, PolicyError, quote

DEFAULT_POLICY = "policies/coupler"
DEFAULT_DATA = "examples/coupler.data.yaml"


def _serve(args: argparse.Namespace) -> int:
    from gatehouse import logs
    from gatehouse.server import ServerConfig, serve

    logs.configure(args.log_level)
    if not 0 < args.usage_dedup_days <= 3650:
        print("gatehouse: --usage-dedup-days must be between 0 and 3650", file=sys.stderr)
        return 2
    if args.workers != 1 and not args.redis_url:
        print("gatehouse: --workers above 1 needs a shared store (Redis); the memory store "
              "holds one process's data, so run with --workers 1", file=sys.stderr)
        return 2
    if args.workers < 1 or args.workers > 64:
        print("gatehouse: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    if args.workers > 1 and args.listen.rsplit(":", 1)[-1] == "0":
        print("gatehouse: --workers above 1 needs a fixed port to share, not :0",
              file=sys.stderr)
        return 2
    if args.transport not in ("auto", "core", "aio"):
        print(f"gatehouse: --transport (or GATEHOUSE_TRANSPORT) must be auto, core or aio, "
              f"not {quote(args.transport)}", file=sys.stderr)
        return 2
    problem = _check_redis(args)
    if problem:
        print(f"gatehouse: {problem}", file=sys.stderr)
        return 2
    data = args.data
    if (data is None and args.policy == DEFAULT_POLICY and not args.redis_url
            and Path(DEFAULT_DATA).exists()):
        data = DEFAULT_DATA
    config = ServerConfig(
        listen=args.listen,
        policy_dir=Path(args.policy),
        data_file=Path(data) if data else None,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        watch_policy=not args.no_watch,
        reuse_port=args.reuse_port,
        usage_dedup_days=args.usage_dedup_days,
        transport=args.transport,
        redis_pool_size=args.redis_pool_size or None,
        redis_socket_timeout=args.redis_socket_timeout,
        redis_connect_timeout=args.redis_connect_timeout,
        redis_wait_replicas=args.redis_wait_replicas,
        redis_wait_timeout=args.redis_wait_timeout,
    )
    if sys.stderr.isatty() or os.environ.get("GATEHOUSE_BANNER") == "1":
        _banner(config)
    try:
        if args.workers > 1:
            from gatehouse.workers import run_workers

            # The Redis URL (it may hold a password) goes by environment, not argv.
            child = ["--listen", args.listen, "--policy", args.policy,
                     "--redis-prefix", args.redis_prefix, "--reuse-port",
                     "--log-level", args.log_level,
                     "--usage-dedup-days", str(args.usage_dedup_days),
                     "--transport", args.transport,
                     "--redis-pool-size", str(args.redis_pool_size),
                     "--redis-socket-timeout", str(args.redis_socket_timeout),
                     "--redis-connect-timeout", str(args.redis_connect_timeout),
                     "--redis-wait-replicas", str(args.redis_wait_replicas),
                     "--redis-wait-timeout", str(args.redis_wait_timeout)]
            if args.no_watch:
                child.append("--no-watch")
            return run_workers(config, args.workers, child)
        asyncio.run(serve(config))
    except (PolicyError, DataFileError) as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 1
    except (OSError, GatehouseError) as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _check_redis(args: argparse.Namespace) -> str | None:
    """What is wrong with the --redis-* settings, or None (the URL is parsed here so that
    a malformed one fails before anything starts, naming the part, never the password)."""
    if not 0 <= args.redis_pool_size <= 10_000:
        return "--redis-pool-size must be between 0 (unbounded) and 10000"
    for flag, value in (("--redis-socket-timeout", args.redis_socket_timeout),
                        ("--redis-connect-timeout", args.redis_connect_timeout),
                        ("--redis-wait-timeout", args.redis_wait_timeout)):
        if not 0 < value <= 3600:
            return f"{flag} must be above 0 and at most 3600 seconds"
    if not 0 <= args.redis_wait_replicas <= 100:
        return "--redis-wait-replicas must be between 0 and 100"
    if args.redis_url:
        from gatehouse.redisconn import parse_url

        try:
            parse_url(args.redis_url)
        except InvalidArgument as exc:
            return f"--redis-url (or GATEHOUSE_REDIS_URL): {exc.reason}"
    elif args.redis_wait_replicas:
        return "--redis-wait-replicas needs --redis-url"
    return None


def _banner(config: object) -> None:
    from gatehouse.server import ServerConfig

    assert isinstance(config, ServerConfig)
    if config.redis_url:
        from gatehouse.redisconn import redact

        store = f"redis store {redact(config.redis_url)}"
    else:
        store = "memory store (ephemeral)"
    print(
        f"gatehouse on {config.listen} — policy {config.policy_dir}, data "
        f"{config.data_file or '(none)'}, {store}\n"
        "Try it (grpcurl):\n"
        f"  grpcurl -plaintext {config.listen} list\n"
        "  grpcurl -plaintext -d '{\"subject\":{\"type\":\"user\",\"id\":\"uma\"},"
        "\"action\":\"delete\","
        "\"resource\":{\"type\":\"data_flow\",\"id\":\"acme-sales-pipeline\"}}' \\\n"
        f"    {config.listen} gatehouse.v1.AuthorizationService/Check\n",
        file=sys.stderr,
    )


def _validate(args: argparse.Namespace) -> int:
    from gatehouse.policy.loader import load_policy

    try:
        policy = load_policy(args.dir)
    except PolicyError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{args.dir}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    rules = sum(len(t.grants) + len(t.denies) for a in policy.tables.values()
                for t in a.values())
    print(f"{args.dir}: ok — {len(policy.types)} types, {policy.version}, "
          f"{rules} (type, action, rule) entries")
    return 0


def _test(args: argparse.Namespace) -> int:
    from gatehouse.policytest import run

    results = run(args.dir)
    for p in results.problems:
        print(p, file=sys.stderr)
    failed = [o for o in results.outcomes if not o.passed]
    for o in results.outcomes:
        if not o.passed or args.verbose:
            mark = "ok  " if o.passed else "FAIL"
            print(f"{mark} {o.case.id}" + ("" if o.passed else f"\n      {o.detail}"))
    passed = len(results.outcomes) - len(failed)
    counts = results.counts()
    if counts:
        print("cases: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    print(f"{passed} passed, {len(failed)} failed" +
          (f", {len(results.problems)} problem(s)" if results.problems else ""))
    return 0 if results.ok else 1


def _check(args: argparse.Namespace) -> int:
    """One Check against a running server: 0 allow, 1 deny, 2 the call failed."""
    import json

    import grpc

    from gatehouse.v1 import authorization_pb2 as pb
    from gatehouse.v1 import authorization_pb2_grpc as pb_grpc

    refs = []
    for name, text in (("subject", args.subject), ("resource", args.resource)):
        type_, sep, id_ = text.partition(":")
        if not sep or not type_ or not id_:
            print(f"gatehouse: {name} must be type:id, not {text!r}", file=sys.stderr)
            return 2
        refs.append(pb.ObjectReference(type=type_, id=id_))
    req = pb.CheckRequest(subject=refs[0], action=args.action, resource=refs[1],
                          explain=args.explain)
    if args.context:
        try:
            req.context.update(json.loads(args.context))
        except (ValueError, TypeError, AttributeError) as exc:
            print(f"gatehouse: --context must be a JSON object: {exc}", file=sys.stderr)
            return 2
    if args.at:
        req.consistency.at_least_as_fresh = args.at
    elif args.fully_consistent:
        req.consistency.fully_consistent = True
    try:
        with grpc.insecure_channel(args.address) as channel:
            resp = pb_grpc.AuthorizationServiceStub(channel).Check(req, timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"gatehouse: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    allowed = resp.decision == pb.DECISION_ALLOW
    print(f"{'ALLOW' if allowed else 'DENY'}  {args.subject} {args.action} {args.resource}  "
          f"(revision {resp.revision}, policy {resp.policy_version})")
    if args.explain:
        print(f"why: {resp.explanation.summary}")
        trace = list(resp.explanation.trace)
        for i, line in enumerate(trace):
            print(f"  {'└─' if i == len(trace) - 1 else '├─'} {line}")
    return 0 if allowed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Tenancy and authorization "
                                     "service: permission checks over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", default=os.environ.get("GATEHOUSE_LISTEN", "127.0.0.1:50051"),
                       help="host:port to listen on (env GATEHOUSE_LISTEN)")
    serve.add_argument("--policy", default=os.environ.get("GATEHOUSE_POLICY", DEFAULT_POLICY),
                       help="policy set folder (env GATEHOUSE_POLICY)")
    serve.add_argument("--data", default=os.environ.get("GATEHOUSE_DATA"),
                       help="bootstrap data file to load at start (env GATEHOUSE_DATA); with "
                       f"the default policy, {DEFAULT_DATA} when present")
    serve.add_argument("--redis-url", default=os.environ.get("GATEHOUSE_REDIS_URL"),
                       help="store the graph in Redis: redis://[user:password@]host:6379/0, "
                       "rediss://... (TLS), unix:///path.sock or "
                       "redis+sentinel://host:26379[,host:26379]/master[/db] "
                       "(docs/redis-production.md) (env GATEHOUSE_REDIS_URL); without it, "
                       "the ephemeral memory store")
    serve.add_argument("--redis-prefix", default=os.environ.get("GATEHOUSE_REDIS_PREFIX", "gh"),
                       help="key prefix in Redis (env GATEHOUSE_REDIS_PREFIX)")
    # Production Redis: connections and durability (docs/redis-production.md).
    serve.add_argument("--redis-pool-size", type=int,
                       default=int(os.environ.get("GATEHOUSE_REDIS_POOL_SIZE", "64")),
                       help="most connections each Redis pool opens (graph commands, changelog "
                       "tail, usage: up to 3x this per process); a call that finds them all "
                       "busy waits up to the socket timeout; 0: unbounded (env "
                       "GATEHOUSE_REDIS_POOL_SIZE; default 64)")
    serve.add_argument("--redis-socket-timeout", type=float,
                       default=float(os.environ.get("GATEHOUSE_REDIS_SOCKET_TIMEOUT", "10")),
                       help="seconds a Redis command may take (env "
                       "GATEHOUSE_REDIS_SOCKET_TIMEOUT; default 10)")
    serve.add_argument("--redis-connect-timeout", type=float,
                       default=float(os.environ.get("GATEHOUSE_REDIS_CONNECT_TIMEOUT", "5")),
                       help="seconds to connect to Redis or a Sentinel (env "
                       "GATEHOUSE_REDIS_CONNECT_TIMEOUT; default 5)")
    serve.add_argument("--redis-wait-replicas", type=int,
                       default=int(os.environ.get("GATEHOUSE_REDIS_WAIT_REPLICAS", "0")),
                       help="acknowledge a write only once this many replicas hold it (Redis "
                       "WAIT), so it survives a failover (env GATEHOUSE_REDIS_WAIT_REPLICAS; "
                       "default 0)")
    serve.add_argument("--redis-wait-timeout", type=float,
                       default=float(os.environ.get("GATEHOUSE_REDIS_WAIT_TIMEOUT", "1")),
                       help="seconds to wait for those replicas; a write they do not confirm "
                       "in time fails UNAVAILABLE (env GATEHOUSE_REDIS_WAIT_TIMEOUT; default 1)")
    serve.add_argument("--usage-dedup-days", type=float,
                       default=float(os.environ.get("GATEHOUSE_USAGE_DEDUP_DAYS", "35")),
                       help="how long a RecordUsage event id is remembered, so a retry never "
                       "counts twice (env GATEHOUSE_USAGE_DEDUP_DAYS; default 35)")
    serve.add_argument("--reuse-port", action="store_true",
                       help="set SO_REUSEPORT so several processes can share the port")
    serve.add_argument("--workers", type=int,
                       default=int(os.environ.get("GATEHOUSE_WORKERS", "1")),
                       help="server processes sharing the port (SO_REUSEPORT), each with its "
                       "own index; above 1 needs --redis-url (env GATEHOUSE_WORKERS)")
    serve.add_argument("--transport", default=os.environ.get("GATEHOUSE_TRANSPORT", "auto"),
                       help="gRPC server: core (grpc core driven directly; Check answered "
                       "without an event-loop turn), aio (the public grpc.aio server) or auto "
                       "(core when this grpcio is one it was tested with and its start-up "
                       "self-test passes, else aio; the log says which and why) (env "
                       "GATEHOUSE_TRANSPORT; default auto)")
    serve.add_argument("--no-watch", action="store_true", help="do not hot-reload the policy")
    serve.add_argument("--log-level", default=os.environ.get("GATEHOUSE_LOG_LEVEL", "info"))
    serve.set_defaults(func=_serve)

    chk = sub.add_parser("check", help="ask a running server one Check (exit 0 allow, 1 deny, "
                         "2 error)")
    chk.add_argument("subject", help="type:id, e.g. user:uma")
    chk.add_argument("action")
    chk.add_argument("resource", help="type:id, e.g. data_flow:f1")
    chk.add_argument("--explain", action="store_true", help="print why, as a tree")
    chk.add_argument("--address", default=os.environ.get("GATEHOUSE_ADDRESS", "127.0.0.1:50051"),
                     help="host:port of the server (env GATEHOUSE_ADDRESS)")
    chk.add_argument("--context", help="request context as a JSON object")
    chk.add_argument("--at", help="answer at least as fresh as this revision")
    chk.add_argument("--fully-consistent", action="store_true",
                     help="catch up with the store first")
    chk.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    chk.set_defaults(func=_check)

    policy = sub.add_parser("policy", help="validate or test a policy set")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    val = psub.add_parser("validate", help="compile a policy set and report every problem")
    val.add_argument("dir")
    val.set_defaults(func=_validate)
    tst = psub.add_parser("test", help="run the policy set's *_test.yaml suites")
    tst.add_argument("dir")
    tst.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    tst.set_defaults(func=_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
