"""A small TCP and UDP peer for the capture tests: in network namespaces, and copied to sandbox hosts.

Standard library only; runs with the hosts' own python3.

serve PORT [--label L] [--family 4|6|both] [--loopback] [--transparent] [--udp]
           [--uid N --gid N] [--count N]
    listen on the wildcard (or loopback) address of the families asked, as
    uid/gid N when given (the sockets belong to that user); print "ready";
    answer each TCP connection with one JSON line, {"label", "port" (the
    listener's), "local", "original_dst", "peer"}, and each UDP datagram with
    {"label", "port", "peer"}.
    original_dst is SO_ORIGINAL_DST when conntrack has the connection
    (REDIRECT keeps the original there), else null (direct, or TPROXY, where
    "local" is the original destination). Stop after N TCP connections.
connect HOST PORT [--uid N] [--gid N] [--udp] [--timeout S] [--bind ADDR [--transparent]] [--mark N]
    connect (as that user and group, when given), send a datagram with --udp,
    print the answer line and exit 0; print {"error": "..."} and exit 1 on
    failure. --bind sets the source address; with --transparent any address
    (as Envoy's original-source connections do). --mark sets the socket's
    SO_MARK. --transparent and --mark need root, so not with --uid/--gid.
"""

import argparse
import json
import os
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SO_MARK = 36


def address_text(address):
    host, port = address[0], address[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def original_destination(conn):
    try:
        if conn.family == socket.AF_INET6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            return address_text((socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]))
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return address_text((socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]))
    except OSError:
        return None


def become(args):
    """Drop to the uid and gid asked for, with no supplementary groups."""
    if args.uid is None and args.gid is None:
        return
    # Load what name resolution needs while the interpreter's files are still readable.
    "".encode("idna")
    os.setgroups([])
    os.setgid(args.gid if args.gid is not None else args.uid)
    if args.uid is not None:
        os.setuid(args.uid)


def listening_sockets(args):
    families = {"4": [socket.AF_INET], "6": [socket.AF_INET6], "both": [socket.AF_INET, socket.AF_INET6]}[args.family]
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if args.udp else [])
    sockets = []
    for family in families:
        v6 = family == socket.AF_INET6
        host = ("::1" if v6 else "127.0.0.1") if args.loopback else ("::" if v6 else "0.0.0.0")
        for kind in kinds:
            sock = socket.socket(family, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if args.transparent:
                # TPROXY hands connections for any address to this socket.
                if v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((host, args.port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sockets.append(sock)
    return sockets


def serve(args):
    become(args)  # before the sockets exist: their owner is who creates them
    selector = selectors.DefaultSelector()
    for sock in listening_sockets(args):
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    answered = 0
    while answered < args.count:
        for key, _events in selector.select():
            sock = key.fileobj
            if sock.type == socket.SOCK_DGRAM:
                _data, peer = sock.recvfrom(512)
                answer = {"label": args.label, "port": args.port, "peer": address_text(peer)}
                sock.sendto((json.dumps(answer) + "\n").encode(), peer)
                continue
            conn, peer = sock.accept()
            with conn:
                answer = {
                    "label": args.label,
                    "port": args.port,
                    "local": address_text(conn.getsockname()),
                    "original_dst": original_destination(conn),
                    "peer": address_text(peer),
                }
                conn.sendall((json.dumps(answer) + "\n").encode())
            answered += 1
    return 0


def connect(args):
    # Resolve before dropping privileges.
    kind = socket.SOCK_DGRAM if args.udp else socket.SOCK_STREAM
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(args.host, args.port, type=kind)[0]
        become(args)
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(args.timeout)
            if args.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, args.mark)
            if args.transparent:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            if args.bind:
                sock.bind((args.bind, 0))
            sock.connect(address)
            if args.udp:
                sock.send(b"query")
                line = sock.recv(512).decode().strip()
            else:
                line = sock.makefile().readline().strip()
    except OSError as error:
        print(json.dumps({"error": str(error) or type(error).__name__}))
        return 1
    if not line:
        print(json.dumps({"error": "empty answer"}))
        return 1
    print(line)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tcp_probe.py")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("--label", default="")
    s.add_argument("--family", choices=("4", "6", "both"), default="both")
    s.add_argument("--loopback", action="store_true")
    s.add_argument("--transparent", action="store_true")
    s.add_argument("--udp", action="store_true")
    s.add_argument("--count", type=int, default=1000000)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--udp", action="store_true")
    c.add_argument("--timeout", type=float, default=3.0)
    c.add_argument("--bind")
    c.add_argument("--transparent", action="store_true")
    c.add_argument("--mark", type=lambda text: int(text, 0))
    for each in (s, c):
        each.add_argument("--uid", type=int)
        each.add_argument("--gid", type=int)
    args = parser.parse_args(argv)
    privileged = args.command == "connect" and (args.transparent or args.mark is not None)
    if privileged and (args.uid, args.gid) != (None, None):
        parser.error("--transparent and --mark need root: not with --uid/--gid")
    return serve(args) if args.command == "serve" else connect(args)


if __name__ == "__main__":
    sys.exit(main())
