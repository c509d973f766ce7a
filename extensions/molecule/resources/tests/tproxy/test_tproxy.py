"""Real TPROXY interception between two hosts after converging traffic_capture.

Inbound connections to host2 reach a transparent listener on 15006 with their
destination and source addresses unchanged; outbound still goes to 15001.
"""

from __future__ import annotations

import pytest
from sandbox_hosts import address_of, assert_outbound_redirected_to_15001, excluded_inbound_answer, inbound_answer

APP_PORT = 8080
PROXY_UID = 1337


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_policy_routing_for_marked_packets(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    assert "fwmark 0x539 lookup 133" in host.check_output("ip rule")
    assert "local default dev lo" in host.check_output("ip route show table 133")


def test_inbound_keeps_destination_and_source(host1, host2, probe) -> None:
    answer = inbound_answer(host1, host2, probe, APP_PORT, PROXY_UID, "tproxy-host2", transparent=True)
    assert answer["local"] == f"{address_of(host2)}:{APP_PORT}"


def test_outbound_is_still_redirected_to_15001(host1, host2, probe) -> None:
    assert_outbound_redirected_to_15001(host1, host2, probe, APP_PORT)


def test_excluded_inbound_port_is_not_intercepted(host1, host2, probe) -> None:
    excluded_inbound_answer(host1, host2, probe, PROXY_UID)
