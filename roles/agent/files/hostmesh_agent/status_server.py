"""The agent's HTTP surface on the status port: readiness and merged metrics.

Two endpoints, one job each:
  GET /healthz/ready     200 when Envoy is ready and the agent is not stopping, else 503
  GET /stats/prometheus  Envoy's Prometheus stats followed by hostmesh_agent_* metrics

Built on socketserver rather than http.server, which would import http.client,
ssl and email (about 8 MiB of RSS) to answer two GETs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from typing import Callable, Optional, Tuple

log = logging.getLogger(__name__)

_MAX_HEAD = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def parse_request_head(head: bytes) -> Tuple[str, str]:
    """Method and path (query dropped) from a request's first line; ValueError if malformed."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("malformed request line")
    return parts[0], parts[1].split("?", 1)[0]


def render_response(code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "::" serves IPv4 too, whatever net.ipv6.bindv6only says.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class StatusServer:
    def __init__(
        self,
        address: str,
        port: int,
        readiness: Callable[[], Tuple[bool, str]],
        metrics: Callable[[], bytes],
        poll_s: float = 0.5,
    ) -> None:
        """``poll_s``: how often the serving thread looks for ``stop()`` (and how long that takes)."""
        self._readiness = readiness
        self._metrics = metrics
        self._poll_s = poll_s
        server_class = _Server6 if ":" in address else _Server
        self._server = server_class((address, port), self._handler_class())
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self._poll_s,), name="status-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(self, method: str, path: str) -> bytes:
        """The whole response for one request (pure given the two callbacks)."""
        if method not in ("GET", "HEAD"):
            return render_response(405, b"only GET\n")
        if path == "/healthz/ready":
            ok, reason = self._readiness()
            return render_response(200 if ok else 503, (reason + "\n").encode())
        if path == "/stats/prometheus":
            return render_response(200, self._metrics(), "text/plain; version=0.0.4; charset=utf-8")
        return render_response(404, b"not found; try /healthz/ready or /stats/prometheus\n")

    def _handler_class(self) -> type:
        server = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 5

            def handle(self) -> None:
                head = b""
                try:
                    while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                        line = self.rfile.readline(_MAX_HEAD)
                        if not line:
                            return
                        head += line
                        if line in (b"\r\n", b"\n"):
                            break
                    method, path = parse_request_head(head)
                    reply = server.respond(method, path)
                except ValueError:
                    reply = render_response(400, b"bad request\n")
                except OSError as exc:
                    log.debug("status request failed: %s", exc)
                    return
                if head.startswith(b"HEAD "):
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                with contextlib.suppress(OSError):
                    self.wfile.write(reply)

        return Handler
