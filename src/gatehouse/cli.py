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
from gatehouse.errors import (
    DataFileError,
    GatehouseError,
    KeysFileError,
    PolicyError,
)

if TYPE_CHECKING:
    import grpc

    from gatehouse.observe.audit import AuditSettings
    from gatehouse.transport.tls import TlsFiles

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
    from gatehouse.auth.exposure import refusal

    unsafe = refusal(str(effective["listen"]), effective["api_keys"] is not None,
                     effective["insecure_no_auth"])
    if unsafe is not None:
        print(f"gatehouse: {unsafe}", file=sys.stderr)
        return 2
    observing = _observe_problem(effective)
    if observing:
        print(f"gatehouse: {observing}", file=sys.stderr)
        return 2
    if fields["redis_pool_size"] == 0:  # 0 in the settings: unbounded
        fields["redis_pool_size"] = None
    fields["metrics_listen"] = _worker_listen(fields["metrics_listen"])
    config = ServerConfig(**fields, audit=_audit_settings(effective), tls=_tls_files(effective))
    if sys.stderr.isatty() or os.environ.get("GATEHOUSE_BANNER") == "1":
        _banner(config)
    try:
        if effective["workers"] > 1:
            from gatehouse.workers import run_workers

            if config.api_keys is not None:  # refuse a broken file once, not once per worker
                from gatehouse.auth.keys import load_keys

                load_keys(config.api_keys)
            # Each worker gets every setting; the parent alone loads the data file.
            argv, env = settings.worker_invocation(
                effective, {"workers": 1, "reuse_port": True, "data": None})
            return run_workers(config, effective["workers"], argv, env)
        asyncio.run(serve(config))
    except (PolicyError, DataFileError, KeysFileError) as exc:
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


def _tls_files(effective: settings.Effective) -> TlsFiles | None:
    """The server's TLS files (checked to pair up by the config rules); None: plaintext."""
    from gatehouse.transport.tls import TlsFiles

    if effective["tls_cert"] is None:
        return None
    return TlsFiles(effective["tls_cert"], effective["tls_key"], effective["tls_client_ca"])


def _observe_problem(effective: settings.Effective) -> str | None:
    """What is wrong with --metrics-listen / --otlp-endpoint, if anything."""
    from gatehouse.observe import check_otlp_endpoint, tracing_available
    from gatehouse.observe.http import parse_listen

    try:
        listen, workers = effective["metrics_listen"], effective["workers"]
        if listen:
            _, port = parse_listen(listen)
            if port and port + workers - 1 > 65535:
                return f"--metrics-listen port {port} + {workers - 1} (one per worker) " \
                       "is past 65535"
        if effective["otlp_endpoint"]:
            check_otlp_endpoint(effective["otlp_endpoint"])
    except ValueError as exc:
        return str(exc)
    if effective["otlp_endpoint"] and not tracing_available():
        return ("--otlp-endpoint needs the tracing extra: pip install 'gatehouse[tracing]' "
                "(opentelemetry-sdk and its OTLP/gRPC exporter)")
    return None


def _worker_listen(listen: str | None) -> str | None:
    """Worker N of ``--workers`` serves metrics on the given port + N (each process has its
    own index and counters, so each is scraped on its own)."""
    worker = os.environ.get("GATEHOUSE_WORKER", "")
    if not listen or not worker.isdigit():
        return listen or None
    host, _, port = listen.rpartition(":")
    return listen if port == "0" else f"{host}:{int(port) + int(worker)}"


def _banner(config: object) -> None:
    from gatehouse.server import ServerConfig

    assert isinstance(config, ServerConfig)
    if config.redis_url:
        from gatehouse.redisconn import redact

        store = f"redis store {redact(config.redis_url)}"
    else:
        store = "memory store (ephemeral)"
    tls = config.tls
    if tls is None:
        security = "-plaintext"
    else:
        security = "-cacert CA.pem" + (" -cert CLIENT.crt -key CLIENT.key" if tls.mutual else "")
    print(
        f"gatehouse on {config.listen} — policy {config.policy_dir}, data "
        f"{config.data_file or '(none)'}, {store}\n"
        "Try it (grpcurl):\n"
        f"  grpcurl {security} {config.listen} list\n"
        f"  grpcurl {security} -d '{{\"subject\":{{\"type\":\"user\",\"id\":\"uma\"}},"
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
        key = _api_key(args)
        credentials = _channel_credentials(args)
    except ValueError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 2
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] \
        if args.tls_server_name else []
    try:
        with (grpc.insecure_channel(args.address) if credentials is None else
              grpc.secure_channel(args.address, credentials, options)) as channel:
            resp = pb_grpc.AuthorizationServiceStub(channel).Check(
                req, timeout=args.timeout, metadata=metadata)
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


