"""The plain-HTTP side door: ``/metrics``, ``/healthz`` and ``/readyz``.

Prometheus and load balancers speak HTTP/1, not gRPC, so these three
answer on their own port (``--metrics-listen``) from a small stdlib server
on daemon threads, away from the event loop and the gRPC poll thread: a
scrape never waits for a Check, and a slow scraper never holds one up.

It has no authentication (like any Prometheus target): listen on an address
only the monitoring network reaches. It is still built to shrug off junk:
one request per connection (HTTP/1.0), a socket timeout for clients that
send nothing, at most ``MAX_CONNECTIONS`` connections served at
once (more are closed unanswered), the stdlib's own limits on request line
and header sizes, and every failure inside a request logged and answered,
never raised into the server thread.
"""

from __future__ import annotations

import gzip
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

log = logging.getLogger("gatehouse.metrics")

MAX_CONNECTIONS = 32
"""Connections answered at once; a scraper and a few probes need far fewer."""
SOCKET_TIMEOUT = 5.0
"""Seconds a connection may stay silent (while sending its request) before it is dropped."""

Readiness = Callable[[], str | None]
"""None when the server is ready for traffic, else a one-line reason why not."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--metrics-listen must be HOST:PORT, e.g. 127.0.0.1:9464, "
                         f"not {text[:60]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-listen port must be a number from 0 to 65535, "
                         f"not {port[:20]!r}")
    return host, int(port)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 ready: Readiness) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self.ready = ready
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (getfqdn), a DNS query at start for
        # nothing: the handler never uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: close it unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics endpoint: a connection failed", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"
    # A request line too garbled to name a version still gets a status line back.
    default_request_version = "HTTP/1.0"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"
    timeout = SOCKET_TIMEOUT
    server_version = "gatehouse"
    sys_version = ""

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def _route(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/metrics":
                self._metrics(send_body)
            elif path == "/healthz":
                self._text(200, "ok", send_body)
            elif path == "/readyz":
                reason = self.server.ready()
                if reason is None:
                    self._text(200, "ready", send_body)
                else:
                    self._text(503, " ".join(reason.split())[:200], send_body)
            else:
                self._text(404, "not found: try /metrics, /healthz or /readyz", send_body)
        except (ConnectionError, TimeoutError):
            pass  # the client went away
        except Exception:
            log.exception("metrics endpoint failed", extra={"path": path[:100]})
            self._text(500, "internal error (see the server log)", send_body)

    def _metrics(self, send_body: bool) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        self._send(200, body, headers, send_body)

    def _text(self, code: int, text: str, send_body: bool) -> None:
        self._send(code, f"{text}\n".encode(), [("Content-Type", "text/plain; charset=utf-8")],
                   send_body)

    def _send(self, code: int, body: bytes, headers: list[tuple[str, str]],
              send_body: bool) -> None:
        self.send_response(code)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: probes every few seconds would drown the server's own lines."""


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``address``, served from daemon threads.

    ``/healthz`` answers 200 while the process can answer at all (a liveness
    probe); ``/readyz`` 200 only while ``ready()`` says so, else 503 with its
    reason (a readiness probe: take the process out of rotation, don't kill it).
    """

    def __init__(self, address: str, ready: Readiness,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._host, self._port = parse_listen(address)
        self._ready = ready
        self._registry = registry
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` as bound (the real port when asked for port 0)."""
        port = self._server.server_address[1] if self._server is not None else self._port
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{port}"

    def start(self) -> None:
        """Bind and serve; OSError (e.g. the port is taken) names the address."""
        try:
            self._server = _HTTPServer((self._host, self._port), self._registry, self._ready)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.address}: {exc.strerror or exc}"
                          ) from exc
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the socket (requests being answered finish on their own)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None


__all__ = ["MAX_CONNECTIONS", "ProbeServer", "Readiness", "parse_listen"]
