"""Two onboarded hosts: host1 calls host2's service through both sidecars."""

from __future__ import annotations

import pytest
from sandbox_hosts import address_of, assert_sidecar_ready

APP_PORT = 8080


def capture_mode(host) -> str:
    """The inventory's hostmesh_capture_mode (redirect unless the scenario says tproxy)."""
    return host.ansible.get_variables().get("hostmesh_capture_mode", "redirect")


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_sidecar_is_running_and_ready(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    assert_sidecar_ready(host)


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_capture_is_on(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    nat = host.check_output("iptables -t nat -S")
    assert "REDIRECT --to-ports 15001" in nat
    if capture_mode(host) == "tproxy":
        mangle = host.check_output("iptables -t mangle -S")
        assert "TPROXY --on-port 15006" in mangle, mangle
        # Inbound goes by TPROXY, not nat; nat's IN_REDIRECT only takes the proxy's own
        # calls to this host, as in Istio.
        assert "-j HOSTMESH_INBOUND" not in nat, nat
    else:
        assert "REDIRECT --to-ports 15006" in nat


def test_call_goes_through_both_sidecars(host1, host2) -> None:
    target = address_of(host2)
    before = host2.check_output("journalctl -u echo-app.service --no-pager -o cat | wc -l")
    body = host1.check_output(f"curl -sf --max-time 10 http://{target}:{APP_PORT}/")
    assert body.strip() == "echo from host2"
    # host1's sidecar sent the request upstream ...
    out_stats = host1.check_output(
        "curl -s --unix-socket /run/hostmesh/admin.sock http://localhost/stats | grep -E 'echo.*upstream_rq_total' || true"
    )
    assert any(int(line.rsplit(":", 1)[1]) > 0 for line in out_stats.splitlines()), out_stats
    # ... and the request reached the application through host2's sidecar: with
    # redirect it comes from the sidecar (127.0.0.6), with tproxy the sidecar
    # keeps host1's address as the source.
    log = host2.check_output("journalctl -u echo-app.service --no-pager -o cat")
    new_lines = log.splitlines()[int(before) :]
    assert new_lines, log
    if capture_mode(host2) == "tproxy":
        assert new_lines[-1].startswith(address_of(host1) + " "), new_lines[-1]
    else:
        assert new_lines[-1].startswith("127.0.0.6 "), new_lines[-1]
    inbound = host2.check_output(
        "curl -s --unix-socket /run/hostmesh/admin.sock 'http://localhost/stats?filter=^listener.inbound.downstream_cx_total$'"
    )
    assert int(inbound.rsplit(":", 1)[1]) > 0, inbound
