"""The agent's DNS server, kept in step with the config.

``MeshDns.configure(cfg)`` is called at start and on every config reload: the zone (the
outbound services' names and VIPs) is swapped in place, so the running server answers
from it on the next query; a change of address, port, domain, TTL or upstreams replaces
the server. Envoy is never restarted for a DNS change.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hostmesh_agent.config import Config, dns_upstream, mesh_names
from hostmesh_agent.dns_server import DnsServer
from hostmesh_agent.dns_upstreams import Upstream, UpstreamSource
from hostmesh_agent.vip_routes import VipRoutes

log = logging.getLogger(__name__)

ServerFactory = Callable[..., Any]


def server_settings(cfg: Config) -> Optional[Tuple[Any, ...]]:
    """What a running server cannot change in place; None when DNS is off."""
    d = cfg.dns
    if not d.enabled:
        return None
    return (d.address, cfg.ports.dns, d.domain, d.ttl_s, d.upstreams)


class MeshDns:
    def __init__(self, server_factory: ServerFactory = DnsServer, routes: Optional[VipRoutes] = None) -> None:
        self._factory = server_factory
        self._routes = routes or VipRoutes()
        self._server: Optional[Any] = None
        self._settings: Optional[Tuple[Any, ...]] = None
        self._zone: Dict[str, Tuple[List[str], List[str]]] = {}

    @property
    def server(self) -> Optional[Any]:
        return self._server

    def zone(self) -> Dict[str, Tuple[List[str], List[str]]]:
        """The server's ``zone_getter``: the same object until the names change."""
        return self._zone

    def configure(self, cfg: Config, strict: bool = False) -> None:
        """Take ``cfg`` on. A server that cannot listen raises OSError when ``strict`` (at
        start); on a reload it is logged and the previous server is put back."""
        zone = mesh_names(cfg)
        settings = server_settings(cfg)
        if zone != self._zone:
            self._zone = zone
            if self._server is not None:
                log.info("dns: mesh zone updated, %d names", len(zone))
            if settings is not None:
                self._routes.check(zone)
        if settings == self._settings:
            return
        previous = self._settings
        self.stop()
        try:
            self._start(cfg, settings)
        except OSError as exc:
            if strict:
                raise
            log.error("dns: %s (config keys 'dns.address', 'ports.dns'); config reload not applied to DNS", exc)
            if previous is not None:
                self._restart_previous(previous)

    def _start(self, cfg: Config, settings: Optional[Tuple[Any, ...]]) -> None:
        if settings is None:
            return
        d = cfg.dns
        server = self._factory(
            d.address,
            cfg.ports.dns,
            zone_getter=self.zone,
            upstreams_getter=_upstreams(d.upstreams, d.address, cfg.ports.dns),
            domain=d.domain,
            ttl=d.ttl_s,
        )
        server.start()
        self._server, self._settings = server, settings
        upstreams = ", ".join(d.upstreams) if d.upstreams else "learned from the host's resolv.conf"
        log.info(
            "dns: answering %s on %s port %d (UDP and TCP), %d names; other names to %s",
            d.domain,
            d.address,
            cfg.ports.dns,
            len(self._zone),
            upstreams,
        )

    def _restart_previous(self, previous: Tuple[Any, ...]) -> None:
        address, port, domain, ttl, upstreams = previous
        try:
            server = self._factory(
                address,
                port,
                zone_getter=self.zone,
                upstreams_getter=_upstreams(upstreams, address, port),
                domain=domain,
                ttl=ttl,
            )
            server.start()
        except OSError as exc:
            log.error("dns: cannot listen again on %s port %d either: %s; DNS is off", address, port, exc)
            return
        self._server, self._settings = server, previous

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server, self._settings = None, None

    def render_metrics(self) -> str:
        return self._server.counters.render() if self._server is not None else ""


def _upstreams(configured: Sequence[str], address: str, port: int) -> Callable[[], Sequence[Upstream]]:
    """Configured upstreams as given (config.py refused the agent's own listener), or the
    host's resolvers as the C library reads them, re-read when they change."""
    if configured:
        fixed = tuple(Upstream(*dns_upstream(u)) for u in configured)
        return lambda: fixed
    return UpstreamSource(address, port)
