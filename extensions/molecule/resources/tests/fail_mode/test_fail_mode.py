"""hostmesh_capture_fail_mode on real systemd: host1 fails closed, host2 fails open.

The side effect rebooted both hosts with an Envoy that exits at once. The
tests run in file order: first what each mode does when Envoy cannot come up,
then Envoy is put back (the ``envoy_restored`` fixture) and recovery, agent
failures, restarts and an explicit stop are checked on healthy hosts.
"""

from __future__ import annotations

import json

import pytest
from sandbox_hosts import address_of

APP_PORT = 8080
ENVOY_KEPT = "/var/lib/hostmesh-test/envoy.good"
AGENT = "hostmesh-agent.service"
CAPTURE = "hostmesh-capture.service"
# Shell conditions, true when ...
AGENT_READY = "curl -sf --max-time 2 -o /dev/null http://127.0.0.1:15020/healthz/ready"
INBOUND_CAPTURED = "iptables -w -t nat -S PREROUTING | grep -q HOSTMESH_INBOUND"
CAPTURE_GONE = "! iptables -w -t nat -S | grep -q HOSTMESH_"
CAPTURE_UNIT_ACTIVE = f"systemctl is-active -q {CAPTURE}"
# The proxy's own traffic is never captured: run as its uid, a client on a
# captured host reaches another host directly.
AS_PROXY = "setpriv --reuid=1337 --regid=1337 --clear-groups"


def hosts_by_mode(mode: str, host1, host2):
    """(the host in that fail mode, the other host)."""
    return (host1, host2) if mode == "closed" else (host2, host1)


def nat_rules(host) -> str:
    return host.check_output("iptables -w -t nat -S")


def capture_on(host) -> bool:
    nat = nat_rules(host)
    return "REDIRECT --to-ports 15006" in nat and "REDIRECT --to-ports 15001" in nat


def capture_absent(host) -> bool:
    return "HOSTMESH_" not in nat_rules(host)


def wait_for(host, condition: str, timeout: int) -> bool:
    """Poll a shell condition on the host every 0.2 s for at most timeout seconds."""
    result = host.run(
        f"for i in $(seq {timeout * 5}); do if ({condition}) >/dev/null 2>&1; then exit 0; fi; sleep 0.2; done; exit 1"
    )
    return result.rc == 0


def app_hits(host, client: str) -> int:
    """How many requests the host's application logged from that address."""
    out = host.check_output(f"journalctl -u echo-app.service --no-pager -o cat | grep -c '^{client} ' || true")
    return int(out.strip() or 0)


def app_hit_again(host, client: str, before: int, timeout: int) -> bool:
    """Whether the application logs a request from that address within timeout seconds."""
    logged = f"journalctl -u echo-app.service --no-pager -o cat | grep -c '^{client} '"
    return wait_for(host, f"[ $({logged}) -gt {before} ]", timeout)


def envoy_binary(host) -> str:
    return json.loads(host.file("/etc/hostmesh/agent.json").content_string)["envoy"]["binary"]


def observe(host, action: str, until: str, timeout: int = 120) -> tuple[int, int, bool]:
    """Run action while sampling inbound capture every 50 ms, until the condition holds.

    Returns (samples with capture on, samples with it off, condition reached).
    """
    script = f"""
log=$(mktemp)
( while [ ! -e "$log.stop" ]; do
    if {INBOUND_CAPTURED}; then echo on; else echo off; fi
    sleep 0.05
  done > "$log" ) &
sampler=$!
sleep 0.5
{action}
sleep 1
reached=0
for i in $(seq {timeout * 5}); do
  if ({until}) >/dev/null 2>&1; then reached=1; break; fi
  sleep 0.2
done
sleep 1
touch "$log.stop"
wait $sampler
echo "$(grep -c '^on' "$log") $(grep -c '^off' "$log") $reached"
rm -f "$log" "$log.stop"
"""
    on, off, reached = host.check_output(script).split()
    return int(on), int(off), reached == "1"


HEALTHY = f"{AGENT_READY} && {CAPTURE_UNIT_ACTIVE} && {INBOUND_CAPTURED}"


