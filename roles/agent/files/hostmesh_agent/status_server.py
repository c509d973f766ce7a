"""The agent's HTTP surface on the status port: readiness and merged metrics.

Two endpoints, one job each:
  GET /healthz/ready     200 when Envoy is ready and the agent is not stopping, else 503
  GET /stats/prometheus  Envoy's Prometheus stats followed by hostmesh_agent_* metrics
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Tuple

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        address: str,
        port: int,
        readiness: Callable[[], Tuple[bool, str]],
        metrics: Callable[[], bytes],
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        handler = self._handler_class()
        self._httpd = ThreadingHTTPServer((address, port), handler)
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.2,), name="status-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz/ready":
                    ok, reason = server._readiness()
                    self._reply(200 if ok else 503, (reason + "\n").encode())
                elif path == "/stats/prometheus":
                    self._reply(200, server._metrics(), "text/plain; version=0.0.4")
                else:
                    self._reply(404, b"not found; try /healthz/ready or /stats/prometheus\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("status %s - %s", self.address_string(), format % args)

        return Handler
