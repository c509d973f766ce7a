"""Real redirection between two hosts after converging traffic_capture.

host1 and host2 both carry the seed's rules. Listeners stand in for Envoy:
15001 (outbound capture) on host1, 15006 (inbound capture) and 15021 (an
excluded port) on host2. The answers say which listener took a connection and
what its original destination was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_hosts import (
    address_of,
    assert_outbound_redirected_to_15001,
    controller_of,
    excluded_inbound_answer,
    inbound_answer,
)

# The seed's listing with today's Istio additions (the tunnel port, forwarded
# traffic left alone); tests/unit/capture/test_rules.py pins it to the seed's
# own listing plus exactly those lines.
SEED_NAT = Path(__file__).resolve().parents[5] / "tests/unit/capture/seed_nat_today.txt"
APP_PORT = 8080
PROXY_UID = 1337


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_nat_table_reads_as_the_seed(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    assert SEED_NAT.exists(), f"the seed's nat listing is missing: {SEED_NAT}"
    listing = host.check_output("iptables -t nat -S").splitlines()
    # Beyond the seed's rules, only the controller's exclusion (`capture`) and
    # the rules that let already-open connections through (protect_established,
    # `capture_over_ssh`) may appear.
    controller_rule = f"-A ISTIO_OUTPUT -d {controller_of(host)}/32 -j RETURN"
    protect_rule = "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN"
    extra = [line for line in listing if line == controller_rule or line.endswith(protect_rule)]
    assert [line for line in listing if line not in extra] == SEED_NAT.read_text().splitlines()


def test_outbound_connection_is_redirected_to_local_15001(host1, host2, probe) -> None:
    assert_outbound_redirected_to_15001(host1, host2, probe, APP_PORT)


def test_inbound_connection_from_peer_is_redirected_to_15006(host1, host2, probe) -> None:
    # As the proxy user, host1's own outbound capture lets the connection leave.
    answer = inbound_answer(host1, host2, probe, APP_PORT, PROXY_UID, "inbound-host2")
    assert answer["original_dst"] == f"{address_of(host2)}:{APP_PORT}"


def test_excluded_inbound_port_is_not_redirected(host1, host2, probe) -> None:
    answer = excluded_inbound_answer(host1, host2, probe, PROXY_UID)
    assert answer["local"] == f"{address_of(host2)}:15021"


def test_ssh_port_of_a_peer_is_not_redirected(host1, host2) -> None:
    # As the proxy user (outbound not captured on host1), port 22 on host2
    # must reach sshd itself, not the inbound capture listener.
    target = address_of(host2)
    banner = host1.check_output(
        f"setpriv --reuid {PROXY_UID} --regid {PROXY_UID} --clear-groups "
        f"curl -s --max-time 3 telnet://{target}:22 </dev/null || true"
    )
    assert banner.startswith("SSH-2.0-"), banner
