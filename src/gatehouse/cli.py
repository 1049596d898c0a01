"""The ``gatehouse`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gatehouse import config as settings
from gatehouse.errors import DataFileError, GatehouseError, PolicyError

if TYPE_CHECKING:
    from gatehouse.observe.audit import AuditSettings

DEFAULT_POLICY = "policies/coupler"
DEFAULT_DATA = "examples/coupler.data.yaml"


def _serve(args: argparse.Namespace) -> int:
    try:
        effective = settings.from_arguments(args, os.environ)
    except settings.ConfigError as exc:
        for problem in exc.problems:
            print(f"gatehouse: {problem}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(settings.render(effective))
        return 0

    from gatehouse import logs
    from gatehouse.server import ServerConfig, serve

    logs.configure(effective["log_level"])
    fields = effective.server_fields()
    # Left unset (not set to null), the embedded default serves its sample data.
    if (effective.sources["data"].kind == "default" and fields["policy_dir"] ==
            Path(DEFAULT_POLICY) and not fields["redis_url"] and Path(DEFAULT_DATA).exists()):
        fields["data_file"] = Path(DEFAULT_DATA)
    config = ServerConfig(**fields, audit=_audit_settings(effective))
    if sys.stderr.isatty() or os.environ.get("GATEHOUSE_BANNER") == "1":
        _banner(config)
    try:
        if effective["workers"] > 1:
            from gatehouse.workers import run_workers

            # Each worker gets every setting; the parent alone loads the data file.
            argv, env = settings.worker_invocation(
                effective, {"workers": 1, "reuse_port": True, "data": None})
            return run_workers(config, effective["workers"], argv, env)
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


def _audit_settings(effective: settings.Effective) -> AuditSettings | None:
    """The audit log settings; None when no audit log is kept."""
    from gatehouse.observe.audit import AuditSettings

    path = effective["audit_log"]
    if not path:
        return None
    worker = os.environ.get("GATEHOUSE_WORKER")
    if worker is not None and path != "-":
        path = f"{path}.worker{worker}"  # one writer per file: rotation is not shared
    return AuditSettings(path, effective["audit_sample_checks"], effective["audit_max_bytes"],
                         effective["audit_backups"])


def _banner(config: object) -> None:
    from gatehouse.server import ServerConfig

    assert isinstance(config, ServerConfig)
    if config.redis_url:
        from gatehouse.graph.redis import redact

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

    serve = sub.add_parser("serve", help="run the gRPC server",
                           description="Run the gRPC server. Every setting is a flag, an "
                           "environment variable and a config-file key (docs/configuration.md)"
                           "; a flag beats the environment, which beats the config file.")
    settings.add_arguments(serve)
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
