"""mesh_resilience: what the clients saw by name while replicas failed, and DNS after offboarding.

The side effect ran files/mesh_clients.py on the client (zone-b) and wrote
its events into the same log: web2-app-stopping and web3-powering-off (just
before each failure starts), web2-app-stopped and web3-powered-off (once it has),
recovered.
"""

import json
import os
from pathlib import Path

import pytest
import testinfra

LOG = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ".")) / "mesh-clients.jsonl"
HOSTS = ("client", "web1", "web2", "web3", "db")
# Seconds after an event before the new state must show (ejection, health checks).
SETTLE = 6


@pytest.fixture(scope="module")
def log():
    entries = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    events = {e["name"]: e["t"] for e in entries if e["kind"] == "event"}
    assert set(events) == {
        "web2-app-stopping",
        "web2-app-stopped",
        "web3-powering-off",
        "web3-powered-off",
        "recovered",
    }, events
    assert any(e["kind"] == "done" for e in entries), "the clients did not finish"
    return entries, events


def replicas(entries, kind, start, end):
    counts = {}
    for e in entries:
        if e["kind"] == kind and e.get("ok") and start <= e["t"] < end:
            counts[e["replica"]] = counts.get(e["replica"], 0) + 1
    return counts


def phases(entries, events):
    first = min(e["t"] for e in entries)
    last = max(e["t"] for e in entries)
    return {
        "spread": (first + 3, events["web2-app-stopping"]),
        "app-stopped": (events["web2-app-stopped"] + SETTLE, events["web3-powered-off"]),
        "host-down": (events["web3-powered-off"] + SETTLE * 2, events["recovered"] - 5),
        "recovered": (events["recovered"] + SETTLE * 2, last),
    }


def test_every_http_request_succeeded(log):
    entries, events = log
    http = [e for e in entries if e["kind"] == "http"]
    assert len(http) > 200
    failed = [e for e in http if not e["ok"]]
    assert failed == [], (events, failed)


def test_names_resolved_throughout(log):
    entries, _events = log
    lookups = [e for e in entries if e["kind"] == "dns"]
    for name in ("web.mesh.internal", "outside.test"):
        assert len([e for e in lookups if e["name"] == name]) > 50, name
    assert [e for e in lookups if not e["ok"]] == []


def test_requests_spread_over_the_clients_zone(log):
    """client is in zone-b: web2 and web3 share its requests, web1 (zone-a) gets none."""
    start, end = phases(*log)["spread"]
    counts = replicas(*log[:1], "http", start, end)
    assert counts.get("web2", 0) > 10 and counts.get("web3", 0) > 10, counts
    other_zone = [round(e["t"] - start, 1) for e in log[0] if e.get("replica") == "web1" and start <= e["t"] < end]
    assert counts.get("web1", 0) == 0, (counts, "seconds into the phase:", other_zone)


def test_a_stopped_app_gets_no_traffic(log):
    counts = replicas(*log[:1], "http", *phases(*log)["app-stopped"])
    assert counts.get("web2", 0) == 0 and counts.get("web3", 0) > 10, counts


def test_a_zone_without_healthy_replicas_fails_over(log):
    """web2's app stopped and web3's host down: zone-b has none left, so web1 in zone-a answers."""
    counts = replicas(*log[:1], "http", *phases(*log)["host-down"])
    assert counts == {"web1": counts.get("web1", 0)} and counts["web1"] > 10, counts


def test_both_come_back(log):
    counts = replicas(*log[:1], "http", *phases(*log)["recovered"])
    assert counts.get("web2", 0) > 5 and counts.get("web3", 0) > 5, counts


def test_tcp_clients_lose_only_connections_to_the_dead_replica(log):
    entries, events = log
    conns = [e for e in entries if e["kind"] == "tcp_conn"]
    opened = {e["index"]: e["replica"] for e in conns if e.get("state") == "open"}
    assert len(opened) == 8, conns
    assert set(opened.values()) <= {"web2", "web3"}, opened
    died = {e["index"]: e for e in conns if e.get("state") == "died"}
    assert {i for i, e in died.items()} == {i for i, r in opened.items() if r == "web3"}, (opened, died)
    assert all(e["t"] >= events["web3-powering-off"] for e in died.values()), (events, died)
    new = [e for e in entries if e["kind"] == "tcp_new"]
    assert len(new) > 50 and [e for e in new if not e["ok"]] == []


@pytest.mark.parametrize("name", HOSTS)
def test_offboarding_restored_the_hosts_dns(name):
    host = testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")
    before = host.file("/var/tmp/dns-before.txt").content_string
    after = host.file("/var/tmp/dns-after.txt").content_string
    assert "== resolv.conf" in before
    assert after == before
    # Outside names still resolve through the host's own resolvers.
    assert host.run("getent ahostsv4 outside.test").stdout.split()[0] == "192.0.2.123"
