"""Two network namespaces joined by a veth: a captured host and a peer.

Everything runs for real: the module as Ansible runs it (a JSON args file),
iptables/nft/ip inside the namespaces, and TCP probes for real packets.
Traffic stays inside these namespaces.
"""

import difflib
import json
import os
import re
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
MODULE = os.path.join(ROOT, "plugins", "modules", "traffic_capture.py")
PROBE = os.path.join(ROOT, "tests", "tools", "tcp_probe.py")

HOST_V4, PEER_V4 = "10.231.0.1", "10.231.0.2"
HOST_V6, PEER_V6 = "fd00:231::1", "fd00:231::2"


def sh(argv, check=True, **kwargs):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


class Lab:
    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.host = "hm-cap-%s-h" % tag
        self.peer = "hm-cap-%s-p" % tag
        self._procs = []
        self._tmp = os.path.join("/tmp", "hm-cap-%s" % tag)

    # -- lifecycle -----------------------------------------------------------

    def up(self):
        os.makedirs(self._tmp, exist_ok=True)
        for ns in (self.host, self.peer):
            sh(["ip", "netns", "add", ns])
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        veth_h, veth_p = "hmc%s" % self.host[7:13], "hmp%s" % self.host[7:13]
        sh(
            [
                "ip",
                "link",
                "add",
                veth_h,
                "netns",
                self.host,
                "type",
                "veth",
                "peer",
                "name",
                veth_p,
                "netns",
                self.peer,
            ]
        )
        for ns, dev, v4, v6 in ((self.host, veth_h, HOST_V4, HOST_V6), (self.peer, veth_p, PEER_V4, PEER_V6)):
            # No link-local address: it would appear asynchronously in route listings.
            self.run(ns, ["ip", "link", "set", "dev", dev, "addrgenmode", "none"])
            self.run(ns, ["ip", "addr", "add", v4 + "/24", "dev", dev])
            self.run(ns, ["ip", "-6", "addr", "add", v6 + "/64", "dev", dev, "nodad"])
            self.run(ns, ["ip", "link", "set", dev, "up"])
        self.host_iface = veth_h
        return self

    def down(self):
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in (self.host, self.peer):
            sh(["ip", "netns", "del", ns], check=False)
        sh(["rm", "-rf", self._tmp], check=False)

    # -- running things ----------------------------------------------------------

    def run(self, ns, argv, check=True, **kwargs):
        return sh(["ip", "netns", "exec", ns, *argv], check=check, **kwargs)

    def module(self, check_mode=False, diff=False, env=None, module=MODULE, **args):
        """Run traffic_capture (or another module) in the host namespace; returns its JSON result."""
        params = dict(args)
        params["_ansible_check_mode"] = check_mode
        params["_ansible_diff"] = diff
        path = os.path.join(self._tmp, "args.json")
        with open(path, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": params}, handle)
        environ = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": os.environ.get("HM_EXTRA_PYTHONPATH", "") + ":" + COLLECTIONS,
            "LANG": "C.UTF-8",
        }
        environ.update(env or {})
        proc = self.run(self.host, [sys.executable, module, path], check=False, env=environ)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(
                "module printed no JSON: rc=%d\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
            ) from None

    def ok(self, **args):
        result = self.module(**args)
        assert not result.get("failed"), result.get("msg")
        return result

    def serve(self, ns, port, *flags):
        """A probe listening on ``port`` in ``ns`` (IPv4 and IPv6; flags as tcp_probe.py's serve)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, PROBE, "serve", str(port), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        return proc

    def connect(self, ns, address, port, uid=None, gid=None):
        """The probe's answer as "<original destination> <peer> via=<listener port>", or "error ..."."""
        argv = [sys.executable, PROBE, "connect", address, str(port)]
        if uid is not None:
            argv += ["--uid", str(uid)]
        if gid is not None:
            argv += ["--gid", str(gid)]
        answer = json.loads(self.run(ns, argv, check=False).stdout)
        if "error" in answer:
            return "error %s" % answer["error"]
        return "%s %s via=%d" % (answer["original_dst"] or answer["local"], answer["peer"], answer["port"])

    # -- reading state -------------------------------------------------------------

    def ruleset(self, ignore_empty=False):
        """Everything a host's capture could touch, as text, for before/after compares.

        ``ignore_empty`` leaves out empty built-in chains and tables (no rules,
        accepting policy), which carry no behaviour."""
        parts = []
        for argv in (
            ["iptables-nft-save"],
            ["ip6tables-nft-save"],
            ["iptables-legacy-save"],
            ["ip6tables-legacy-save"],
            *([] if ignore_empty else [["nft", "list", "ruleset"]]),
            ["ip", "-4", "rule", "show"],
            ["ip", "-6", "rule", "show"],
            ["ip", "-4", "route", "show", "table", "all"],
            ["ip", "-6", "route", "show", "table", "all"],
        ):
            out = self.run(self.host, argv, check=False).stdout
            if "legacy" in argv[0] or (ignore_empty and "save" in argv[0]):
                out = _without_empty_tables(out)
            # Packet counters move with background traffic (e.g. IPv6 MLD); they are not state.
            out = re.sub(r"\[\d+:\d+\]", "[0:0]", out)
            out = re.sub(r"counter packets \d+ bytes \d+", "counter", out)
            parts.append("## " + " ".join(argv))
            parts += [line for line in out.splitlines() if not line.startswith("#")]
        return "\n".join(parts)

    def nat_listing(self, variant="nft"):
        return self.run(self.host, ["iptables-%s" % variant, "-t", "nat", "-S"]).stdout.splitlines()


def assert_same(expected, actual):
    """Equal rulesets, or an AssertionError showing the unified diff."""
    if expected != actual:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm="")
        raise AssertionError("rulesets differ:\n" + "\n".join(diff))


def _without_empty_tables(save_text):
    """Legacy iptables tables are kernel modules: once used they stay registered,
    empty and without effect. Drop such empty tables from a listing."""
    kept, block = [], []
    for line in save_text.splitlines():
        if line.startswith("#"):
            continue
        block.append(line)
        if line == "COMMIT":
            empty = all(entry.startswith("*") or entry == "COMMIT" or _accepting_builtin(entry) for entry in block)
            if not empty:
                kept += block
            block = []
    return "\n".join(kept + block)


def _accepting_builtin(line):
    return line.startswith(":") and line.split()[1] == "ACCEPT"


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