def _read_secret(flag: str, path: str, name_missing: bool = True) -> bytes:
    """The file's bytes; ValueError naming ``flag`` (and the path, unless it names no file
    and ``name_missing`` is False: a key given where its file belongs is not repeated)."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not name_missing:
            raise ValueError(f"{flag}: no such file (it names a file holding the key, "
                             "never the key itself)") from None
        raise ValueError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file, else GATEHOUSE_API_KEY; never taken from argv."""
    if args.api_key_file:
        raw = _read_secret("--api-key-file", args.api_key_file, name_missing=False)
        where = f"--api-key-file {args.api_key_file}"
        try:
            key = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{where}: the key must be printable ASCII") from None
    else:
        key = os.environ.get("GATEHOUSE_API_KEY", "").strip()
        where = "GATEHOUSE_API_KEY"
        if not key:
            return None
    if not key:
        raise ValueError(f"{where}: empty; it must hold the key")
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"{where}: the key must be one line of printable ASCII without spaces")
    return key


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel, or None for plaintext.

    TLS when a CA or client certificate is given, or when the server is not on
    loopback (then the system's CAs verify it unless --tls-ca names one);
    plaintext on loopback, or anywhere with --plaintext.
    """
    import grpc

    from gatehouse.auth.exposure import is_loopback

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key (env GATEHOUSE_TLS_CLIENT_CERT, "
                         "GATEHOUSE_TLS_CLIENT_KEY) go together: the client certificate and "
                         "its key")
    wants_tls = bool(args.tls_ca or args.tls_cert)
    if args.plaintext:
        if wants_tls:
            raise ValueError("--plaintext cannot be combined with --tls-ca, --tls-cert or "
                             "--tls-key")
        return None
    if not wants_tls and is_loopback(args.address):
        return None
    ca = _read_secret("--tls-ca", args.tls_ca) if args.tls_ca else None
    cert = _read_secret("--tls-cert", args.tls_cert) if args.tls_cert else None
    key = _read_secret("--tls-key", args.tls_key) if args.tls_key else None
    return grpc.ssl_channel_credentials(ca, key, cert)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _keys_new(args: argparse.Namespace) -> int:
    """A new key on stdout's first line, then the entry to add to the keys file."""
    from gatehouse.auth.keygen import entry_yaml, hash_key, new_key

    key = new_key()
    try:
        entry = entry_yaml(args.name, hash_key(key), _split(args.scopes) or [],
                           _split(args.organizations))
    except GatehouseError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 2
    print(key)
    print("# Above: the key, shown only this once; hand it to the caller as a secret.\n"
          "# Below: its entry for the keys file (under `keys:`); the file holds no key.")
    print(entry, end="")
    return 0


def _keys_hash(args: argparse.Namespace) -> int:
    """The sha256 of the key read from stdin (for a key made elsewhere)."""
    from gatehouse.auth.keygen import hash_key

    key = sys.stdin.readline().strip()
    if not key or " " in key:
        print("gatehouse: give the key on stdin (one line, no spaces)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


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

    # No abbreviations: "--api-key KEY" must be an error, not --api-key-file naming a
    # "file" that is the key (and then quoted in the error message).
    chk = sub.add_parser("check", help="ask a running server one Check (exit 0 allow, 1 deny, "
                         "2 error)", allow_abbrev=False)
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
    chk.add_argument("--api-key-file", default=os.environ.get("GATEHOUSE_API_KEY_FILE"),
                     help="file holding the API key, sent as 'authorization: Bearer <key>' "
                     "(env GATEHOUSE_API_KEY_FILE, or the key itself in GATEHOUSE_API_KEY; "
                     "never on the command line)")
    chk.add_argument("--tls-ca", default=os.environ.get("GATEHOUSE_TLS_CA"),
                     help="use TLS and verify the server with this PEM CA (env "
                     "GATEHOUSE_TLS_CA); without it, TLS to a non-loopback address uses the "
                     "system's CAs")
    chk.add_argument("--tls-cert", default=os.environ.get("GATEHOUSE_TLS_CLIENT_CERT"),
                     help="mTLS: present this PEM client certificate (env "
                     "GATEHOUSE_TLS_CLIENT_CERT); needs --tls-key")
    chk.add_argument("--tls-key", default=os.environ.get("GATEHOUSE_TLS_CLIENT_KEY"),
                     help="the client certificate's PEM private key (env "
                     "GATEHOUSE_TLS_CLIENT_KEY)")
    chk.add_argument("--tls-server-name", default=os.environ.get("GATEHOUSE_TLS_SERVER_NAME"),
                     help="the name the server certificate must carry, when it differs from "
                     "the address's host (env GATEHOUSE_TLS_SERVER_NAME)")
    chk.add_argument("--plaintext", action="store_true",
                     help="no TLS even to a non-loopback address (plaintext is the default on "
                     "loopback)")
    chk.set_defaults(func=_check)

    keys = sub.add_parser("keys", help="make API keys for the keys file")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    knew = ksub.add_parser("new", help="print a new random key (once) and its keys-file entry")
    knew.add_argument("name", help="the key's name, shown in logs instead of the key")
    knew.add_argument("--scopes", required=True,
                      help="comma-separated: check, read, write, admin")
    knew.add_argument("--organizations",
                      help="comma-separated organization ids the key is restricted to")
    knew.set_defaults(func=_keys_new)
    khash = ksub.add_parser("hash", help="read a key from stdin, print its sha256")
    khash.set_defaults(func=_keys_hash)

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


def _unrecognized(extras: Sequence[str]) -> str:
    """The error for arguments no command takes, naming options but no values: a value
    may be a secret typed where it does not belong (``--api-key KEY``)."""
    names = [e.split("=", 1)[0] for e in extras if e.startswith("-")]
    hidden = len(extras) - len(names) + sum("=" in e for e in extras if e.startswith("-"))
    parts = [" ".join(names)] if names else []
    if hidden:
        parts.append(f"{hidden} value(s), not shown")
    return "unrecognized arguments: " + " and ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(_unrecognized(extras))
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
