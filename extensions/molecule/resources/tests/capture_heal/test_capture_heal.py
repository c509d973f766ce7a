"""Capture that heals itself: host2 fails closed, host1 fails open; host1 calls host2's echo service.

Each test removes capture on a host behind the collection's back and checks
what hostmesh-capture-heal.service does. They run in file order: the
flushes first, then a deliberate stop of the agent, then (failing open) a
sidecar that is not ready.
"""

from __future__ import annotations

import re

import pytest
from sandbox_hosts import address_of

APP_PORT = 8080
AGENT = "hostmesh-agent.service"
CAPTURE = "hostmesh-capture.service"
HEAL = "hostmesh-capture-heal.service"
RULES_FILE = "/etc/hostmesh/capture.rules"
REPAIR_BOUND_S = 5
AGENT_READY = "curl -sf --max-time 2 -o /dev/null http://127.0.0.1:15020/healthz/ready"
# Both jumps and both redirects in place: capture is on.
CAPTURE_ON = (
    "nat=$(iptables -w -t nat -S) && echo \"$nat\" | grep -q -- '-A PREROUTING -p tcp -j HOSTMESH_INBOUND'"
    " && echo \"$nat\" | grep -q -- '-A OUTPUT -p tcp -j HOSTMESH_OUTPUT'"
    " && echo \"$nat\" | grep -q 'REDIRECT --to-ports 15006' && echo \"$nat\" | grep -q 'REDIRECT --to-ports 15001'"
)
CAPTURE_OFF = "! iptables -w -t nat -S PREROUTING | grep -q HOSTMESH_INBOUND"

# What each kind of removal runs on the host. Neither firewalld nor
# netfilter-persistent is installed on the test hosts: the commands are what
# their reloads run.
OLD_FILE = "iptables-save | grep -v HOSTMESH_ > /tmp/old.v4"
FLUSHES = {
    "iptables -t nat -F": "iptables -w -t nat -F",
    "iptables-restore of an old file": f"{OLD_FILE} && iptables-restore -w < /tmp/old.v4",
    "nft flush ruleset": "nft flush ruleset",
    # firewalld's iptables backend on reload: one iptables-restore without
    # --noflush per family, every table with its built-in chains and its own.
    "firewalld reload (iptables backend)": (
        "for t in '' 6; do printf '%s\\n' '*filter' ':INPUT ACCEPT [0:0]' ':FORWARD ACCEPT [0:0]' ':OUTPUT ACCEPT [0:0]'"
        " ':INPUT_direct - [0:0]' '-A INPUT -j INPUT_direct' COMMIT '*nat' ':PREROUTING ACCEPT [0:0]'"
        " ':INPUT ACCEPT [0:0]' ':OUTPUT ACCEPT [0:0]' ':POSTROUTING ACCEPT [0:0]' ':PREROUTING_direct - [0:0]'"
        " '-A PREROUTING -j PREROUTING_direct' COMMIT '*mangle' ':PREROUTING ACCEPT [0:0]' COMMIT"
        " '*raw' ':PREROUTING ACCEPT [0:0]' COMMIT | ip${t}tables-restore -w || exit 1; done"
    ),
    # netfilter-persistent reload: its ip4tables and ip6tables plugins restore
    # the saved files (here: saved before capture went on) without --noflush.
    "netfilter-persistent reload": (
        "mkdir -p /tmp/iptables && iptables-save | grep -v HOSTMESH_ > /tmp/iptables/rules.v4"
        " && ip6tables-save | grep -v HOSTMESH_ > /tmp/iptables/rules.v6"
        " && iptables-restore -w < /tmp/iptables/rules.v4 && ip6tables-restore -w < /tmp/iptables/rules.v6"
    ),
}


def repairs(host) -> int:
    """hostmesh_capture_repairs_total as the agent's merged metrics serve it."""
    body = host.check_output("curl -sf --max-time 5 http://127.0.0.1:15020/stats/prometheus")
    match = re.search(r"^hostmesh_capture_repairs_total (\d+)$", body, re.M)
    assert match, "no hostmesh_capture_repairs_total in the merged metrics"
    return int(match.group(1))


def remove_and_time(host, action: str, bound: int = REPAIR_BOUND_S + 3) -> float | None:
    """Run action, then the seconds until capture is on again (None if not within bound)."""
    out = host.check_output(
        f"""({action}) >/dev/null 2>&1 || {{ echo failed; exit 0; }}
start=$(date +%s%N)
for i in $(seq {bound * 20}); do
  if ({CAPTURE_ON}) >/dev/null 2>&1; then echo $(( ($(date +%s%N) - start) / 1000000 )); exit 0; fi
  sleep 0.05
done
echo none"""
    )
    assert out.strip() != "failed", f"the removal itself failed: {action}"
    return None if out.strip() == "none" else int(out.strip()) / 1000


def stays_off(host, action: str, seconds: int) -> bool:
    """Run action; whether capture is off then and stays off for that many seconds."""
    result = host.run(
        f"({action}) >/dev/null 2>&1; for i in $(seq {seconds * 10}); do "
        f"if ! ({CAPTURE_OFF}) >/dev/null 2>&1; then exit 1; fi; sleep 0.1; done"
    )
    return result.rc == 0


