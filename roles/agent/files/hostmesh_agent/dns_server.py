"""The agent's DNS server: mesh names from the zone, every other name to the host's resolvers.

One thread runs one selector loop over every socket: the UDP and TCP listeners, the TCP
clients, and one socket per forwarded query, each with a deadline. Nothing in the loop
blocks, so a slow upstream delays only the queries waiting on it. Built on ``selectors``
rather than ``asyncio``, whose import alone adds about 6 MiB of RSS to the agent.

Forwarding changes nothing but the message ID: the upstream's reply bytes go back to the
client as they came (rcode, EDNS, DNSSEC bits, TC), over the transport the client used.
Like the C library, the server asks the upstreams in order and moves to the next one on a
timeout, an error, or a SERVFAIL/REFUSED/NOTIMP reply; the last such reply is passed on if
no upstream does better, and SERVFAIL of its own only when no upstream answered at all.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, TypeVar

from hostmesh_agent import dns_wire as wire
from hostmesh_agent.dns_upstreams import Upstream, is_own_listener
from hostmesh_agent.dns_zone import DEFAULT_DOMAIN, MeshZone, ZoneError, ZoneRecords

log = logging.getLogger(__name__)

DEFAULT_PORT = 15053
ZoneGetter = Callable[[], ZoneRecords]
UpstreamsGetter = Callable[[], Sequence[Tuple[str, int]]]
T = TypeVar("T")

_RETRY_AFTER = 30.0  # an upstream that failed is asked last for this long
_LOG_INTERVAL = 10.0  # one line per kind of trouble per interval, with a count of the rest
_UDP_BATCH = 64  # datagrams read per wake-up before looking at other sockets
_MAX_TCP_OUTPUT = 1 << 20  # a TCP client that reads nothing is dropped past this
_RETRY_RCODES = (wire.RCODE_SERVFAIL, wire.RCODE_NOTIMP, wire.RCODE_REFUSED)


@dataclass
class DnsCounters:
    """What the server did, for ``hostmesh_agent_dns_*`` metrics."""

    zone_answers: int = 0  # queries answered from the mesh zone
    forwarded: int = 0  # queries answered with an upstream's reply
    failed: int = 0  # queries answered SERVFAIL by the agent: no upstream answered, a loop, overload
    malformed: int = 0  # packets that were not a readable DNS query
    upstream_errors: int = 0  # upstream attempts that timed out or failed (a query may make several)
    truncated: int = 0  # zone answers sent over UDP with TC set

    def render(self) -> str:
        """Prometheus text lines, in the style of AgentMetrics.render."""
        rows = (
            ("zone_answers_total", "Queries answered from the mesh zone.", self.zone_answers),
            ("forwarded_total", "Queries answered with an upstream resolver's reply.", self.forwarded),
            ("failed_total", "Queries the agent answered SERVFAIL: no upstream answered.", self.failed),
            ("malformed_total", "Packets that were not a readable DNS query.", self.malformed),
            ("upstream_errors_total", "Upstream attempts that timed out or failed.", self.upstream_errors),
            ("truncated_total", "Zone answers sent over UDP with TC set.", self.truncated),
        )
        lines = []
        for name, help_text, value in rows:
            full = f"hostmesh_agent_dns_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} counter", f"{full} {value}"]
        return "\n".join(lines) + "\n"


class _RateLimitedLog:
    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}

    def __call__(self, kind: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        count = self._suppressed.pop(kind, 0)
        if count:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, count, self._interval)
        log.log(level, message, *args)


def _nonblocking(call: Callable[[], T], on_error: Callable[[OSError], None]) -> Optional[T]:
    """What a non-blocking socket call returns; None when it would block or was interrupted,
    and None when it failed, after telling ``on_error`` why."""
    try:
        return call()
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        on_error(exc)
        return None


def _peer(sockaddr: Any) -> Tuple[str, int]:
    return sockaddr[0], sockaddr[1]


class _UdpClient:
    __slots__ = ("peer", "sock")
    tcp = False

    def __init__(self, sock: socket.socket, peer: Tuple[str, int]) -> None:
        self.sock = sock
        self.peer = peer

    def send(self, reply: bytes) -> None:
        try:
            self.sock.sendto(reply, self.peer)
        except OSError as exc:  # a full socket buffer drops the reply; the client asks again
            log.debug("dns reply to %s dropped: %s", self.peer, exc)


class _TcpClient:
    __slots__ = ("closed", "deadline", "eof", "inbuf", "outbuf", "peer", "pending", "server", "sock")
    tcp = True

    def __init__(self, server: DnsServer, sock: socket.socket, peer: Tuple[str, int], deadline: float) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.inbuf = b""
        self.outbuf = bytearray()
        self.pending = 0
        self.eof = False
        self.closed = False
        self.deadline = deadline

    def send(self, reply: bytes) -> None:
        if not self.closed:
            self.outbuf += wire.tcp_frame(reply)
            self.server._flush_tcp(self)


class _Forward:
    """One forwarded query: its client, the upstreams left to try, and the current attempt."""

    __slots__ = (
        "candidates",
        "client",
        "client_id",
        "connected",
        "deadline",
        "done",
        "fallback",
        "inbuf",
        "local",
        "outbuf",
        "query",
        "question_wire",
        "sock",
        "tried",
        "upstream",
        "upstream_wire",
    )

    def __init__(self, query: wire.Message, data: bytes, client: Any, candidates: List[Any]) -> None:
        self.query = query
        self.client = client
        self.client_id = query.header.id
        self.upstream_wire = wire.with_id(data, int.from_bytes(os.urandom(2), "big"))
        self.question_wire = query.question_wire.lower()
        self.candidates = candidates
        self.tried: List[str] = []
        self.fallback: Optional[bytes] = None
        self.sock: Optional[socket.socket] = None
        self.upstream: Optional[Tuple[str, int]] = None
        self.local: Optional[Tuple[str, int]] = None
        self.deadline = 0.0
        self.connected = False
        self.inbuf = b""
        self.outbuf = b""
        self.done = False

    def matches(self, reply: bytes) -> bool:
        """Whether ``reply`` answers this query: same ID, a response, the same question."""
        if len(reply) < wire.HEADER_SIZE or reply[:2] != self.upstream_wire[:2] or not reply[2] & 0x80:
            return False
        if reply[4:6] == b"\x00\x00":  # some servers leave the question out of an error reply
            return True
        end = wire.HEADER_SIZE + len(self.question_wire)
        return reply[4:6] == self.upstream_wire[4:6] and reply[wire.HEADER_SIZE : end].lower() == self.question_wire


def _listen_family(address: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"dns listen address {address!r} is not an IP address") from None
    if ip.is_unspecified:
        raise ValueError(
            f"dns listen address {address!r} is a wildcard: give one address (127.0.0.1), so that "
            "UDP replies leave from the address the query was sent to"
        )
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class DnsServer:
    """DNS on one address, UDP and TCP on the same port; ``start()`` runs it in a thread.

    ``zone_getter()`` returns the mesh zone (lower-case FQDN -> (IPv4 list, IPv6 list)); it
    is called for every query, and the zone is re-indexed whenever it returns a different
    object, so a config reload changes answers with no restart. ``upstreams_getter()``
    returns the resolvers to forward to, as (address, port) pairs, in order.
    """

    def __init__(
        self,
        address: str,
        port: int,
        zone_getter: ZoneGetter,
        upstreams_getter: UpstreamsGetter,
        domain: str = DEFAULT_DOMAIN,
        ttl: int = 30,
        upstream_timeout: float = 2.0,
        max_in_flight: int = 512,
        max_tcp_clients: int = 64,
        tcp_idle_timeout: float = 10.0,
    ) -> None:
        family = _listen_family(address)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"dns port {port!r} must be an integer from 0 to 65535")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 2**31 - 1:
            raise ValueError(f"dns ttl {ttl!r} must be a whole number of seconds, 0 or more")
        if not (isinstance(upstream_timeout, (int, float)) and 0 < upstream_timeout < math.inf):
            raise ValueError(f"dns upstream timeout {upstream_timeout!r} must be more than 0 seconds")
        self._zone_obj = MeshZone(domain)  # raises ZoneError (a ValueError) naming a bad domain
        self._domain = domain
        self._zone_records: Any = None
        self._zone_getter = zone_getter
        self._upstreams_getter = upstreams_getter
        self._upstreams_source: Any = None
        self._upstreams: List[Tuple[Tuple[str, int], socket.AddressFamily, Any]] = []
        self._ttl = ttl
        self._timeout = upstream_timeout
        self._max_in_flight = max_in_flight
        self._max_tcp = max_tcp_clients
        self._tcp_idle = tcp_idle_timeout
        self._counters = DnsCounters()
        self._ratelog = _RateLimitedLog()
        self._down_until: Dict[Tuple[str, int], float] = {}
        self._in_flight: Dict[int, _Forward] = {}  # id(forward) -> forward
        self._own_sockets: Dict[Tuple[str, int], _Forward] = {}  # local address of each upstream socket
        self._tcp_clients: Dict[int, _TcpClient] = {}
        self._attempt_timers: Deque[Tuple[float, _Forward]] = deque()
        self._next_idle_check = 0.0
        self._recv_buffer = bytearray(wire.MAX_MESSAGE + 2)
        self._address = address
        self._udp, self._tcp = self._bind(family, address, port)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _bind(family: socket.AddressFamily, address: str, port: int) -> Tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on the same port (with port 0: the same free port for both)."""
        for _i in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((address, port))
                tcp.bind((address, udp.getsockname()[1]))
                tcp.listen(128)
            except OSError as exc:
                udp.close()
                tcp.close()
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue
                raise OSError(exc.errno, f"cannot listen for DNS on {address} port {port}: {exc.strerror}") from None
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise OSError(errno.EADDRINUSE, f"no free port for DNS on {address} for both UDP and TCP")

    @property
    def port(self) -> int:
        return self._udp.getsockname()[1]

    @property
    def counters(self) -> DnsCounters:
        """A snapshot of the counters (the loop thread keeps counting)."""
        return replace(self._counters)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("DnsServer.start() called twice")
        self._selector.register(self._udp, selectors.EVENT_READ, self._on_udp)
        self._selector.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._thread = threading.Thread(target=self._run, name="dns-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket; queries still in flight get no reply."""
        self._stopping = True
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._thread.join(5)
        for fwd in list(self._in_flight.values()):
            self._close_attempt(fwd)
        for client in list(self._tcp_clients.values()):
            self._close_tcp(client)
        self._selector.close()
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            sock.close()

    # The loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._expire(time.monotonic())
            timeout = 1.0
            if self._attempt_timers:
                timeout = min(timeout, max(0.0, self._attempt_timers[0][0] - time.monotonic()))
            for key, mask in self._selector.select(timeout):
                if self._stopping:
                    return
                try:
                    key.data(mask)
                except Exception:  # a bug must cost one query, never the server
                    log.exception("dns server: unexpected error handling a socket event")

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(64)

    def _expire(self, now: float) -> None:
        """Time out upstream attempts, and close idle TCP clients (checked once a second).

        Every attempt has the same timeout, so deadlines join the queue in order and the
        ones already answered are dropped from its head at once: the queue holds only
        what is in flight, not every query of the last few seconds.
        """
        timers = self._attempt_timers
        while timers:
            deadline, fwd = timers[0]
            if fwd.done or fwd.deadline != deadline:
                timers.popleft()
                continue
            if deadline > now:
                break
            timers.popleft()
            try:
                self._attempt_failed(fwd, "timed out after %.1f s" % self._timeout)
            except Exception:
                log.exception("dns server: unexpected error on a timeout")
        if now >= self._next_idle_check:
            self._next_idle_check = now + 1.0
            for client in list(self._tcp_clients.values()):
                if not client.pending and client.deadline <= now:
                    self._close_tcp(client)

    def _receive(self, sock: socket.socket) -> bytes:
        """recv into one reused buffer: a fresh 64 KiB buffer per packet costs RSS."""
        n = sock.recv_into(self._recv_buffer)
        return bytes(self._recv_buffer[:n])

    def _receive_from(self, sock: socket.socket) -> Tuple[bytes, Any]:
        n, peer = sock.recvfrom_into(self._recv_buffer)
        return bytes(self._recv_buffer[:n]), peer

    # Queries ---------------------------------------------------------------------------

    def _on_udp(self, _mask: int) -> None:
        for _i in range(_UDP_BATCH):
            try:
                data, peer = self._receive_from(self._udp)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dns udp receive: %s", exc)
                return
            self._handle_query(data, _UdpClient(self._udp, _peer(peer)))

    def _handle_query(self, data: bytes, client: Any) -> None:
        proto = "TCP" if client.tcp else "UDP"
        try:
            query = wire.parse_message(data)
        except wire.DnsFormatError as exc:
            self._counters.malformed += 1
            reply = wire.error_reply_for_unparsed(data)
            self._ratelog(
                "malformed",
                logging.WARNING,
                "dns: malformed packet from %s port %d (%s, %d bytes): %s; %s",
                client.peer[0],
                client.peer[1],
                proto,
                len(data),
                exc,
                "answered FORMERR" if reply else "dropped",
            )
            if reply:
                client.send(reply)
            return
        if query.header.qr:
            self._counters.malformed += 1
            self._ratelog(
                "response",
                logging.WARNING,
                "dns: a response, not a query, from %s port %d (%s); dropped",
                client.peer[0],
                client.peer[1],
                proto,
            )
            return
        limit = wire.MAX_MESSAGE if client.tcp else wire.udp_payload_limit(query)
        looped = self._own_sockets.get(client.peer)
        if looped is not None:
            self._ratelog(
                "loop",
                logging.ERROR,
                "dns: forwarding loop: a query the agent sent to %s port %d came back to its own "
                "listener; is the agent's user excluded from DNS capture? Answering SERVFAIL",
                *looped.upstream,
            )
            self._counters.failed += 1
            client.send(wire.build_response(query, wire.RCODE_SERVFAIL, max_size=limit))
            return
        question = query.question
        zone = self._zone()
        if question is not None and zone.owns(question.key):
            reply = zone.answer(query, self._ttl, limit)
            self._counters.zone_answers += 1
            if not client.tcp and wire.parse_header(reply).tc:
                self._counters.truncated += 1
            client.send(reply)
            return
        self._forward(query, data, client, limit)

    def _zone(self) -> MeshZone:
        try:
            records = self._zone_getter()
        except Exception as exc:
            self._ratelog("zone", logging.ERROR, "dns: the mesh zone could not be read: %s", exc)
            return self._zone_obj
        if records is not self._zone_records:
            self._zone_records = records
            try:
                self._zone_obj = MeshZone(self._domain, records)
            except ZoneError as exc:
                self._ratelog(
                    "zone",
                    logging.ERROR,
                    "dns: mesh zone rejected, still answering from the previous one (%d names): %s",
                    len(self._zone_obj),
                    exc,
                )
        return self._zone_obj

    # Forwarding ------------------------------------------------------------------------

    def _candidates(self) -> List[Any]:
        """The upstreams to try, in order: those that failed lately go last."""
        try:
            upstreams = tuple(Upstream(*u) for u in self._upstreams_getter())
        except Exception as exc:
            self._ratelog("upstreams", logging.ERROR, "dns: the upstream resolvers could not be read: %s", exc)
            upstreams = self._upstreams_source or ()
        if upstreams != self._upstreams_source:
            self._upstreams_source = upstreams
            self._upstreams = self._resolve_upstreams(upstreams)
        now = time.monotonic()
        ok = [u for u in self._upstreams if self._down_until.get(u[0], 0.0) <= now]
        return ok + [u for u in self._upstreams if u not in ok]

    def _resolve_upstreams(self, upstreams: Sequence[Upstream]) -> List[Any]:
        resolved = []
        for upstream in upstreams:
            try:
                if is_own_listener(upstream, self._address, self.port):
                    continue
                (family, _type, _proto, _name, sockaddr), *_rest = socket.getaddrinfo(
                    upstream.address, upstream.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
                )
            except (OSError, ValueError) as exc:
                self._ratelog(
                    "upstreams",
                    logging.ERROR,
                    "dns: upstream %r skipped: not an IP address and port (%s)",
                    upstream,
                    exc,
                )
                continue
            resolved.append(((upstream.address, upstream.port), family, sockaddr))
        if upstreams and not resolved:
            log.error(
                "dns: every upstream resolver (%s) is the agent's own listener %s port %d or unusable: "
                "names outside the mesh get SERVFAIL",
                ", ".join(f"{u.address} port {u.port}" for u in upstreams),
                self._address,
                self.port,
            )
        return resolved

    def _forward(self, query: wire.Message, data: bytes, client: Any, limit: int) -> None:
        candidates = self._candidates()
        if not candidates or len(self._in_flight) >= self._max_in_flight:
            if candidates:
                reason = "%d queries are already waiting on upstreams" % len(self._in_flight)
            elif self._upstreams_source:
                reason = "every upstream is the agent's own listener (a loop)"
            else:
                reason = "no upstream resolver is known"
            self._counters.failed += 1
            self._ratelog("servfail", logging.WARNING, "dns: answering SERVFAIL: %s", reason)
            client.send(wire.build_response(query, wire.RCODE_SERVFAIL, max_size=limit))
            return
        fwd = _Forward(query, data, client, candidates)
        self._in_flight[id(fwd)] = fwd
        if client.tcp:
            client.pending += 1
        self._next_attempt(fwd)

    def _next_attempt(self, fwd: _Forward) -> None:
        tcp = fwd.client.tcp
        while fwd.candidates:
            upstream, family, sockaddr = fwd.candidates.pop(0)
            fwd.upstream = upstream
            fwd.tried.append(f"{upstream[0]} port {upstream[1]}")
            sock = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                if tcp:
                    err = sock.connect_ex(sockaddr)
                    if err not in (0, errno.EINPROGRESS):
                        raise OSError(err, os.strerror(err))
                    fwd.outbuf = wire.tcp_frame(fwd.upstream_wire)
                    fwd.inbuf = b""
                    fwd.connected = False
                    events = selectors.EVENT_WRITE
                else:
                    sock.connect(sockaddr)
                    sock.send(fwd.upstream_wire)
                    events = selectors.EVENT_READ
                fwd.local = _peer(sock.getsockname())
            except OSError as exc:
                sock.close()
                self._note_upstream_error(fwd, str(exc))
                continue
            fwd.sock = sock
            fwd.deadline = time.monotonic() + self._timeout
            self._own_sockets[fwd.local] = fwd
            self._selector.register(sock, events, lambda mask, f=fwd: self._on_upstream(f, mask))
            self._attempt_timers.append((fwd.deadline, fwd))
            return
        self._give_up(fwd)

    def _note_upstream_error(self, fwd: _Forward, reason: str) -> None:
        self._counters.upstream_errors += 1
        assert fwd.upstream is not None
        self._down_until[fwd.upstream] = time.monotonic() + _RETRY_AFTER
        self._ratelog(
            "upstream " + fwd.upstream[0],
            logging.WARNING,
            "dns: upstream %s port %d failed (%s): %s; %s",
            fwd.upstream[0],
            fwd.upstream[1],
            "TCP" if fwd.client.tcp else "UDP",
            reason,
            "trying the next one" if fwd.candidates else "no other upstream left",
        )

    def _close_attempt(self, fwd: _Forward) -> None:
        if fwd.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fwd.sock)
            fwd.sock.close()
            fwd.sock = None
        if fwd.local is not None and self._own_sockets.get(fwd.local) is fwd:
            del self._own_sockets[fwd.local]
        fwd.local = None
        fwd.deadline = 0.0

    def _attempt_failed(self, fwd: _Forward, reason: str) -> None:
        self._close_attempt(fwd)
        self._note_upstream_error(fwd, reason)
        self._next_attempt(fwd)

    def _on_upstream(self, fwd: _Forward, mask: int) -> None:
        if fwd.done or fwd.sock is None:
            return
        sock = fwd.sock
        if not fwd.client.tcp:
            # An ICMP port unreachable arrives here as an error on the connected socket.
            reply = _nonblocking(lambda: self._receive(sock), lambda exc: self._attempt_failed(fwd, str(exc)))
            if reply is None:
                return
            if fwd.matches(reply):
                self._got_reply(fwd, reply)
            else:
                log.debug("dns: ignored a datagram from %s that does not answer the query", fwd.upstream)
            return
        try:
            if not fwd.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                fwd.connected = True
            if fwd.outbuf:
                sent = sock.send(fwd.outbuf)
                fwd.outbuf = fwd.outbuf[sent:]
                if not fwd.outbuf:
                    self._selector.modify(sock, selectors.EVENT_READ, self._selector.get_key(sock).data)
                return
            chunk = self._receive(sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._attempt_failed(fwd, str(exc))
            return
        if not chunk:
            self._attempt_failed(fwd, "connection closed before a reply")
            return
        fwd.inbuf += chunk
        messages, _rest = wire.split_tcp_frames(fwd.inbuf)
        if not messages:
            return
        if fwd.matches(messages[0]):
            self._got_reply(fwd, messages[0])
        else:
            self._attempt_failed(fwd, "the reply does not answer the query")

    def _got_reply(self, fwd: _Forward, reply: bytes) -> None:
        self._close_attempt(fwd)
        assert fwd.upstream is not None
        self._down_until.pop(fwd.upstream, None)
        if reply[3] & 0xF in _RETRY_RCODES and fwd.candidates:
            fwd.fallback = reply  # as libc does: another server may answer; if none does, pass this on
            self._next_attempt(fwd)
            return
        self._deliver(fwd, reply)

    def _give_up(self, fwd: _Forward) -> None:
        if fwd.fallback is not None:
            self._deliver(fwd, fwd.fallback)
            return
        self._counters.failed += 1
        self._ratelog(
            "servfail",
            logging.WARNING,
            "dns: no upstream answered (tried %s); answering SERVFAIL",
            ", ".join(fwd.tried),
        )
        limit = wire.MAX_MESSAGE if fwd.client.tcp else wire.udp_payload_limit(fwd.query)
        self._finish(fwd, wire.build_response(fwd.query, wire.RCODE_SERVFAIL, max_size=limit))

    def _deliver(self, fwd: _Forward, reply: bytes) -> None:
        self._counters.forwarded += 1
        self._finish(fwd, wire.with_id(reply, fwd.client_id))

    def _finish(self, fwd: _Forward, reply: bytes) -> None:
        fwd.done = True
        self._in_flight.pop(id(fwd), None)
        client = fwd.client
        if client.tcp:
            client.pending -= 1
        client.send(reply)
        if client.tcp:
            self._maybe_close_tcp(client)

    # TCP clients -----------------------------------------------------------------------

    def _on_accept(self, _mask: int) -> None:
        try:
            sock, peer = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("dns tcp accept: %s", exc)
            return
        if len(self._tcp_clients) >= self._max_tcp:
            self._ratelog(
                "tcp-clients",
                logging.WARNING,
                "dns: %d TCP clients already connected; closing a new one from %s",
                len(self._tcp_clients),
                peer[0],
            )
            sock.close()
            return
        sock.setblocking(False)
        client = _TcpClient(self, sock, _peer(peer), time.monotonic() + self._tcp_idle)
        self._tcp_clients[id(client)] = client
        self._selector.register(sock, selectors.EVENT_READ, lambda mask, c=client: self._on_tcp_client(c, mask))

    def _on_tcp_client(self, client: _TcpClient, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_tcp(client)
        if client.closed or not mask & selectors.EVENT_READ or client.eof:
            return
        chunk = _nonblocking(lambda: self._receive(client.sock), lambda exc: self._tcp_client_failed(client, exc))
        if chunk is None:
            return
        if not chunk:
            client.eof = True
            self._update_tcp_events(client)
            self._maybe_close_tcp(client)
            return
        client.deadline = time.monotonic() + self._tcp_idle
        messages, client.inbuf = wire.split_tcp_frames(client.inbuf + chunk)
        for message in messages:
            if client.closed:
                return
            self._handle_query(message, client)

    def _flush_tcp(self, client: _TcpClient) -> None:
        if client.closed:
            return
        if client.outbuf:
            sent = _nonblocking(
                lambda: client.sock.send(client.outbuf), lambda exc: self._tcp_client_failed(client, exc)
            )
            if client.closed:
                return
            if sent is not None:
                del client.outbuf[:sent]
        if len(client.outbuf) > _MAX_TCP_OUTPUT:
            self._ratelog("tcp-slow", logging.WARNING, "dns: TCP client %s reads no replies; closed", client.peer[0])
            self._close_tcp(client)
            return
        self._update_tcp_events(client)
        self._maybe_close_tcp(client)  # a client that half-closed: done once its last reply is out

    def _update_tcp_events(self, client: _TcpClient) -> None:
        events = 0 if client.eof else selectors.EVENT_READ
        if client.outbuf:
            events |= selectors.EVENT_WRITE
        key = self._selector.get_map().get(client.sock)
        if events and key is None:
            self._selector.register(client.sock, events, lambda mask, c=client: self._on_tcp_client(c, mask))
        elif events and key is not None and key.events != events:
            self._selector.modify(client.sock, events, key.data)
        elif not events and key is not None:
            self._selector.unregister(client.sock)

    def _tcp_client_failed(self, client: _TcpClient, exc: OSError) -> None:
        """A socket call on the client failed: the connection is closed."""
        log.debug("dns tcp client %s: %s", client.peer, exc)
        self._close_tcp(client)

    def _maybe_close_tcp(self, client: _TcpClient) -> None:
        if client.eof and not client.pending and not client.outbuf:
            self._close_tcp(client)

    def _close_tcp(self, client: _TcpClient) -> None:
        if client.closed:
            return
        client.closed = True
        self._tcp_clients.pop(id(client), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()
