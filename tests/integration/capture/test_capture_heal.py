"""The capture role's reconciler on real iptables-nft, nft and nft monitor, in a network namespace.

It runs as the unit runs it, against a rules file traffic_capture wrote; the
sidecar's readiness is a real HTTP server on the namespace's loopback whose
answer the test switches between 200 and 503.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from netlab import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HEAL = os.path.join(ROOT, "roles", "capture", "files", "capture_heal.py")
READY_PORT = 15020
# Answers /healthz/ready with 200 while FILE exists, else 503.
READINESS = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if os.path.exists(sys.argv[2]) else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def capture_on(lab) -> bool:
    nat = lab.run(lab.host, ["iptables-nft", "-w", "-t", "nat", "-S"]).stdout
    return "-A PREROUTING -p tcp -j HOSTMESH_INBOUND" in nat and "-A OUTPUT -p tcp -j HOSTMESH_OUTPUT" in nat


@pytest.fixture
def heal(lab, tmp_path):
    """Start the reconciler (fail_mode given) on capture the module applied; yield (lab, files, log)."""
    rules_file = str(tmp_path / "capture.rules")
    counter = str(tmp_path / "repairs")
    ready = str(tmp_path / "ready")
    open(ready, "w").close()
    lab.ok(rules_file=rules_file, ip_families=["ipv4"], backend="iptables-nft")
    procs = []

    def start(fail_mode: str):
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.host, "/usr/bin/python3", "-c", READINESS, str(READY_PORT), ready]
        )
        log = open(tmp_path / "heal.log", "w")  # noqa: SIM115 - the reconciler's stdout until the end
        argv = ["ip", "netns", "exec", lab.host, "/usr/bin/python3", HEAL, "--rules-file", rules_file]
        argv += ["--fail-mode", fail_mode, "--counter", counter, "--poll", "0.5"]
        argv += ["--ready-url", "http://127.0.0.1:%d/healthz/ready" % READY_PORT]
        procs.extend([server, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)])
        assert wait_for(lambda: os.path.exists(counter), 10), "the reconciler did not start"
        return {"ready": ready, "counter": counter, "log": str(tmp_path / "heal.log"), "rules": rules_file}

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait()


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


@pytest.mark.parametrize(
    "removal",
    [
        ["iptables-nft", "-w", "-t", "nat", "-F"],
        ["nft", "flush", "ruleset"],
        [
            "sh",
            "-c",
            "iptables-nft-save | grep -v HOSTMESH_ > /tmp/hm-heal-old.v4 && iptables-nft-restore < /tmp/hm-heal-old.v4",
        ],
    ],
    ids=["nat flushed", "nft flush ruleset", "old file restored"],
)
def test_capture_removed_is_back_within_5_s_logged_and_counted(lab, heal, removal) -> None:
    files = heal("closed")
    assert read(files["counter"]).strip() == "0"
    # iptables-save of every variant and family, ip rules and routes (nft's listing
    # orders recreated built-in chains differently: the same rules).
    before = lab.ruleset(ignore_empty=True)
    lab.run(lab.host, removal)
    started = time.monotonic()
    assert wait_for(lambda: capture_on(lab), 5), read(files["log"])
    took = time.monotonic() - started
    assert took <= 5
    assert wait_for(lambda: read(files["counter"]).strip() == "1", 2)
    assert "capture repaired in " in read(files["log"])
    # Put back as the module applied it.
    assert wait_for(lambda: lab.ruleset(ignore_empty=True) == before, 2)


def test_nothing_drifted_means_nothing_written(lab, heal) -> None:
    files = heal("closed")
    monitor = subprocess.Popen(["ip", "netns", "exec", lab.host, "nft", "monitor"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        once = ["/usr/bin/python3", HEAL, "--rules-file", files["rules"], "--once", "--counter", files["counter"]]
        lab.run(lab.host, once)
        # A foreign change: checked, nothing of ours differs, nothing written back.
        lab.run(lab.host, ["iptables-nft", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"])
        time.sleep(1.5)
    finally:
        monitor.terminate()
        events = monitor.communicate()[0].splitlines()
    # Only the foreign change's own events (its chain, its rule, the generation).
    assert events and all("POSTROUTING" in e or e.startswith("# new generation") for e in events), events
    assert not any("HOSTMESH" in e for e in events), events
    assert read(files["counter"]).strip() == "0"
    assert "repaired" not in read(files["log"])


def test_failing_open_leaves_capture_off_until_the_sidecar_is_ready(lab, heal) -> None:
    files = heal("open")
    os.unlink(files["ready"])
    lab.run(lab.host, ["iptables-nft", "-w", "-t", "nat", "-F"])
    assert wait_for(lambda: "not ready: left off (fail_mode open)" in read(files["log"]), 10), read(files["log"])
    time.sleep(2)  # four polls (--poll 0.5) later, still off
    assert not capture_on(lab)
    open(files["ready"], "w").close()
    assert wait_for(lambda: capture_on(lab), 5), read(files["log"])


def test_failing_closed_repairs_a_sidecar_not_ready(lab, heal) -> None:
    files = heal("closed")
    os.unlink(files["ready"])
    lab.run(lab.host, ["nft", "flush", "ruleset"])
    assert wait_for(lambda: capture_on(lab), 5), read(files["log"])
