"""Which listen addresses may serve without keys."""

from __future__ import annotations

import pytest

from gatehouse.auth.exposure import is_loopback


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
