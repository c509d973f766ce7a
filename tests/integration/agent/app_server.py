"""The application behind the sidecar in tests: answers with who connected to it.

Body: ``<served port> <peer ip>``; ``?delay=S`` holds the answer S seconds.
Run: python3 app_server.py PORT [PORT...]
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        delay = float(query.get("delay", ["0"])[0])
        if delay:
            time.sleep(delay)
        body = f"{self.server.server_address[1]} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs when a test opens many at once


def main() -> None:
    servers = []
    for port in sys.argv[1:]:
        httpd = Server(("0.0.0.0", int(port)), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
