"""Opening Redis: the URL forms gatehouse accepts, and the clients built from them.

One parser for every form, so a malformed URL fails at start-up with the part
named (never the password), and one place that decides how connections
behave:

- ``redis://[user[:password]@]host[:port][/db]`` — plain TCP, ACL credentials
  in the userinfo (percent-encode ``@``, ``:`` and ``/`` in them).
- ``rediss://…`` — the same over TLS. Query parameters (redis-py's names):
  ``ssl_ca_certs`` (CA bundle to verify the server), ``ssl_certfile`` and
  ``ssl_keyfile`` (a client certificate, for servers that ask for one),
  ``ssl_cert_reqs`` (``required``, the default; ``optional``; ``none``) and
  ``ssl_check_hostname`` (``true``, the default, or ``false``).
- ``unix:///path/to/redis.sock[?db=N]`` — a local socket.
- ``redis+sentinel://[user[:password]@]host[:port][,host[:port]…]/<master>[/db]``
  — ask these Sentinels (default port 26379) where the primary of ``<master>``
  is, and ask again whenever a connection to it fails, so a failover needs no
  restart. The userinfo is for the data nodes; the Sentinels' own credentials,
  when they have any, are the ``sentinel_username`` and ``sentinel_password``
  query parameters. ``rediss+sentinel://`` speaks TLS to both.

Every client gatehouse builds has retries turned off: a write script resent
after a dropped connection could apply twice, so failures surface as
``Unavailable`` and the caller (the follower, or the API client for an
idempotent call) decides whether to try again. With ``pool_size`` set each
pool opens at most that many connections, and a call that finds them all
busy waits (up to the socket timeout) instead of failing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from gatehouse.errors import InvalidArgument, quote

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
               "ssl_check_hostname")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
_FIELD = "redis url"


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How gatehouse's connections to Redis behave (the ``--redis-*`` flags)."""

    pool_size: int | None = 64
    """Most connections each pool opens (graph commands, changelog tail, usage);
    None: no bound."""
    socket_timeout: float = 10.0
    """Seconds a command may take before it fails (the changelog tail adds its
    one-second blocking read to this)."""
    connect_timeout: float = 5.0
    """Seconds to establish a connection (and to ask a Sentinel)."""
    wait_replicas: int = 0
    """After each batch of writes, WAIT until this many replicas hold it before
    answering; 0: answer once the primary has it."""
    wait_timeout: float = 1.0
    """Seconds that WAIT may take; a write confirmed by fewer replicas fails
    ``UNAVAILABLE`` (it is applied on the primary, and may be lost)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL. ``repr`` never shows a password."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    """(host, port) of the server, or of every Sentinel."""
    path: str = ""
    """The socket path of a ``unix://`` URL."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master: str = ""
    """The Sentinel master (service) name."""
    tls: dict[str, Any] = field(default_factory=dict)
    """redis-py ``ssl_*`` keyword arguments."""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")

    @property
    def uses_tls(self) -> bool:
        return self.scheme.startswith("rediss")


def _fail(reason: str) -> InvalidArgument:
    return InvalidArgument(_FIELD, reason)


