"""A fake upstream resolver on loopback and a tiny DNS client, for the DNS server's tests.

Both write and read DNS bytes by hand (struct), not with hostmesh_agent.dns_wire, so that
the tests do not check the server against its own encoder.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Callable, List, Optional, Tuple, Union

COOKIE = b"\x00\x0a\x00\x08fakecook"  # an EDNS option (COOKIE, RFC 7873) the fake adds to replies


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def make_query(
    name: str,
    qtype: int = 1,
    qid: int = 0x4242,
    edns: Optional[int] = None,
    do: bool = False,
    qclass: int = 1,
    opcode: int = 0,
) -> bytes:
    """A query as a stub resolver sends it (RD set), optionally with an OPT record."""
    flags = 0x0100 | (opcode << 11)
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns is not None else 0)
    out = header + encode_name(name) + struct.pack("!HH", qtype, qclass)
    if edns is not None:
        out += b"\x00" + struct.pack("!HHIH", 41, edns, 0x8000 if do else 0, 0)
    return out


def question_end(query: bytes) -> int:
    pos = 12
    while query[pos]:
        pos += 1 + query[pos]
    return pos + 5


def has_opt(query: bytes) -> bool:
    return struct.unpack_from("!H", query, 10)[0] > 0


def reply_to(
    query: bytes,
    rcode: int = 0,
    ipv4: Tuple[str, ...] = (),
    tc: bool = False,
    aa: bool = False,
    ttl: int = 300,
) -> bytes:
    """An upstream's reply: the question echoed, A records, and when the query had EDNS an
    OPT with a cookie option, the DO bit echoed and AD set (as a validating resolver would)."""
    qid, qflags = struct.unpack_from("!HH", query)
    end = question_end(query)
    question = query[12:end]
    flags = 0x8000 | 0x0080 | (qflags & 0x0100) | rcode
    if tc:
        flags |= 0x0200
    if aa:
        flags |= 0x0400
    records = b""
    for address in ipv4:
        records += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(address)
    opt = b""
    if has_opt(query):
        do = struct.unpack_from("!I", query, end + 5)[0] & 0x8000
        if do:
            flags |= 0x0020  # AD
        opt = b"\x00" + struct.pack("!HHIH", 41, 4096, do, len(COOKIE)) + COOKIE
    header = struct.pack("!HHHHHH", qid, flags, 1, len(ipv4), 0, 1 if opt else 0)
    return header + question + records + opt


def rcode_of(reply: bytes) -> int:
    return reply[3] & 0x0F


def flags_of(reply: bytes) -> int:
    return struct.unpack_from("!H", reply, 2)[0]


def answer_addresses(reply: bytes) -> List[str]:
    """The A and AAAA addresses in a reply's answer section (owner names must be pointers)."""
    ancount = struct.unpack_from("!H", reply, 6)[0]
    pos = question_end(reply)
    out = []
    for _i in range(ancount):
        if reply[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while reply[pos]:
                pos += 1 + reply[pos]
            pos += 1
        rtype, _cls, _ttl, length = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        rdata = reply[pos : pos + length]
        pos += length
        if rtype == 1:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return out


Handler = Callable[[bytes, str], Union[bytes, Tuple[bytes, float], None]]


class FakeUpstream:
    """A resolver on 127.0.0.1 (UDP and TCP, same port; a free one unless given) that answers
    with ``handler``.

    ``handler(query, "udp"|"tcp")`` returns the reply bytes, or (reply, delay in seconds),
    or None to stay silent. The fake records every query it received and every reply it
    sent, so tests can compare bytes. ``delay`` holds back every reply that many seconds;
    a delayed reply does not hold back the others.
    """

    def __init__(self, handler: Handler, delay: float = 0.0, address: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.delay = delay
        self.received: List[Tuple[str, bytes]] = []
        self.sent: List[Tuple[str, bytes]] = []
        self._lock = threading.Lock()
        for attempt in range(20):  # a free UDP port may be taken for TCP: try another
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((address, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((address, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port or attempt == 19:
                    raise
        self.tcp.listen(16)
        self.address = address
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def upstream(self) -> Tuple[str, int]:
        return (self.address, self.port)

    def _record(self, kind: List[Tuple[str, bytes]], proto: str, data: bytes) -> None:
        with self._lock:
            kind.append((proto, data))

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self._record(self.received, "udp", data)
            reply, delay = self._answer(data, "udp")
            if reply is not None:
                self._later(delay, lambda r=reply, p=peer: self._send_udp(r, p))

    def _send_udp(self, reply: bytes, peer: Tuple[str, int]) -> None:
        self._record(self.sent, "udp", reply)
        with contextlib.suppress(OSError):
            self.udp.sendto(reply, peer)

    def _answer(self, data: bytes, proto: str) -> Tuple[Optional[bytes], float]:
        reply = self.handler(data, proto)
        if isinstance(reply, tuple):
            return reply
        return reply, self.delay

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        if delay:
            t = threading.Timer(delay, action)
            t.daemon = True
            t.start()
        else:
            action()

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _peer = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                (length,) = struct.unpack("!H", recv_exactly(conn, 2))
                data = recv_exactly(conn, length)
            except (OSError, EOFError):
                return
            self._record(self.received, "tcp", data)
            reply, delay = self._answer(data, "tcp")
            if reply is None:
                time.sleep(5)
                return
            time.sleep(delay)
            self._record(self.sent, "tcp", reply)
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def ask_udp(port: int, query: bytes, timeout: float = 5.0, address: str = "127.0.0.1") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (address, port))
        return sock.recv(65535)


def ask_tcp(port: int, queries: List[bytes], timeout: float = 5.0, address: str = "127.0.0.1") -> List[bytes]:
    """Send every query on one connection (pipelined), then read as many replies."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(q)) + q for q in queries))
        replies = []
        for _i in queries:
            (length,) = struct.unpack("!H", recv_exactly(sock, 2))
            replies.append(recv_exactly(sock, length))
        return replies
