"""TCP probe for capture scenarios, run on sandbox hosts (standard library only).

serve LABEL PORT [--transparent]
                     answer each connection with one JSON line: the label, the
                     port the socket is bound to, the connection's original
                     destination (SO_ORIGINAL_DST) and the peer.
connect HOST PORT [--uid N]
                     connect (as another user if asked), print the answer.
"""

import argparse
import json
import os
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19


def original_destination(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack("!H", raw[2:4])[0]
    return "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)


def serve(args):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.transparent:
        # TPROXY delivers connections for any address to this socket.
        server.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    server.bind(("0.0.0.0", args.port))
    server.listen(16)
    while True:
        conn, peer = server.accept()
        with conn:
            answer = {
                "label": args.label,
                "local": "%s:%d" % conn.getsockname(),
                "original_dst": original_destination(conn),
                "peer": "%s:%d" % peer,
            }
            conn.sendall((json.dumps(answer) + "\n").encode())


def connect(args):
    if args.uid is not None:
        os.setgid(args.uid)
        os.setuid(args.uid)
    try:
        with socket.create_connection((args.host, args.port), timeout=3) as conn:
            line = conn.makefile().readline().strip()
    except OSError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(line)
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("label")
    s.add_argument("port", type=int)
    s.add_argument("--transparent", action="store_true")
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--uid", type=int)
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else connect(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
