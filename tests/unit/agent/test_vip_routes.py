"""The route check of the mesh's virtual IPs: which VIP is probed, what is logged, and when."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

from hostmesh_agent.vip_routes import VipRoutes, first_vips, route_error, unroutable

ZONE = {
    "web.shop.mesh.internal": (["240.240.0.10"], ["2001:2::a"]),
    "web.mesh.internal": (["240.240.0.10"], ["2001:2::a"]),
    "db.mesh.internal": ([], ["2001:2::d"]),
}
UNREACHABLE = "Network is unreachable"


class Probe:
    """Answers from a table of address -> reason (None: routed); records what it was asked."""

    def __init__(self, reasons: Dict[str, Optional[str]]) -> None:
        self.reasons = reasons
        self.asked: List[str] = []

    def __call__(self, address: str) -> Optional[str]:
        self.asked.append(address)
        return self.reasons.get(address)


def test_one_vip_per_family_is_probed_the_first_name_in_order_that_has_one():
    assert first_vips(ZONE) == (("web.mesh.internal", "240.240.0.10"), ("db.mesh.internal", "2001:2::d"))
    assert first_vips({}) == (None, None)
    probe = Probe({"2001:2::d": UNREACHABLE})
    assert unroutable(ZONE, probe) == [(6, "db.mesh.internal", "2001:2::d", UNREACHABLE)]
    assert probe.asked == ["240.240.0.10", "2001:2::d"]


def test_a_missing_ipv4_route_is_a_warning_once_and_its_return_is_logged(caplog):
    probe = Probe({"240.240.0.10": UNREACHABLE, "2001:2::d": UNREACHABLE})
    routes = VipRoutes(probe)
    with caplog.at_level(logging.INFO, logger="hostmesh_agent.vip_routes"):
        routes.check(ZONE)
        routes.check(ZONE)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert (
        "no route to the virtual IP 240.240.0.10 of web.mesh.internal (Network is unreachable): applications "
        "cannot connect to mesh names until a route covers it (a default route does)" in warnings[0].getMessage()
    )
    assert caplog.text.count("no IPv6 route to the virtual IP 2001:2::d") == 1
    caplog.clear()
    probe.reasons = {}
    with caplog.at_level(logging.INFO, logger="hostmesh_agent.vip_routes"):
        routes.check(ZONE)
    assert [r.getMessage() for r in caplog.records] == ["dns: the virtual IPs are routed now"]


def test_routed_vips_log_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="hostmesh_agent.vip_routes"):
        VipRoutes(Probe({})).check(ZONE)
    assert caplog.records == []


def test_the_probe_is_a_route_lookup_that_sends_nothing():
    assert route_error("127.0.0.1") is None
