"""Every setting of ``gatehouse serve``: the one table flags, environment variables,
config-file keys, ``--print-config`` and docs/configuration.md are derived from.

To add a setting, add one ``Setting`` to ``SETTINGS`` (and the field to
``ServerConfig`` when the server needs it); see the ``gatehouse.config``
docstring for the exact shape. Checks that involve several settings go in
``RULES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gatehouse.config.kinds import (
    Address,
    Boolean,
    Choice,
    FilePath,
    Integer,
    Number,
    RedisUrl,
    Text,
    Url,
)
from gatehouse.config.setting import Rule, Setting

SETTINGS: tuple[Setting, ...] = (
    Setting("listen", Address(), "127.0.0.1:50051",
            "Address the gRPC server listens on. Port 0 picks a free port."),
    Setting("policy", FilePath(metavar="DIR"), Path("policies/coupler"),
            "Policy set folder to load.", field="policy_dir"),
    Setting("data", FilePath(metavar="FILE"), None,
            "Bootstrap data file loaded at start (idempotent, all or nothing). Left unset "
            "with the default policy and the memory store, examples/coupler.data.yaml when "
            "present; set it to null for none.", field="data_file"),
    Setting("redis_url", RedisUrl(), None,
            "Keep the graph in Redis: redis://[user:password@]host:6379/0, rediss://... (TLS), "
            "unix:///path.sock or redis+sentinel://host:26379[,host:26379]/master[/db] "
            "(docs/redis-production.md); unset, the ephemeral memory store. A password in it "
            "is masked when printed."),
    Setting("redis_prefix", Text(max_len=64, pattern=r"[A-Za-z0-9_.:{}-]+",
                                 shape="letters, digits and _ . : - { }"), "gh",
            "Prefix of every Redis key, so several deployments can share one Redis."),
    Setting("redis_pool_size", Integer(0, 10_000), 64,
            "Most connections each Redis pool opens (graph commands, changelog tail, usage: up "
            "to 3x this per process); a call that finds them all busy waits up to the socket "
            "timeout; 0: unbounded."),
    Setting("redis_socket_timeout", Number(0, 3600, low_inclusive=False, metavar="SECONDS"),
            10.0, "Seconds a Redis command may take."),
    Setting("redis_connect_timeout", Number(0, 3600, low_inclusive=False, metavar="SECONDS"),
            5.0, "Seconds to connect to Redis or a Sentinel."),
    Setting("redis_wait_replicas", Integer(0, 100), 0,
            "Acknowledge a write only once this many replicas hold it (Redis WAIT), so it "
            "survives a failover (docs/redis-production.md)."),
    Setting("redis_wait_timeout", Number(0, 3600, low_inclusive=False, metavar="SECONDS"), 1.0,
            "Seconds to wait for those replicas; a write they do not confirm in time fails "
            "UNAVAILABLE."),
    Setting("usage_dedup_days", Number(0, 3650, low_inclusive=False, metavar="DAYS"), 35.0,
            "How long a RecordUsage event id is remembered, so a retried event never counts "
            "twice."),
    Setting("workers", Integer(1, 64), 1,
            "Server processes sharing the port (SO_REUSEPORT), each with its own index; "
            "above 1 needs redis_url and a fixed port.", field=None),
    Setting("reuse_port", Boolean(), False,
            "Set SO_REUSEPORT so several processes can share the port."),
    Setting("transport", Choice(("auto", "core", "aio")), "auto",
            "gRPC server: core (grpc core driven directly; Check answered without an "
            "event-loop turn), aio (the public grpc.aio server) or auto (core when this grpcio "
            "is one it was tested with and its start-up self-test passes, else aio; the log "
            "says which and why)."),
    Setting("watch_policy", Boolean(), True,
            "Reload the policy when a file in its folder changes (a broken edit is logged "
            "and the last good policy keeps serving).", aliases=("--no-watch",)),
    Setting("grace_seconds", Number(0, 300, metavar="SECONDS"), 5.0,
            "On SIGTERM/SIGINT, how long calls in flight may finish before they are "
            "cancelled."),
    Setting("log_level", Choice(("debug", "info", "warning", "error")), "info",
            "Least severe log level written (JSON lines on stderr).", field=None),
    Setting("metrics_listen", Address(), None,
            "HOST:PORT serving Prometheus /metrics and the /healthz and /readyz probes over "
            "plain HTTP (docs/observability.md); unset, off. With workers above 1, worker N "
            "uses PORT+N."),
    Setting("otlp_endpoint", Url(schemes=("http", "https")), None,
            "Send OpenTelemetry trace spans to this OTLP/gRPC receiver, http://HOST:4317 or "
            "https://HOST:4317; unset, off. Needs the gatehouse[tracing] extra."),
    Setting("audit_log", Text(max_len=4096, metavar="PATH"), None,
            "Write the decision audit log (one JSON line per decision or write, "
            "docs/audit.md) to this file, or - for standard output; unset, none. With "
            "workers above 1, each worker writes PATH.worker<N>.", field=None),
    Setting("audit_sample_checks", Number(0, 1, metavar="SHARE"), 1.0,
            "Share of Check, CheckBulk and ListAccessible calls the audit log records; "
            "writes and tenancy operations are always recorded.", field=None),
    Setting("audit_max_bytes", Integer(0, 1 << 40, metavar="BYTES"), 100 << 20,
            "Rotate the audit file before it grows past this many bytes; 0: never.",
            field=None),
    Setting("audit_backups", Integer(0, 1000), 5,
            "Rotated audit files kept (PATH.1 the newest).", field=None),
    Setting("api_keys", FilePath(metavar="FILE"), None,
            "Keys file: who may call, with which scopes and organizations (docs/auth.md; "
            "reloaded when it changes). Unset, only a loopback listen address is served, to "
            "anonymous callers with every scope."),
    Setting("insecure_no_auth", Boolean(), False,
            "Serve without keys on a non-loopback address: every caller gets every scope."),
    Setting("tls_cert", FilePath(metavar="FILE"), None,
            "Serve TLS with this PEM certificate chain (needs tls_key); reloaded when the "
            "file changes (docs/tls.md).", field=None),
    Setting("tls_key", FilePath(metavar="FILE"), None,
            "The unencrypted PEM private key of tls_cert.", field=None),
    Setting("tls_client_ca", FilePath(metavar="FILE"), None,
            "mTLS: require client certificates signed by this PEM CA (needs tls_cert).",
            field=None),
)


COMPOSED: Mapping[str, tuple[str, ...]] = {
    "audit": ("audit_log", "audit_sample_checks", "audit_max_bytes", "audit_backups"),
    "tls": ("tls_cert", "tls_key", "tls_client_ca"),
}
"""``ServerConfig`` fields built by the ``serve`` command from several settings (each of
those settings has ``field=None``): field -> the settings it is made of."""


def _workers_need_redis(v: Mapping[str, Any]) -> tuple[str, str] | None:
    if v["workers"] > 1 and not v["redis_url"]:
        return ("workers", "above 1 needs a shared store (Redis: set redis_url); the memory "
                "store holds one process's data, so run with workers 1")
    return None


def _workers_need_a_fixed_port(v: Mapping[str, Any]) -> tuple[str, str] | None:
    if v["workers"] > 1 and str(v["listen"]).rsplit(":", 1)[-1] == "0":
        return ("workers", "above 1 needs a fixed port to share, not :0 (set listen)")
    return None


def _wait_needs_redis(v: Mapping[str, Any]) -> tuple[str, str] | None:
    if v["redis_wait_replicas"] and not v["redis_url"]:
        return ("redis_wait_replicas", "needs redis_url (replicas are Redis's)")
    return None


def _tls_pairs(v: Mapping[str, Any]) -> tuple[str, str] | None:
    if v["tls_cert"] and not v["tls_key"]:
        return ("tls_cert", "needs tls_key (--tls-key, env GATEHOUSE_TLS_KEY): the "
                "certificate's private key")
    if v["tls_key"] and not v["tls_cert"]:
        return ("tls_key", "needs tls_cert (--tls-cert, env GATEHOUSE_TLS_CERT): the server "
                "certificate")
    if v["tls_client_ca"] and not v["tls_cert"]:
        return ("tls_client_ca", "needs tls_cert and tls_key: mTLS is TLS with client "
                "certificates")
    return None


RULES: tuple[Rule, ...] = (_workers_need_redis, _workers_need_a_fixed_port, _tls_pairs,
                           _wait_needs_redis)
