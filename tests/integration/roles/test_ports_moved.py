"""The sidecar with every port of the contract moved: requests still flow through both sidecars.

Two sandbox hosts in group ``mesh`` are onboarded with playbooks/onboard.yml
and ``hostmesh_ports`` moving the outbound, inbound, admin, status, health
and Prometheus ports (the admin API is on its Unix socket unless asked for
on TCP, so its moved port must stay closed). pb runs an HTTP app; pa calls it at pb's address. The
request can only reach the app through pa's capture rules and Envoy's
outbound listener (the only listener on the moved outbound port; nothing
listens on Istio's ports) and pb's capture rules and inbound listener (the
app sees the sidecar's 127.0.0.6, and pb's inbound listener counts it). The
readiness waits of both roles pass on the moved status port.
"""

from __future__ import annotations

import re

import pytest
from conftest import PAIR, MeshPair, PlayResult, boot_pair

from ansible_collections.hostmesh.sidecar.plugins.module_utils._sidecar_ports import DEFAULT_PORTS

pytestmark = [pytest.mark.sandbox, pytest.mark.envoy]

MOVED = {
    "admin": 16000,
    "outbound": 16001,
    "inbound": 16006,
    "status": 16020,
    "health": 16021,
    "prometheus": 16090,
    "tunnel": 16008,
}
# Nothing listens on these: the admin API is on its Unix socket; the tunnel port is only kept out of capture.
UNBOUND = ("admin", "tunnel")
# The contract's default, Istio's, for each port moved.
ISTIO = {name: DEFAULT_PORTS[name] for name in MOVED}
APP_PORT = 8080
PLAYBOOK = "onboard_mesh.yml"


def assert_ok(result: PlayResult) -> None:
    assert result.rc == 0, result.output[-6000:]


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MeshPair:
    workdir = tmp_path_factory.mktemp("ports")
    pair = boot_pair(request, workdir, "pytest-ports")
    controller = pair.sandbox.state()["controller"]
    pair.set_mesh(
        {
            "hostmesh_ports": MOVED,
            "hostmesh_ca_dir": str(workdir / "ca"),
            # Ansible's own replies must never be captured (docs/sandbox.md).
            "hostmesh_capture_options": {"outbound_cidrs_exclude": [f"{controller}/32"]},
        },
        {"pb": {"hostmesh_services": [{"name": "echo", "port": APP_PORT, "protocol": "http"}]}},
    )
    pair.sh(
        "pb",
        "mkdir -p /srv/echo && echo 'echo from pb' > /srv/echo/index.html && systemd-run --unit echo-app"
        f" --property DynamicUser=yes python3 -m http.server {APP_PORT} --bind 0.0.0.0 --directory /srv/echo",
    )
    return pair


def listening(pair: MeshPair, host: str) -> set[str]:
    """Local address:port of every listening TCP socket."""
    return {line.split()[3] for line in pair.sh(host, "ss -Htln").splitlines() if line.strip()}


def counter(stats: str, name: str) -> int:
    match = re.search(rf"^{re.escape(name)}: (\d+)$", stats, re.M)
    assert match, f"{name} not in Envoy's stats"
    return int(match.group(1))


def fingerprint(pair: MeshPair, host: str) -> str:
    return pair.sh(
        host,
        "sha256sum /etc/hostmesh/agent.json /etc/hostmesh/capture.rules /etc/hostmesh/*.state;"
        " iptables -w -t nat -S; iptables -w -t mangle -S; systemctl show --property MainPID --value hostmesh-agent.service",
    )


def test_onboarding_with_moved_ports_routes_a_request_through_both_sidecars(pair: MeshPair) -> None:
    assert_ok(pair.play(PLAYBOOK))
    for host in PAIR:
        sockets = listening(pair, host)
        ports = {address.rsplit(":", 1)[1] for address in sockets}
        assert not {str(MOVED[name]) for name in UNBOUND} & ports, (host, sockets)
        assert {str(port) for name, port in MOVED.items() if name not in UNBOUND} <= ports, (host, sockets)
        assert not {str(port) for port in ISTIO.values()} & ports, (host, sockets)
        nat = pair.sh(host, "iptables -w -t nat -S")
        assert f"REDIRECT --to-ports {MOVED['outbound']}" in nat and f"REDIRECT --to-ports {MOVED['inbound']}" in nat
        assert "--to-ports 15001" not in nat and "--to-ports 15006" not in nat and "15008" not in nat
        # The moved tunnel port, the user's SSH port, then the moved prometheus, health and status ports, are never captured.
        excluded = re.findall(r"^-A HOSTMESH_INBOUND -p tcp -m tcp --dport (\d+) -j RETURN$", nat, re.M)
        assert excluded == ["16008", "22", "16090", "16021", "16020"], nat
        health = f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{MOVED['health']}/healthz/ready"
        assert pair.sh(host, health) == "200"

    admin = "--unix-socket /run/hostmesh/admin.sock http://localhost/stats"
    inbound_stat = "'http://localhost/stats?filter=^listener.inbound.downstream_cx_total$'"
    before = int(pair.sh("pb", "journalctl -u echo-app --no-pager -o cat | wc -l"))
    body = pair.sh("pa", f"curl -sf --max-time 10 http://{pair.address('pb')}:{APP_PORT}/")
    assert body.strip() == "echo from pb"
    # pa's sidecar took the call on its outbound listener and sent it to the echo upstream ...
    out = pair.sh("pa", f"curl -s {admin}")
    assert counter(out, "listener.outbound.downstream_cx_total") > 0
    assert counter(out, f"cluster.outbound|{APP_PORT}||echo.upstream_rq_total") > 0
    # ... and pb's sidecar took it on its inbound listener and handed it to the app.
    inbound = pair.sh("pb", f"curl -s --unix-socket /run/hostmesh/admin.sock {inbound_stat}")
    assert counter(inbound, "listener.inbound.downstream_cx_total") > 0
    log = pair.sh("pb", "journalctl -u echo-app --no-pager -o cat").splitlines()[before:]
    assert log and log[-1].startswith("127.0.0.6 "), log


def test_a_second_run_changes_nothing(pair: MeshPair) -> None:
    again = pair.play(PLAYBOOK)
    assert_ok(again)
    assert re.findall(r"changed=(\d+)", again.output) == ["0", "0"], again.output[-4000:]


def test_a_capture_port_against_the_contract_fails_before_anything_changes(pair: MeshPair) -> None:
    before = {host: fingerprint(pair, host) for host in PAIR}
    options = {
        "outbound_cidrs_exclude": [f"{pair.sandbox.state()['controller']}/32"],
        "proxy_port": ISTIO["outbound"],
    }
    result = pair.play(PLAYBOOK, {"hostmesh_capture_options": options})
    assert result.rc != 0
    for host in PAIR:
        assert (
            f"host '{host}': hostmesh_capture_options.proxy_port: got 15001; expected 16001, the contract's"
            " hostmesh_ports.outbound, or the option left out: set it in hostmesh_ports, which capture and the agent"
            " both read" in result.output
        ), result.output[-4000:]
    assert {host: fingerprint(pair, host) for host in PAIR} == before