def _host_port(text: str, default_port: int, which: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _fail(f"{which} {quote(text)} is not host:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":") if text.count(":") <= 1 else (text, "", "")
    if not host:
        raise _fail(f"{which} has no host name")
    if not port_text:
        return host, default_port
    if not _digits(port_text) or not 0 < int(port_text) < 65536:
        raise _fail(f"the port of {which} ({quote(port_text)}) is not a number "
                    "between 1 and 65535")
    return host, int(port_text)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9


def _db(text: str, where: str) -> int:
    if not _digits(text) or int(text) > 1_000_000:
        raise _fail(f"the database number ({where}) must be a small non-negative integer, "
                    f"not {quote(text)}")
    return int(text)


def _bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise _fail(f"query parameter {name} must be true or false, not {quote(value)}")


def parse_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; ``InvalidArgument`` names the part that is wrong
    and never quotes the userinfo or a password parameter."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _fail("must look like redis://host:6379/0 (no '://' found)")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(f"unknown scheme {quote(scheme)} (known: {', '.join(SCHEMES)})")
    # A password with an unencoded '/', '?' or '#' would otherwise end the host part early
    # and turn up in a "bad host" or "bad parameter" message; refuse without quoting.
    if "#" in rest:
        raise _fail("contains '#'; percent-encode it (%23), in a password too")
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0),
                        default=len(rest))
    if "@" in rest[authority_end:]:
        raise _fail("has an '@' after the host; if the user name or password contains "
                    "'/', '?' or '@', percent-encode them (%2F, %3F, %40)")
    try:
        # urlsplit only for the pieces it cannot get wrong (a multi-host netloc has no port).
        parts = urlsplit(f"x://{rest}")
    except ValueError:
        raise _fail("is not a URL (an unclosed '[' around an IPv6 address?)") from None
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise _fail(f"query parameter {quote(name)} is given twice")
        params[name] = value
    known = ["db"] if scheme == "unix" else []
    if scheme.startswith("rediss"):
        known += _TLS_PARAMS
    if scheme.endswith("+sentinel"):
        known += _SENTINEL_PARAMS
    for name in params:
        if name not in known:
            hint = (f"known here: {', '.join(known)}" if known else
                    "this scheme takes none")
            if name in _TLS_PARAMS and not scheme.startswith("rediss"):
                hint = "TLS options need a rediss:// (or rediss+sentinel://) URL"
            elif name in _SENTINEL_PARAMS:
                hint = "sentinel options need a redis+sentinel:// URL"
            raise _fail(f"unknown query parameter {quote(name)} ({hint})")
    tls: dict[str, Any] = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in params:
            if not os.path.isfile(params[name]):
                raise _fail(f"query parameter {name}: no readable file at "
                            f"{quote(params[name])}")
            tls[name] = params[name]
    if ("ssl_certfile" in tls) != ("ssl_keyfile" in tls):
        raise _fail("a client certificate needs both ssl_certfile and ssl_keyfile")
    if "ssl_cert_reqs" in params:
        reqs = params["ssl_cert_reqs"].lower()
        if reqs not in ("required", "optional", "none"):
            raise _fail(f"query parameter ssl_cert_reqs must be required, optional or none, "
                        f"not {quote(params['ssl_cert_reqs'])}")
        tls["ssl_cert_reqs"] = reqs
    if "ssl_check_hostname" in params:
        tls["ssl_check_hostname"] = _bool("ssl_check_hostname",
                                          params["ssl_check_hostname"])
    if tls.get("ssl_cert_reqs") == "none":
        tls.setdefault("ssl_check_hostname", False)
    path = unquote(parts.path)

    if scheme == "unix":
        if not path or path == "/":
            raise _fail("a unix:// URL needs the socket's path (unix:///run/redis.sock)")
        db = _db(params["db"], "the db query parameter") if "db" in params else 0
        return RedisTarget(scheme, path=path, db=db, username=username, password=password)

    if not hostlist:
        raise _fail("has no host (redis://host:6379/0)")
    segments = path.strip("/").split("/") if path.strip("/") else []
    if scheme.endswith("+sentinel"):
        hosts = tuple(_host_port(h, DEFAULT_SENTINEL_PORT, f"sentinel {i + 1}")
                      for i, h in enumerate(hostlist.split(",")))
        if not segments:
            raise _fail("a sentinel URL names the master after the hosts "
                        "(redis+sentinel://host:26379/mymaster/0)")
        if len(segments) > 2:
            raise _fail("a sentinel URL's path is /<master>[/<db>]")
        db = _db(segments[1], "after the master name") if len(segments) == 2 else 0
        return RedisTarget(
            scheme, hosts=hosts, db=db, username=username, password=password,
            master=segments[0], tls=tls,
            sentinel_username=params.get("sentinel_username") or None,
            sentinel_password=params.get("sentinel_password") or None)
    if "," in hostlist:
        raise _fail("names several hosts; for failover use redis+sentinel://")
    host = _host_port(hostlist, DEFAULT_PORT, "the host")
    if len(segments) > 1 or (segments and not _digits(segments[0])):
        raise _fail(f"the path must be the database number (/0), not {quote(path)}")
    db = _db(segments[0], "the path") if segments else 0
    return RedisTarget(scheme, hosts=(host,), db=db, username=username, password=password,
                       tls=tls)


def redact(url: str) -> str:
    """The URL without its passwords (userinfo and ``*password*`` parameters), for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError:
        return f"{scheme}://***"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    query = "&".join(
        f"{name}=***" if "password" in name.lower() else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((scheme, netloc, parts.path, query, parts.fragment))


def _connection_kwargs(target: RedisTarget, options: RedisOptions,
                       socket_timeout: float | None) -> dict[str, Any]:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    kwargs: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "health_check_interval": 15,
        "retry": Retry(NoBackoff(), 0),
    }
    if options.pool_size is not None:
        kwargs["max_connections"] = options.pool_size
        # How long a call waits for a busy pool (BlockingConnectionPool).
        kwargs["timeout"] = options.socket_timeout
    return kwargs


def open_client(target: RedisTarget, options: RedisOptions, *, blocking_reads: bool = False
                ) -> Any:
    """A ``redis.asyncio.Redis`` with its own pool for ``target``.

    ``blocking_reads``: the client runs blocking XREADs (one second), so its
    socket timeout is one second longer than ``options.socket_timeout``.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.connection import (
        BlockingConnectionPool,
        Connection,
        ConnectionPool,
        SSLConnection,
        UnixDomainSocketConnection,
    )

    timeout = options.socket_timeout + (1.0 if blocking_reads else 0.0)
    kwargs = _connection_kwargs(target, options, timeout)
    base: type[Any] = ConnectionPool if options.pool_size is None else BlockingConnectionPool
    if options.pool_size is None:
        kwargs.pop("timeout", None)
    if target.sentinel:
        return _open_sentinel(target, options, kwargs, base)
    if target.scheme == "unix":
        pool = base(connection_class=UnixDomainSocketConnection, path=target.path, **kwargs)
    elif target.uses_tls:
        host, port = target.hosts[0]
        pool = base(connection_class=SSLConnection, host=host, port=port, **kwargs,
                    **target.tls)
    else:
        host, port = target.hosts[0]
        pool = base(connection_class=Connection, host=host, port=port, **kwargs)
    return aioredis.Redis.from_pool(pool)


def _open_sentinel(target: RedisTarget, options: RedisOptions, kwargs: dict[str, Any],
                   base: type[Any]) -> Any:
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
    from redis.backoff import NoBackoff

    class Pool(SentinelConnectionPool, base):  # type: ignore[misc]
        """Asks the Sentinels for the primary on every new connection; closing it
        closes the connections to the Sentinels too."""

        async def aclose(self) -> None:
            await super().aclose()
            await self.sentinel_manager.aclose()

    sentinel_kwargs: dict[str, Any] = {
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        "socket_timeout": options.connect_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.uses_tls:
        sentinel_kwargs.update(ssl=True, **target.tls)
        kwargs.update(ssl=True, **target.tls)
    manager = Sentinel(list(target.hosts),  # type: ignore[no-untyped-call]
                       sentinel_kwargs=sentinel_kwargs)
    return manager.master_for(target.master, connection_pool_class=Pool, **kwargs)
