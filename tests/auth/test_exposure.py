"""Which listen addresses may serve without keys."""

from __future__ import annotations

import asyncio

import pytest

from gatehouse.auth.exposure import is_loopback
from gatehouse.errors import GatehouseError
from gatehouse.server import ServerConfig, serve


class TestLoopback:
    @pytest.mark.parametrize("listen", ["127.0.0.1:50051", "127.8.9.1:1", "[::1]:50051",
                                        "localhost:50051", "LOCALHOST:1", "unix:/tmp/g.sock"])
    def test_loopback_addresses(self, listen: str) -> None:
        """Loopback IPv4/IPv6, localhost and Unix sockets may serve anonymously."""
        assert is_loopback(listen)

    @pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", ":50051",
                                        "10.0.0.5:50051", "gatehouse.internal:50051",
                                        "localhost.evil.example:1", "[::ffff:10.0.0.1]:1"])
    def test_every_other_address_needs_keys(self, listen: str) -> None:
        """Wildcards, private and public addresses and host names are not loopback."""
        assert not is_loopback(listen)


class TestServeRefuses:
    def test_serve_itself_refuses_a_public_address_without_keys(self) -> None:
        """Called without the CLI, `serve` still refuses 0.0.0.0 without keys, before loading."""
        with pytest.raises(GatehouseError) as err:
            asyncio.run(serve(ServerConfig(listen="0.0.0.0:1")))
        assert "refusing to serve 0.0.0.0:1 without API keys" in str(err.value)
