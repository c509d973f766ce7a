"""A client for the few Envoy admin endpoints the agent uses, over the admin Unix socket.

Envoy's admin API can read every secret path and stop Envoy (``POST /quitquitquit``), so
it listens on a Unix socket in the run directory, mode 0600, owned by the proxy user:
only that user (Envoy and the agent) and root can connect.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Dict, Optional, Protocol, Tuple
from urllib.parse import quote

# server.state gauge values (envoy.admin.v3.ServerInfo.State)
STATE_LIVE = 0
STATE_DRAINING = 1

_READINESS_STATS = (
    "server.state",
    "server.hot_restart_epoch",
    "listener_manager.total_listeners_active",
    "listener_manager.total_listeners_warming",
    "listener_manager.lds.update_success",
    "cluster_manager.cds.update_success",
)


class AdminError(OSError):
    """Envoy's admin API did not answer as expected."""


@dataclass(frozen=True)
class EnvoyReadiness:
    live: bool
    epoch: int
    listeners_active: int
    listeners_warming: int
    lds_updates: int
    cds_updates: int


def parse_stats(text: str) -> Dict[str, int]:
    """Parse the admin ``/stats`` text format (``name: value``), counters and gauges only."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out


def readiness_from_stats(stats: Dict[str, int]) -> EnvoyReadiness:
    return EnvoyReadiness(
        live=stats.get("server.state", -1) == STATE_LIVE,
        epoch=stats.get("server.hot_restart_epoch", -1),
        listeners_active=stats.get("listener_manager.total_listeners_active", 0),
        listeners_warming=stats.get("listener_manager.total_listeners_warming", 0),
        lds_updates=stats.get("listener_manager.lds.update_success", 0),
        cds_updates=stats.get("cluster_manager.cds.update_success", 0),
    )


def parse_response(raw: bytes, what: str) -> Tuple[int, bytes]:
    """Status and body of a whole HTTP/1.1 response read until the server closed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise AdminError(f"envoy admin {what}: malformed response")
    headers = {k.strip().lower(): v.strip().lower() for k, _sep, v in (h.partition(b":") for h in lines[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body, what)
    return int(parts[1]), body


def _dechunk(data: bytes, what: str) -> bytes:
    out, pos = [], 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise AdminError(f"envoy admin {what}: truncated chunked body")
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


class Admin(Protocol):
    """The Envoy admin calls the Agent makes; each raises AdminError when Envoy does not answer."""

    def readiness(self) -> EnvoyReadiness:
        """The stats that say whether the epoch answering is ready."""

    def active_connections(self, stat_prefixes: Tuple[str, ...]) -> int:
        """Open downstream connections on the listeners with these stat prefixes."""

    def drain_listeners(self) -> None:
        """Start Envoy's graceful drain of its inbound listeners."""

    def prometheus(self) -> bytes:
        """Envoy's stats in Prometheus text format."""


class EnvoyAdmin:
    """Talks HTTP/1.1 to Envoy's admin API on its Unix socket; the real ``Admin``."""

    def __init__(self, socket_path: str, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """One HTTP/1.1 exchange on a fresh connection; http.client would pull in ssl and
        email (~8 MiB of RSS) for what is a request line and a status line."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout or self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: envoy-admin\r\nConnection: close\r\n\r\n".encode())
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise AdminError(f"envoy admin {method} {path}: {exc}") from exc
        return parse_response(b"".join(chunks), f"{method} {path}")

    def stats(self, names: Tuple[str, ...]) -> Dict[str, int]:
        pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
        status, body = self.request("GET", "/stats?filter=" + quote(pattern, safe=""))
        if status != 200:
            raise AdminError(f"envoy admin /stats answered {status}")
        return parse_stats(body.decode(errors="replace"))

    def readiness(self) -> EnvoyReadiness:
        return readiness_from_stats(self.stats(_READINESS_STATS))

    def active_connections(self, stat_prefixes: Tuple[str, ...]) -> int:
        """Open downstream connections on the traffic listeners (not admin or health)."""
        names = tuple(f"listener.{p}.downstream_cx_active" for p in stat_prefixes)
        return sum(self.stats(names).values())

    def drain_listeners(self) -> None:
        """Start Envoy's graceful drain: listeners keep serving for --drain-time-s, then close."""
        status, body = self.request("POST", "/drain_listeners?graceful&inboundonly")
        if status != 200:
            raise AdminError(f"envoy admin /drain_listeners answered {status}: {body[:200]!r}")

    def prometheus(self) -> bytes:
        status, body = self.request("GET", "/stats/prometheus", timeout=5.0)
        if status != 200:
            raise AdminError(f"envoy admin /stats/prometheus answered {status}")
        return body
