"""A client for the few Envoy admin endpoints the agent uses."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Dict, Optional, Tuple
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


class EnvoyAdmin:
    """Talks HTTP/1.1 to Envoy's admin listener (loopback only)."""

    def __init__(self, address: str, port: int, timeout: float = 2.0) -> None:
        self.address = address
        self.port = port
        self.timeout = timeout

    def request(self, method: str, path: str, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=timeout or self.timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"envoy admin {method} {path}: {exc}") from exc
        finally:
            conn.close()

    def stats(self, names: Tuple[str, ...]) -> Dict[str, int]:
        pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
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
