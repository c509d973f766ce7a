"""A replica's TCP app for the mesh_resilience scenario: greets with its host name, then echoes lines.

python3 tcp_replica.py PORT
"""

import socket
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(("%s\n" % socket.gethostname()).encode())
        for line in self.rfile:
            self.wfile.write(line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    Server(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
