"""The host's real resolvers: where the agent forwards every name that is not the mesh's.

Learned as the C library would (resolv.conf's ``nameserver`` lines, the first three, in
order; none means 127.0.0.1), except that systemd-resolved's stub (127.0.0.53/54) is
replaced by the upstreams resolved itself uses (/run/systemd/resolve/resolv.conf): with
``dns_capture_all`` the queries resolved sends are redirected to the agent too, so
forwarding to the stub would go round in a circle. Any address that is the agent's own
listener is dropped, for the same reason.

Pure functions over file text, plus ``UpstreamSource``: the one edge that reads the files,
again only when they change.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
LIBC_MAX_NAMESERVERS = 3  # glibc and musl MAXNS: later nameserver lines are never asked
LIBC_DEFAULT = "127.0.0.1"  # what libc asks when resolv.conf names no server
DNS_PORT = 53


class Upstream(NamedTuple):
    """One resolver; an IPv6 link-local address keeps its scope (``fe80::1%eth0``)."""

    address: str
    port: int = DNS_PORT


@dataclass(frozen=True)
class UpstreamChoice:
    upstreams: Tuple[Upstream, ...]
    source: str  # which file the list came from
    notes: Tuple[str, ...]  # what was skipped or replaced, and why: for the log


def parse_nameservers(text: str) -> Tuple[List[Upstream], List[str]]:
    """Every ``nameserver`` address in resolv.conf text, in order, and notes on lines skipped.

    ``search``, ``domain``, ``options`` and comments are not about where to send queries:
    the client's own resolver applies them before a query reaches the agent.
    """
    upstreams: List[Upstream] = []
    notes: List[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        address = words[1]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            notes.append(f"line {number}: nameserver {address!r} is not an IP address; skipped, as libc does")
            continue
        if Upstream(address) not in upstreams:
            upstreams.append(Upstream(address))
    return upstreams, notes


def is_resolved_stub(upstream: Upstream) -> bool:
    return upstream.address in RESOLVED_STUBS


def is_own_listener(upstream: Upstream, listen_address: str, listen_port: int) -> bool:
    """Whether sending to ``upstream`` would reach the agent's own DNS listener.

    The listener is on one specific address (never a wildcard), so only that address and
    port loop; ``::ffff:127.0.0.1`` is the same socket as ``127.0.0.1``.
    """
    if upstream.port != listen_port:
        return False
    return _canonical(upstream.address) == _canonical(listen_address)


def _canonical(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def choose_upstreams(
    resolv_conf: str,
    resolved_upstreams: Optional[str],
    listen_address: str,
    listen_port: int,
) -> UpstreamChoice:
    """Where to forward, from resolv.conf's text and (if it exists) resolved's upstream file."""
    servers, notes = parse_nameservers(resolv_conf)
    source = RESOLV_CONF
    if len(servers) > LIBC_MAX_NAMESERVERS:
        skipped = ", ".join(u.address for u in servers[LIBC_MAX_NAMESERVERS:])
        notes.append(f"only the first {LIBC_MAX_NAMESERVERS} nameservers are used, as libc does; not {skipped}")
        servers = servers[:LIBC_MAX_NAMESERVERS]
    if not servers:
        notes.append(f"no nameserver in {RESOLV_CONF}: using {LIBC_DEFAULT}, as libc does")
        servers = [Upstream(LIBC_DEFAULT)]
    if any(is_resolved_stub(u) for u in servers):
        real, resolved_notes = parse_nameservers(resolved_upstreams or "")
        notes += [f"{RESOLVED_UPSTREAMS} {n}" for n in resolved_notes]
        real = [u for u in real if not is_resolved_stub(u)]
        if real:
            source = RESOLVED_UPSTREAMS
            merged: List[Upstream] = []
            for u in servers:
                for v in real if is_resolved_stub(u) else [u]:
                    if v not in merged:
                        merged.append(v)
            servers = merged
        else:
            notes.append(
                f"{RESOLV_CONF} points at systemd-resolved's stub but {RESOLVED_UPSTREAMS} lists no upstream "
                "server: forwarding to the stub (this loops if resolved's own queries are captured too)"
            )
    kept = [u for u in servers if not is_own_listener(u, listen_address, listen_port)]
    if len(kept) < len(servers):
        notes.append(f"dropped {listen_address} port {listen_port}: that is the agent's own DNS listener")
    return UpstreamChoice(tuple(kept), source, tuple(notes))


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _signature(path: str) -> Optional[Tuple[int, int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class UpstreamSource:
    """``upstreams_getter`` for the DNS server: the current upstreams from the host's files.

    Looks at the files at most every ``check_interval`` seconds and re-reads them only when
    one changed (DHCP rewriting resolv.conf, resolved learning a new server), so forwarding
    follows the host's DNS with no restart. Returns the same tuple while nothing changed.
    """

    def __init__(
        self,
        listen_address: str,
        listen_port: int,
        resolv_conf: str = RESOLV_CONF,
        resolved_upstreams: str = RESOLVED_UPSTREAMS,
        check_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listen = (listen_address, listen_port)
        self._paths = (resolv_conf, resolved_upstreams)
        self._interval = check_interval
        self._clock = clock
        self._checked_at: Optional[float] = None
        self._signatures: Optional[Tuple[object, ...]] = None
        self._choice = UpstreamChoice((), resolv_conf, ())

    def __call__(self) -> Sequence[Upstream]:
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._interval:
            self._checked_at = now
            signatures = tuple(_signature(p) for p in self._paths)
            if signatures != self._signatures:
                self._signatures = signatures
                self._reload()
        return self._choice.upstreams

    def _reload(self) -> None:
        resolv_text = _read_text(self._paths[0])
        if resolv_text is None:
            resolv_text = ""
        choice = choose_upstreams(resolv_text, _read_text(self._paths[1]), *self._listen)
        if choice != self._choice:
            for note in choice.notes:
                log.warning("dns upstreams: %s", note)
            if choice.upstreams:
                log.info("dns upstreams (from %s): %s", choice.source, ", ".join(u.address for u in choice.upstreams))
            else:
                log.error("dns upstreams: none left to forward to; names outside the mesh get SERVFAIL")
        self._choice = choice
