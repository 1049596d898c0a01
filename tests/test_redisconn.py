"""Redis URLs: every accepted form parses to what it says, every malformed one is refused
naming the part, and no message or redacted URL ever shows a password."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatehouse.errors import InvalidArgument, Unavailable
from gatehouse.redisconn import RedisOptions, RedisTarget, open_client, parse_url, redact
from gatehouse.redisscript import BatchedScript
from tests.redis_server import RedisServer

SECRET = "pa55-Secret"


class TestAcceptedForms:
    def test_plain_with_acl_user(self) -> None:
        """user:password@host:port/db gives the ACL user, its password, host, port and db."""
        t = parse_url(f"redis://gatehouse:{SECRET}@redis.internal:6380/3")
        assert (t.scheme, t.hosts, t.db, t.username, t.password) == \
            ("redis", (("redis.internal", 6380),), 3, "gatehouse", SECRET)
        assert not t.uses_tls and not t.sentinel

    def test_defaults_and_percent_encoding(self) -> None:
        """Port 6379 and db 0 by default; percent-encoded credentials are decoded."""
        t = parse_url("redis://:p%40ss%3Aword@localhost")
        assert (t.hosts, t.db, t.username, t.password) == \
            ((("localhost", 6379),), 0, None, "p@ss:word")

    def test_ipv6_host(self) -> None:
        """A bracketed IPv6 address with a port."""
        assert parse_url("redis://[::1]:7000/0").hosts == (("::1", 7000),)

    def test_tls_options(self, tmp_path: Path) -> None:
        """rediss:// takes the CA, a client certificate and the verification switches."""
        for name in ("ca.pem", "c.pem", "c.key"):
            (tmp_path / name).write_text("x")
        t = parse_url(f"rediss://h:6380/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
                      f"&ssl_certfile={tmp_path / 'c.pem'}&ssl_keyfile={tmp_path / 'c.key'}"
                      "&ssl_check_hostname=false")
        assert t.uses_tls
        assert t.tls == {"ssl_ca_certs": str(tmp_path / "ca.pem"),
                         "ssl_certfile": str(tmp_path / "c.pem"),
                         "ssl_keyfile": str(tmp_path / "c.key"),
                         "ssl_check_hostname": False}
        assert parse_url("rediss://h?ssl_cert_reqs=none").tls == \
            {"ssl_cert_reqs": "none", "ssl_check_hostname": False}

    def test_sentinel(self) -> None:
        """Several sentinels (default port 26379), the master name, a db, and the
        sentinels' own credentials."""
        t = parse_url(f"redis+sentinel://gh:{SECRET}@s1,s2:26400,[::1]/main/2"
                      "?sentinel_username=sen&sentinel_password=sp")
        assert t.sentinel and not t.uses_tls
        assert t.hosts == (("s1", 26379), ("s2", 26400), ("::1", 26379))
        assert (t.master, t.db, t.username, t.password) == ("main", 2, "gh", SECRET)
        assert (t.sentinel_username, t.sentinel_password) == ("sen", "sp")
        assert parse_url("rediss+sentinel://s1/main/").uses_tls

    def test_unix_socket(self) -> None:
        """unix:// takes a path and a db parameter."""
        t = parse_url("unix:///run/redis.sock?db=4")
        assert (t.path, t.db) == ("/run/redis.sock", 4)

    def test_repr_hides_passwords(self) -> None:
        """The parsed target's repr shows no password."""
        t = parse_url(f"redis+sentinel://u:{SECRET}@s1/m?sentinel_password={SECRET}x")
        assert SECRET not in repr(t)


MALFORMED = [
    ("localhost:6379", "no '://' found"),
    ("http://h", "unknown scheme 'http'"),
    ("redis://", "has no host"),
    ("redis://h:70000", "the port of the host ('70000')"),
    ("redis://h:abc/0", "the port of the host ('abc')"),
    ("redis://h/x", "the path must be the database number"),
    ("redis://h/0/1", "the path must be the database number"),
    ("redis://a,b", "for failover use redis+sentinel://"),
    ("redis://h?ssl_ca_certs=/x", "TLS options need a rediss://"),
    ("redis://h?socket_timeout=1", "unknown query parameter 'socket_timeout'"),
    ("rediss://h?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs: no readable file"),
    ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required, optional or none"),
    ("rediss://h?ssl_check_hostname=sure", "ssl_check_hostname must be true or false"),
    ("redis://h?sentinel_password=x", "sentinel options need a redis+sentinel:// URL"),
    ("redis+sentinel://s1:1,s2:x/m", "the port of sentinel 2 ('x')"),
    ("redis+sentinel://s1", "names the master after the hosts"),
    ("redis+sentinel://s1/m/x", "the database number (after the master name)"),
    ("redis+sentinel://s1/m/0/9", "path is /<master>[/<db>]"),
    ("unix://", "needs the socket's path"),
    ("unix:///s?db=1&db=2", "query parameter 'db' is given twice"),
    ("redis://[::1", "is not a URL"),
    ("redis://h/0#x", "contains '#'"),
    ("redis://h:\u00b2", "the port of the host"),
    ("redis+sentinel://s/m/\u00b2", "the database number (after the master name)"),
]


