"""A tiny TCP peer for capture tests, run inside a network namespace.

serve PORT [--transparent] [--v6] [--count N]
    accept N connections; answer each with "<original destination> <peer> via=<PORT>",
    where the original destination is SO_ORIGINAL_DST when the connection was
    redirected (NAT), else the socket's own address (TPROXY or direct).
connect HOST PORT [--uid N] [--gid N]
    connect (optionally as another user), print the answer, exit 0; exit 1 on failure.
"""

import argparse
import os
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19


def original_destination(conn, v6):
    try:
        if v6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            return "[%s]:%d" % (address, port)
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack("!H", raw[2:4])[0]
        return "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)
    except OSError:
        name = conn.getsockname()
        return ("[%s]:%d" if v6 else "%s:%d") % (name[0], name[1])


def serve(args):
    family = socket.AF_INET6 if args.v6 else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.transparent:
        level = socket.SOL_IPV6 if args.v6 else socket.SOL_IP
        server.setsockopt(level, 75 if args.v6 else IP_TRANSPARENT, 1)
    server.bind(("::" if args.v6 else "0.0.0.0", args.port))
    server.listen(64)
    print("ready", flush=True)
    for _index in range(args.count):
        conn, peer = server.accept()
        with conn:
            peer_text = ("[%s]:%d" if args.v6 else "%s:%d") % (peer[0], peer[1])
            answer = "%s %s via=%d\n" % (original_destination(conn, args.v6), peer_text, args.port)
            conn.sendall(answer.encode())


def connect(args):
    # Resolve before dropping privileges: the interpreter's files may not be
    # readable by the other user.
    family, kind, proto, _name, address = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
    if args.gid is not None:
        os.setgid(args.gid)
    if args.uid is not None:
        os.setuid(args.uid)
    try:
        conn = socket.socket(family, kind, proto)
        conn.settimeout(3)
        with conn:
            conn.connect(address)
            data = conn.makefile().readline().strip()
    except OSError as error:
        print("error %s" % error)
        return 1
    print(data)
    return 0 if data else 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("--transparent", action="store_true")
    s.add_argument("--v6", action="store_true")
    s.add_argument("--count", type=int, default=1000)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--uid", type=int)
    c.add_argument("--gid", type=int)
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else connect(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