# --- Envoy cannot come up (after the side effect's reboot) ---------------------


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_envoy_cannot_start_after_the_reboot(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    assert host.run(f"{envoy_binary(host)} --version").rc != 0
    assert host.file(ENVOY_KEPT).exists
    assert host.run(AGENT_READY).rc != 0
    for unit in (AGENT, CAPTURE):
        assert host.service(unit).is_enabled, unit


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_a_sidecar_that_cannot_start_does_not_hold_up_the_boot(name, host1, host2) -> None:
    """multi-user.target and the rest of the boot finish while the agent keeps failing."""
    host = host1 if name == "host1" else host2
    state = host.run("timeout 60 systemctl is-system-running --wait")
    # degraded: some unit failed (a capture unit whose readiness wait gave up, say).
    assert state.stdout.strip() in ("running", "degraded"), host.run("systemctl list-jobs --no-pager").stdout
    assert host.run("systemctl is-active -q multi-user.target").rc == 0
    assert host.run(AGENT_READY).rc != 0


def test_closed_capture_is_on_after_the_reboot(host1) -> None:
    # Bounded wait: the capture unit waits for a ready sidecar first.
    assert wait_for(host1, INBOUND_CAPTURED, 150), nat_rules(host1)
    assert capture_on(host1), nat_rules(host1)
    # It stays on while systemd keeps restarting the failing agent.
    on, off = observe(host1, "true", "false", timeout=10)[:2]
    assert off == 0, f"capture lapsed in {off} of {on + off} samples"
    assert wait_for(host1, CAPTURE_UNIT_ACTIVE, 60)
    # ... and the sidecar is still not ready.
    assert host1.run(AGENT_READY).rc != 0


def test_open_capture_is_off_after_the_reboot(host2) -> None:
    on, off = observe(host2, "true", "false", timeout=10)[:2]
    assert on == 0, f"capture on in {on} of {on + off} samples"
    assert capture_absent(host2), nat_rules(host2)
    assert not host2.service(CAPTURE).is_running
    assert host2.run(AGENT_READY).rc != 0


def test_closed_app_is_not_reached_directly(host1, host2) -> None:
    # The application on host1 is up (loopback is not captured) ...
    page = host1.check_output(f"curl -sf --max-time 5 http://127.0.0.1:{APP_PORT}/")
    assert page.strip() == "echo from host1"
    # ... but a client on host2 (whose capture is off: open) does not reach it.
    client = address_of(host2)
    before = app_hits(host1, client)
    result = host2.run(f"curl -s --max-time 5 http://{address_of(host1)}:{APP_PORT}/")
    assert result.rc != 0, result.stdout
    assert "echo from host1" not in result.stdout
    assert not app_hit_again(host1, client, before, 2)


def test_open_app_is_reached_directly(host1, host2) -> None:
    client = address_of(host1)
    before = app_hits(host2, client)
    page = host1.check_output(f"{AS_PROXY} curl -sf --max-time 10 http://{address_of(host2)}:{APP_PORT}/")
    assert page.strip() == "echo from host2"
    # The application saw host1's own address: no sidecar in between.
    assert app_hit_again(host2, client, before, 10)


# --- Envoy back --------------------------------------------------------------


@pytest.fixture(scope="module")
def envoy_restored(host1, host2):
    """Put the working Envoy back (atomically, as a package manager would) and restart the sidecar.

    The restart is the operator's: an agent that gave up (crash loop past
    max_consecutive_crashes) again and again soon hits systemd's start limit
    and stays failed.
    """
    for host in (host1, host2):
        binary = envoy_binary(host)
        host.run_expect(
            [0], f"ln -f {ENVOY_KEPT} {binary}.restored && mv -f {binary}.restored {binary} && rm -f {ENVOY_KEPT}"
        )
        host.run_expect([0], f"systemctl restart {AGENT}")
    for host in (host1, host2):
        assert wait_for(host, AGENT_READY, 120), host.run(f"systemctl status {AGENT} --no-pager").stdout


def test_closed_recovers_with_capture_on(host1, envoy_restored) -> None:
    assert wait_for(host1, HEALTHY, 60), nat_rules(host1)
    assert capture_on(host1)


def test_open_puts_capture_back_when_the_agent_recovers(host2, envoy_restored) -> None:
    assert wait_for(host2, HEALTHY, 60), nat_rules(host2)
    assert capture_on(host2)


@pytest.mark.parametrize(("client_name", "server_name"), [("host1", "host2"), ("host2", "host1")])
def test_calls_go_through_both_sidecars_again(client_name, server_name, host1, host2, envoy_restored) -> None:
    client, server = (host1, host2) if client_name == "host1" else (host2, host1)
    page = client.check_output(f"curl -sf --max-time 10 http://{address_of(server)}:{APP_PORT}/")
    assert page.strip() == f"echo from {server_name}"
    last = server.check_output("journalctl -u echo-app.service --no-pager -o cat -n 1")
    # The application saw the request come from its own sidecar, not from the client.
    assert not last.startswith(address_of(client) + " "), last


# --- the agent fails, restarts, stops ---------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        # systemd restarts a killed agent on its own (Restart=on-failure).
        f"kill -9 $(systemctl show -p MainPID --value {AGENT})",
        f"systemctl restart {AGENT}",
    ],
    ids=["killed", "restarted"],
)
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_agent_killed_or_restarted(mode, action, host1, host2, envoy_restored) -> None:
    host = hosts_by_mode(mode, host1, host2)[0]
    on, off, reached = observe(host, action, HEALTHY)
    # Either way capture is back once the agent is ready again.
    assert reached, (on, off, nat_rules(host))
    if mode == "closed":
        assert off == 0, f"capture lapsed in {off} of {on + off} samples"
    else:
        # open: capture is lifted until the agent is ready again.
        assert off > 0, f"capture never lifted in {on} samples"


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_stop_lifts_capture_and_start_puts_it_back(mode, host1, host2, envoy_restored) -> None:
    host, other = hosts_by_mode(mode, host1, host2)
    name = "host1" if mode == "closed" else "host2"
    host.run_expect([0], f"systemctl stop {AGENT}")
    # systemctl returns when the agent has stopped; the capture unit's stop,
    # which removes the rules, may still be running (closed: no ordering).
    assert wait_for(host, CAPTURE_GONE, 30), nat_rules(host)
    assert capture_absent(host), nat_rules(host)
    assert not host.service(CAPTURE).is_running
    # The application is reached directly.
    client = address_of(other)
    before = app_hits(host, client)
    page = other.check_output(f"{AS_PROXY} curl -sf --max-time 10 http://{address_of(host)}:{APP_PORT}/")
    assert page.strip() == f"echo from {name}"
    assert app_hit_again(host, client, before, 10)
    # Starting the agent pulls the capture unit in again.
    host.run_expect([0], f"systemctl start {AGENT}")
    assert wait_for(host, HEALTHY, 60), nat_rules(host)
    assert capture_on(host)