class TestMalformed:
    @pytest.mark.parametrize(("url", "message"), MALFORMED, ids=[u for u, _ in MALFORMED])
    def test_names_the_part(self, url: str, message: str) -> None:
        """The error says which part of the URL is wrong."""
        with pytest.raises(InvalidArgument) as info:
            parse_url(url)
        assert message in str(info.value)

    @pytest.mark.parametrize(("url", "message"), MALFORMED, ids=[u for u, _ in MALFORMED])
    def test_never_echoes_a_password(self, url: str, message: str) -> None:
        """With credentials added, the same error still shows no password."""
        scheme, sep, rest = url.partition("://")
        if not sep or not rest or rest.startswith("/"):
            return
        with pytest.raises(InvalidArgument) as info:
            parse_url(f"{scheme}://user:{SECRET}@{rest}")
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize("password", ["pa/ss-Secret", "pa?ss-Secret", "pa#ss-Secret"])
    def test_a_password_with_reserved_characters_is_refused_unquoted(
        self, password: str
    ) -> None:
        """An unencoded '/', '?' or '#' in a password is refused without showing any of it."""
        with pytest.raises(InvalidArgument) as info:
            parse_url(f"redis+sentinel://user:{password}@s1:26379/main")
        assert "ss-Secret" not in str(info.value) and password[:3] not in str(info.value)
        assert "percent-encode" in str(info.value)

    def test_client_certificate_needs_both_halves(self, tmp_path: Path) -> None:
        """A certificate without its key (or the reverse) is refused."""
        (tmp_path / "c.pem").write_text("x")
        with pytest.raises(InvalidArgument, match="both ssl_certfile and ssl_keyfile"):
            parse_url(f"rediss://h?ssl_certfile={tmp_path / 'c.pem'}")


class TestRedact:
    def test_masks_userinfo_and_password_parameters(self) -> None:
        """The userinfo password and any *password* parameter become ***; the rest stays."""
        url = (f"redis+sentinel://gh:{SECRET}@s1:26379,s2/main/0?sentinel_password={SECRET}"
               "&sentinel_username=sen")
        shown = redact(url)
        assert SECRET not in shown
        assert shown == ("redis+sentinel://gh:***@s1:26379,s2/main/0?sentinel_password=***"
                         "&sentinel_username=sen")
        assert redact(f"redis://:{SECRET}@h:1/0") == "redis://:***@h:1/0"
        assert redact("redis://h:1/0") == "redis://h:1/0"


class TestWaitReplicas:
    def test_unconfirmed_write_fails_unavailable_saying_it_was_applied(
        self, redis_server: RedisServer
    ) -> None:
        """With WAIT for a replica that does not exist, a write script runs on the primary
        but its caller hears UNAVAILABLE saying it may be lost; without WAIT it succeeds."""

        async def run() -> None:
            target = parse_url(redis_server.url)
            client = open_client(target, RedisOptions(pool_size=2))
            try:
                lua = "return run_items(1, function(key) return redis.call('INCR', key) end)"
                key = "waittest:counter"
                waiting = BatchedScript(client, lua, lambda: [], wait_replicas=1,
                                        wait_timeout=0.05)
                with pytest.raises(Unavailable, match="only 0 of 1 replica"):
                    await waiting(key)
                assert int(await client.get(key)) == 1  # applied on the primary
                assert await BatchedScript(client, lua, lambda: [])(key) == [2]
                await client.delete(key)
            finally:
                await client.aclose()

        asyncio.run(run())

    def test_pool_size_bounds_connections(self, redis_server: RedisServer) -> None:
        """Forty concurrent commands on a pool of two use at most two connections, and all
        of them complete (waiting for a free connection instead of failing)."""

        async def run() -> None:
            client = open_client(parse_url(redis_server.url), RedisOptions(pool_size=2))
            try:
                results = await asyncio.gather(*(client.execute_command("ECHO", str(i))
                                                 for i in range(40)))
                assert results == [str(i) for i in range(40)]
                pool = client.connection_pool
                assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
            finally:
                await client.aclose()

        asyncio.run(run())


def test_target_defaults() -> None:
    """A target built by hand has no TLS, no sentinel."""
    t = RedisTarget("redis", hosts=(("h", 1),))
    assert not t.uses_tls and not t.sentinel