def wait_for(host, condition: str, timeout: int) -> bool:
    result = host.run(
        f"for i in $(seq {timeout * 5}); do if ({condition}) >/dev/null 2>&1; then exit 0; fi; sleep 0.2; done; exit 1"
    )
    return result.rc == 0


def call_through_sidecars(host1, host2) -> None:
    """A request from host1 reaches host2's application through host2's sidecar (from 127.0.0.6)."""
    before = int(host2.check_output("journalctl -u echo-app.service --no-pager -o cat | wc -l"))
    body = host1.check_output(f"curl -sf --max-time 10 http://{address_of(host2)}:{APP_PORT}/")
    assert body.strip() == "echo from host2"
    log = host2.check_output("journalctl -u echo-app.service --no-pager -o cat").splitlines()[before:]
    assert log and log[-1].startswith("127.0.0.6 "), log


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_reconciler_runs_while_capture_is_on(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    assert wait_for(host, f"{AGENT_READY} && {CAPTURE_ON}", 60)
    heal = host.service(HEAL)
    assert heal.is_enabled and heal.is_running
    assert repairs(host) == 0
    exposure = host.check_output(f"systemd-analyze security {HEAL} --no-pager | tail -1")
    assert re.search(r"\b(OK|LOW)\b", exposure), exposure


def test_nothing_drifted_means_nothing_written(host2) -> None:
    """A check with capture in place writes nothing: nft monitor sees no event during it."""
    out = host2.check_output(
        "timeout 3 nft monitor > /tmp/events & sleep 0.5; "
        f"/usr/bin/python3 /etc/hostmesh/capture-heal --rules-file {RULES_FILE} --once "
        "--counter /tmp/heal-counter; wait; wc -l < /tmp/events"
    )
    assert out.strip().splitlines()[-1] == "0", out
    assert not host2.file("/tmp/heal-counter").exists
    assert repairs(host2) == 0


@pytest.mark.parametrize("kind", list(FLUSHES))
def test_capture_is_back_within_5_s(kind, host1, host2) -> None:
    before = repairs(host2)
    took = remove_and_time(host2, FLUSHES[kind])
    assert took is not None and took <= REPAIR_BOUND_S, f"{kind}: capture back after {took}s"
    assert wait_for(host2, f"{AGENT_READY}", 10)
    call_through_sidecars(host1, host2)
    assert wait_for(
        host2,
        f"[ $(curl -sf http://127.0.0.1:15020/stats/prometheus | "
        f"sed -n 's/^hostmesh_capture_repairs_total //p') -gt {before} ]",
        5,
    )
    journal = host2.check_output(f"journalctl -u {HEAL} --no-pager -o cat | grep 'capture repaired' | tail -1")
    assert "HOSTMESH" in journal or "nft table" in journal or "lines missing" in journal, journal


def test_the_client_side_heals_too(host1, host2) -> None:
    """host1 fails open and its sidecar is ready: its outbound capture is put back as well."""
    took = remove_and_time(host1, FLUSHES["iptables -t nat -F"])
    assert took is not None and took <= REPAIR_BOUND_S, f"capture back after {took}s"
    call_through_sidecars(host1, host2)


def test_a_flush_after_a_deliberate_stop_stays_off(host1, host2) -> None:
    host2.run_expect([0], f"systemctl stop {AGENT}")
    assert wait_for(host2, CAPTURE_OFF, 30)
    assert not host2.service(HEAL).is_running
    assert not host2.service(CAPTURE).is_running
    # A flush now, or a whole ruleset flushed: nothing puts capture back.
    assert stays_off(host2, "iptables -w -t nat -F", REPAIR_BOUND_S + 2)
    assert stays_off(host2, "nft flush ruleset", 2)
    # Started again, the agent brings capture and the reconciler back.
    host2.run_expect([0], f"systemctl start {AGENT}")
    assert wait_for(host2, f"{AGENT_READY} && {CAPTURE_ON}", 120)
    assert wait_for(host2, f"systemctl is-active -q {HEAL}", 10)
    took = remove_and_time(host2, FLUSHES["nft flush ruleset"])
    assert took is not None and took <= REPAIR_BOUND_S
    call_through_sidecars(host1, host2)


def test_failing_open_a_sidecar_not_ready_is_not_put_back(host1) -> None:
    """host1 fails open: while its sidecar is not ready a flush stays; once ready, capture is back."""
    envoy = "$(systemctl show -p MainPID --value hostmesh-agent.service)"
    stop_envoy = f"pkill -STOP -P {envoy} -x envoy"
    host1.run_expect([0], stop_envoy)
    try:
        assert wait_for(host1, f"! {AGENT_READY}", 30)
        assert host1.service(HEAL).is_running
        assert stays_off(host1, "iptables -w -t nat -F", 4)
        journal = host1.check_output(f"journalctl -u {HEAL} --no-pager -o cat | tail -3")
        assert "not ready" in journal, journal
    finally:
        host1.run(f"pkill -CONT -P {envoy} -x envoy")
    assert wait_for(host1, f"{AGENT_READY} && {CAPTURE_ON}", 60)
