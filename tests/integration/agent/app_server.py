"""The application behind the sidecar in tests: answers with who connected to it.

Body: ``<served port> <peer ip>``; ``?delay=S`` holds the answer S seconds; a request's
``traceparent`` header comes back as ``X-Seen-Traceparent``.
Run: python3 app_server.py [--dual-stack] PORT [PORT...]   (--dual-stack: listen on "::", IPv6 and IPv4)
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK (40 ms) on every keep-alive request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        delay = float(query.get("delay", ["0"])[0])
        if delay:
            time.sleep(delay)
        body = f"{self.server.server_address[1]} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        traceparent = self.headers.get("traceparent")
        if traceparent:  # what the sidecars passed on, for the tracing tests
            self.send_header("X-Seen-Traceparent", traceparent)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs when a test opens many at once


class DualStackServer(Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    servers = []
    args = sys.argv[1:]
    dual = "--dual-stack" in args
    for port in (a for a in args if a != "--dual-stack"):
        httpd = DualStackServer(("::", int(port)), Handler) if dual else Server(("0.0.0.0", int(port)), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
