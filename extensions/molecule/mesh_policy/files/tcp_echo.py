"""A tcp service and its client for the mesh_policy scenario; standard library only.

serve PORT LABEL          answer each connection's first line with "LABEL from HOST: LINE",
                          and print "connection from PEER: LINE" for each one it hears
call HOST PORT MESSAGE    send MESSAGE and a newline, print the answer and exit 0;
                          print {"error": ...} and exit 1 when the connection ends with none
"""

import json
import socket
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(4096).decode(errors="replace").strip()
        print("connection from %s:%d: %s" % (self.client_address[0], self.client_address[1], line), flush=True)
        self.wfile.write(("%s from %s: %s\n" % (self.server.label, socket.gethostname(), line)).encode())


def serve(port, label):
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("0.0.0.0", port), Echo) as server:
        server.label = label
        server.serve_forever()


def call(host, port, message):
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(message.encode() + b"\n")
            answer = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    if not answer:
        print(json.dumps({"error": "closed with no answer"}))
        return 1
    print(answer.decode(errors="replace").strip())
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(call(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
