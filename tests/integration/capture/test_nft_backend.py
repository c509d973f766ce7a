"""The nftables renderer against real nft and real packets, in network namespaces.

Each test builds its own pair of namespaces (a captured host and a peer joined
by a veth), loads our table with ``nft -f``, and reads it back with the exact
arguments the module uses. Traffic stays on loopback and between these two
namespaces.
"""

import ipaddress
import json
import os
import subprocess
import sys
import uuid

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import nft, nft_render
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family

pytestmark = pytest.mark.netns

HOST_V4, PEER_V4 = "10.232.0.1", "10.232.0.2"
HOST_V6, PEER_V6 = "fd00:232::1", "fd00:232::2"
NAMESERVERS = ("10.232.0.53", "10.232.0.54", "fd00:232::53")
APP_UID = 1000
PROXY_ID = 1337

# Probes name themselves (the label) and, for TCP, the destination the client
# asked for: SO_ORIGINAL_DST when conntrack has the connection (REDIRECT keeps
# the original there), else the socket's own address (direct, or TPROXY).
PROBE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "tcp_probe.py"
)


def sh(argv, check=True, **kwargs):
    # nft's messages in English, as the module reads them.
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(argv, check=check, capture_output=True, text=True, env=env, **kwargs)


class NftLab:
    """Two namespaces, ``hm-nft-<tag>-h`` (captured) and ``hm-nft-<tag>-p`` (peer)."""

    def __init__(self, workdir):
        tag = uuid.uuid4().hex[:6]
        self.host = "hm-nft-%s-h" % tag
        self.peer = "hm-nft-%s-p" % tag
        self.veth = ("hnft%sh" % tag, "hnft%sp" % tag)
        self._servers = []
        self._namespaces = []

    def up(self):
        for ns in (self.host, self.peer):
            sh(["ip", "netns", "add", ns])
            self._namespaces.append(ns)
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        veth_h, veth_p = self.veth
        pair = ["peer", "name", veth_p, "netns", self.peer]
        sh(["ip", "link", "add", veth_h, "netns", self.host, "type", "veth", *pair])
        for ns, dev, v4, v6 in ((self.host, veth_h, HOST_V4, HOST_V6), (self.peer, veth_p, PEER_V4, PEER_V6)):
            self.run(ns, ["ip", "addr", "add", v4 + "/24", "dev", dev])
            self.run(ns, ["ip", "-6", "addr", "add", v6 + "/64", "dev", dev, "nodad"])
            self.run(ns, ["ip", "link", "set", dev, "up"])
        return self

    def down(self):
        for proc in self._servers:
            self._stop(proc)
        for ns in self._namespaces:
            sh(["ip", "netns", "del", ns], check=False)

    def run(self, ns, argv, check=True, **kwargs):
        return sh(["ip", "netns", "exec", ns, *argv], check=check, **kwargs)

    # -- nft, exactly as the module drives it ------------------------------------------

    def nft_apply(self, script, check=True):
        return self.run(self.host, ["nft", *nft.APPLY_ARGS], check=check, input=script)

    def listing(self, name):
        argv = ["nft", *nft.list_args(name)]
        proc = self.run(self.host, argv, check=False)
        return nft.listing_from_result(argv, proc.returncode, proc.stdout, proc.stderr)

    def ruleset(self, numeric=False):
        """The whole ruleset; numeric, with our flags match read as rendered (as the module reads its table)."""
        listing = self.run(self.host, ["nft", *(nft.LIST_FLAGS if numeric else ()), "list", "ruleset"]).stdout
        return nft.rendered_form(listing) if numeric else listing

    # -- packets ---------------------------------------------------------------------------

    def serve(self, ns, tag, port, *flags, uid=None):
        if uid is not None:
            flags = (*flags, "--uid", str(uid), "--gid", str(uid))
        argv = ["ip", "netns", "exec", ns, sys.executable, PROBE, "serve", str(port), "--label", tag, *flags]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._servers.append(proc)
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read()
        return proc

    def stop(self, proc):
        self._stop(proc)
        self._servers.remove(proc)

    @staticmethod
    def _stop(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    def connect(self, ns, address, port, uid=None, gid=None, command="connect"):
        """A TCP (``connect``) or UDP (``ask``) exchange: "TAG DEST" (TCP), "TAG" (UDP) or "error ..."."""
        argv = [sys.executable, PROBE, "connect", address, str(port), "--timeout", "1.5"]
        if command == "ask":
            argv.append("--udp")
        if uid is not None:
            argv += ["--uid", str(uid), "--gid", str(gid if gid is not None else uid)]
        answer = json.loads(self.run(ns, argv, check=False, timeout=30).stdout)
        if "error" in answer:
            return "error %s" % answer["error"]
        if command == "ask":
            return answer["label"]
        return "%s %s" % (answer["label"], answer["original_dst"] or answer["local"])


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the nftables integration tests need root (network namespaces, nft)")
    lab = NftLab(tmp_path)
    try:
        yield lab.up()
    finally:
        lab.down()


def desired(families=("ipv4", "ipv6"), **params):
    """(table name, rendered table) for these options."""
    opts = parse_options(params)[0]
    rules = []
    for family in families:
        servers = [ns for ns in NAMESERVERS if (":" in ns) == (family == "ipv6")]
        rules.append(build_family(opts, family, servers))
    name = nft.table_name(opts.chain_prefix)
    return name, nft_render.render_table(name, rules)


def _cidrs(count):
    v4 = [str(ipaddress.ip_network((0x0A000000 + (i << 8), 24))) for i in range(count)]
    v6 = [str(ipaddress.ip_network(((0xFD00 << 112) + (i << 64), 64))) for i in range(count)]
    return v4 + v6


EVERYTHING = {
    "mode": "tproxy",
    "dns_redirect": True,
    "dns_capture_all": True,
    "drop_invalid": True,
    "proxy_uid": [1337, 0],
    "proxy_gid": [1337],
    "outbound_cidrs_exclude": ["10.96.0.0/12", "fd00:96::/48"],
    "outbound_ports_exclude": [5432],
    "inbound_ports_exclude": [22, 2222],
    "exclude_interfaces": ["eth1"],
}

COMBINATIONS = {
    "seed": {"chain_prefix": "ISTIO_"},
    "defaults": {},
    "tproxy": {"mode": "tproxy"},
    "tproxy-ports-mark": {
        "mode": "tproxy",
        "inbound_ports": [8080, 9090],
        "tproxy_mark": 4294967295,
        "tproxy_route_table": 200,
        "inbound_capture_port": 16006,
        "proxy_port": 16001,
    },
    "dns-capture-all": {"dns_redirect": True, "dns_capture_all": True},
    "dns-nameservers": {"dns_redirect": True, "dns_port": 5353},
    "drop-invalid": {"drop_invalid": True},
    "cidrs-v4-v6": {
        "outbound_cidrs": ["10.0.0.0/8", "192.168.1.7", "fd00:1::/64"],
        "outbound_cidrs_exclude": ["10.96.0.0/12", "fd00:1:96::/96", "::ffff:10.0.0.0/104"],
    },
    "ports-interfaces": {
        "outbound_ports": [80, 443],
        "outbound_ports_exclude": [5432],
        "inbound_ports": [8080],
        "exclude_interfaces": ["eth1", "veth.100", "br-0@x"],
    },
    "several-uids": {"proxy_uid": [1337, 0, 4294967294], "proxy_gid": [1337, 1338]},
    "gid-only": {"proxy_uid": [], "proxy_gid": [1337]},
    "no-inbound": {"inbound_ports": []},
    "everything": EVERYTHING,
    "everything-ipv4-only": dict(EVERYTHING, families=("ipv4",)),
    "everything-ipv6-only": dict(EVERYTHING, families=("ipv6",)),
    "1000-excluded-cidrs": {"outbound_cidrs_exclude": _cidrs(500)},
    "empty-table": {"families": ()},
}


@pytest.mark.parametrize("params", list(COMBINATIONS.values()), ids=list(COMBINATIONS))
def test_nft_lists_exactly_what_we_render(lab, params):
    name, text = desired(**params)
    assert lab.listing(name) == ""
    lab.nft_apply(nft.plan_script(name, "", text))
    listing = lab.listing(name)
    assert listing == text
    assert nft.plan_script(name, listing, text) == ""


@pytest.mark.parametrize("prefix", ["HOSTMESH_", "Mesh2_", "NAT_", "FILTER_", "A_B_", "SIDECAR_"])
def test_table_names_from_prefixes_load(lab, prefix):
    name, text = desired(chain_prefix=prefix)
    lab.nft_apply(nft.plan_script(name, "", text))
    assert lab.listing(name) == text
    lab.nft_apply(nft.absent_script(name, text))
    assert lab.listing(name) == ""


def test_plan_restores_a_hand_edited_table(lab):
    name, text = desired(**EVERYTHING)
    lab.nft_apply(nft.plan_script(name, "", text))
    # What an admin might do by hand: drop a rule, add one, add a chain, add a counter.
    handles = lab.run(lab.host, ["nft", "-a", "list", "chain", "inet", name, "nat_HOSTMESH_OUTPUT"]).stdout
    handle = next(line.split("# handle ")[1] for line in handles.splitlines() if "tcp dport 5432 return" in line)
    lab.run(lab.host, ["nft", "delete", "rule", "inet", name, "nat_HOSTMESH_OUTPUT", "handle", handle])
    lab.run(lab.host, ["nft", "add", "rule", "inet", name, "nat_HOSTMESH_REDIRECT", "tcp", "dport", "9", "return"])
    lab.run(lab.host, ["nft", "add", "chain", "inet", name, "mine"])
    lab.run(lab.host, ["nft", "insert", "rule", "inet", name, "mangle_HOSTMESH_OUTPUT", "counter"])
    edited = lab.listing(name)
    assert edited != text
    added, removed = nft.changes(edited, text)
    assert added == ["nat_HOSTMESH_OUTPUT: tcp dport 5432 return"]
    assert removed[0].startswith("mangle_HOSTMESH_OUTPUT: counter packets ")
    assert removed[1:] == ["nat_HOSTMESH_REDIRECT: tcp dport 9 return", "mine:"]

    script = nft.plan_script(name, edited, text)
    assert script
    lab.nft_apply(script)
    assert lab.listing(name) == text
    assert nft.plan_script(name, lab.listing(name), text) == ""


def test_a_failing_script_changes_nothing(lab):
    name, text = desired(chain_prefix="ISTIO_")
    lab.nft_apply(nft.plan_script(name, "", text))
    other = desired(chain_prefix="ISTIO_", mode="tproxy")[1]
    before = lab.ruleset()
    # The replacement fails late (a jump to a chain that does not exist).
    broken = nft.plan_script(name, text, other).replace("jump mangle_ISTIO_TPROXY", "jump mangle_NOWHERE")
    assert lab.nft_apply(broken, check=False).returncode != 0
    assert lab.ruleset() == before
    assert lab.listing(name) == text


def test_apply_and_absent_leave_other_tables_alone(lab):
    # Stand-ins for firewalld's and Docker's own tables, with base chains on the same hooks.
    lab.nft_apply(
        "table inet firewalld {\n"
        "\tchain filter_INPUT {\n\t\ttype filter hook input priority 10; policy accept;\n"
        "\t\ttcp dport 9999 drop\n\t}\n"
        "\tchain nat_PREROUTING {\n\t\ttype nat hook prerouting priority -90; policy accept;\n\t}\n"
        "}\n"
        "table ip nat {\n"
        "\tchain DOCKER {\n\t}\n"
        "\tchain PREROUTING {\n\t\ttype nat hook prerouting priority -100; policy accept;\n"
        "\t\tfib daddr type local jump DOCKER\n\t}\n"
        "}\n"
    )
    before, numeric_before = lab.ruleset(), lab.ruleset(numeric=True)
    name, text = desired(**EVERYTHING)
    assert nft.absent_script(name, lab.listing(name)) == ""

    lab.nft_apply(nft.plan_script(name, lab.listing(name), text))
    assert lab.ruleset() != before
    assert lab.ruleset(numeric=True).replace(text, "") == numeric_before

    # A changed configuration replaces our table and only ours.
    seed = desired()[1]
    lab.nft_apply(nft.plan_script(name, lab.listing(name), seed))
    assert lab.ruleset(numeric=True).replace(seed, "") == numeric_before

    lab.nft_apply(nft.absent_script(name, lab.listing(name)))
    assert lab.ruleset() == before
    assert nft.absent_script(name, lab.listing(name)) == ""


def test_redirect_mode_with_real_packets(lab):
    lab.serve(lab.host, "outbound", 15001)
    lab.serve(lab.host, "inbound", 15006)
    lab.serve(lab.host, "app", 9000)
    lab.serve(lab.host, "ssh", 22)
    lab.serve(lab.host, "local", 7000, "--loopback")
    lab.serve(lab.peer, "peer", 8080)

    name, text = desired(ip_families=["ipv4", "ipv6"])
    lab.nft_apply(nft.plan_script(name, lab.listing(name), text))

    # The app's outbound connections reach the proxy with their original destination.
    assert lab.connect(lab.host, PEER_V4, 8080, uid=APP_UID) == "outbound %s:8080" % PEER_V4
    assert lab.connect(lab.host, PEER_V6, 8080, uid=APP_UID) == "outbound [%s]:8080" % PEER_V6
    # The proxy's own traffic (by uid, or by gid alone) goes direct.
    assert lab.connect(lab.host, PEER_V4, 8080, uid=PROXY_ID) == "peer %s:8080" % PEER_V4
    assert lab.connect(lab.host, PEER_V6, 8080, uid=PROXY_ID) == "peer [%s]:8080" % PEER_V6
    assert lab.connect(lab.host, PEER_V4, 8080, uid=APP_UID + 1, gid=PROXY_ID) == "peer %s:8080" % PEER_V4
    # Loopback stays local.
    assert lab.connect(lab.host, "127.0.0.1", 7000, uid=APP_UID) == "local 127.0.0.1:7000"
    assert lab.connect(lab.host, "::1", 7000, uid=APP_UID) == "local [::1]:7000"

    # Inbound connections reach the inbound port with their original destination.
    assert lab.connect(lab.peer, HOST_V4, 9000) == "inbound %s:9000" % HOST_V4
    assert lab.connect(lab.peer, HOST_V6, 9000) == "inbound [%s]:9000" % HOST_V6
    # Excluded ports (22 among the defaults) go straight to their listener.
    assert lab.connect(lab.peer, HOST_V4, 22) == "ssh %s:22" % HOST_V4
    assert lab.connect(lab.peer, HOST_V6, 22) == "ssh [%s]:22" % HOST_V6

    lab.nft_apply(nft.absent_script(name, lab.listing(name)))
    assert lab.connect(lab.host, PEER_V4, 8080, uid=APP_UID) == "peer %s:8080" % PEER_V4
    assert lab.connect(lab.host, PEER_V6, 8080, uid=APP_UID) == "peer [%s]:8080" % PEER_V6
    assert lab.connect(lab.peer, HOST_V4, 9000) == "app %s:9000" % HOST_V4
    assert lab.connect(lab.peer, HOST_V6, 9000) == "app [%s]:9000" % HOST_V6


def test_one_family_captures_only_that_family(lab):
    lab.serve(lab.host, "outbound", 15001)
    lab.serve(lab.peer, "peer", 8080)
    name, text = desired(families=("ipv4",))
    lab.nft_apply(nft.plan_script(name, "", text))
    assert lab.connect(lab.host, PEER_V4, 8080, uid=APP_UID) == "outbound %s:8080" % PEER_V4
    assert lab.connect(lab.host, PEER_V6, 8080, uid=APP_UID) == "peer [%s]:8080" % PEER_V6


def test_tproxy_mode_with_real_packets(lab):
    mark, table = 1337, 133
    for flag in ("-4", "-6"):
        lab.run(lab.host, ["ip", flag, "rule", "add", "fwmark", str(mark), "lookup", str(table)])
        lab.run(lab.host, ["ip", flag, "route", "add", "local", "default", "dev", "lo", "table", str(table)])
    tproxy = lab.serve(lab.host, "tproxy", 15006, "--transparent")
    lab.serve(lab.host, "outbound", 15001)
    lab.serve(lab.host, "app", 9000)
    lab.serve(lab.host, "ssh", 22)
    lab.serve(lab.peer, "peer", 8080)

    name, text = desired(mode="tproxy", tproxy_mark=mark, tproxy_route_table=table)
    lab.nft_apply(nft.plan_script(name, "", text))

    # Inbound connections land on the transparent listener, addressed as the client sent them.
    assert lab.connect(lab.peer, HOST_V4, 9000) == "tproxy %s:9000" % HOST_V4
    assert lab.connect(lab.peer, HOST_V6, 9000) == "tproxy [%s]:9000" % HOST_V6
    assert lab.connect(lab.peer, HOST_V4, 22) == "ssh %s:22" % HOST_V4
    # Outbound is still captured by redirect.
    assert lab.connect(lab.host, PEER_V4, 8080, uid=APP_UID) == "outbound %s:8080" % PEER_V4
    assert lab.connect(lab.host, PEER_V4, 8080, uid=PROXY_ID) == "peer %s:8080" % PEER_V4

    # With no proxy listening, captured connections are dropped, as with iptables
    # TPROXY, rather than slipping through to the app.
    lab.stop(tproxy)
    assert lab.connect(lab.peer, HOST_V4, 9000).startswith("error")
    assert lab.connect(lab.peer, HOST_V6, 9000).startswith("error")
    assert lab.connect(lab.peer, HOST_V4, 22) == "ssh %s:22" % HOST_V4


def test_dns_redirect_with_real_packets(lab):
    # The peer plays the resolver; the host's DNS proxy runs as the proxy user and,
    # like a real one, listens on loopback so its answers leave from the redirected address.
    lab.serve(lab.peer, "resolver", 53, "--udp")
    lab.serve(lab.host, "dns-proxy", 15053, "--udp", "--loopback", uid=PROXY_ID)
    servers = {"ipv4": [PEER_V4], "ipv6": [PEER_V6]}
    opts = parse_options({"dns_redirect": True})[0]
    name = nft.table_name(opts.chain_prefix)
    text = nft_render.render_table(name, [build_family(opts, family, servers[family]) for family in ("ipv4", "ipv6")])
    lab.nft_apply(nft.plan_script(name, "", text))

    for server in (PEER_V4, PEER_V6):
        # The app's queries, UDP and TCP, go to the DNS proxy...
        assert lab.connect(lab.host, server, 53, uid=APP_UID, command="ask") == "dns-proxy"
        shown = "[%s]:53" % server if ":" in server else "%s:53" % server
        assert lab.connect(lab.host, server, 53, uid=APP_UID) == "dns-proxy %s" % shown
        # ...and the proxy's own queries reach the resolver.
        assert lab.connect(lab.host, server, 53, uid=PROXY_ID, command="ask") == "resolver"
        assert lab.connect(lab.host, server, 53, uid=PROXY_ID) == "resolver %s" % shown

    lab.nft_apply(nft.absent_script(name, lab.listing(name)))
    assert lab.connect(lab.host, PEER_V4, 53, uid=APP_UID, command="ask") == "resolver"


def _exclusion_cases():
    """(options, [(from, to address, port, expected answer tag)]) with real packets."""
    app, peer = "app", "peer"
    return {
        "outbound-cidrs-exclude": (
            {"outbound_cidrs_exclude": [PEER_V4 + "/32", PEER_V6 + "/128"]},
            [(app, PEER_V4, 8080, "peer"), (app, PEER_V6, 8080, "peer")],
        ),
        "outbound-cidrs-v4-only": (
            {"outbound_cidrs": ["10.232.0.0/24"]},
            [(app, PEER_V4, 8080, "outbound"), (app, PEER_V6, 8080, "peer")],
        ),
        "outbound-ports-exclude": (
            {"outbound_ports_exclude": [8080]},
            [(app, PEER_V4, 8080, "peer"), (app, PEER_V6, 8080, "peer"), (app, PEER_V4, 8081, "outbound")],
        ),
        "outbound-ports-include": (
            {"outbound_ports": [8081], "outbound_cidrs": []},
            [(app, PEER_V4, 8081, "outbound"), (app, PEER_V6, 8081, "outbound"), (app, PEER_V4, 8080, "peer")],
        ),
        "inbound-ports-include": (
            {"inbound_ports": [9000]},
            [(peer, HOST_V4, 9000, "inbound"), (peer, HOST_V6, 9000, "inbound"), (peer, HOST_V4, 9001, "app2")],
        ),
        "inbound-ports-exclude": (
            {"inbound_ports_exclude": [22, 9001]},
            [(peer, HOST_V4, 9001, "app2"), (peer, HOST_V6, 9001, "app2"), (peer, HOST_V6, 9000, "inbound")],
        ),
        "exclude-interface": (
            {"exclude_interfaces": ["VETH"]},
            [(app, PEER_V4, 8080, "peer"), (app, PEER_V6, 8080, "peer"), (peer, HOST_V4, 9000, "app")],
        ),
        "several-uids": (
            {"proxy_uid": [1337, 1500]},
            [(1500, PEER_V4, 8080, "peer"), (1500, PEER_V6, 8080, "peer"), (app, PEER_V4, 8080, "outbound")],
        ),
    }


@pytest.mark.parametrize("case", list(_exclusion_cases()))
def test_include_and_exclude_options_with_real_packets(lab, case):
    params, checks = _exclusion_cases()[case]
    params = {key: [lab.veth[0] if v == "VETH" else v for v in value] for key, value in params.items()}
    lab.serve(lab.host, "outbound", 15001)
    lab.serve(lab.host, "inbound", 15006)
    lab.serve(lab.host, "app", 9000)
    lab.serve(lab.host, "app2", 9001)
    lab.serve(lab.peer, "peer", 8080)
    lab.serve(lab.peer, "peer", 8081)
    name, text = desired(**params)
    lab.nft_apply(nft.plan_script(name, "", text))
    for source, address, port, tag in checks:
        if source == "peer":
            answer = lab.connect(lab.peer, address, port)
        else:
            answer = lab.connect(lab.host, address, port, uid=APP_UID if source == "app" else source)
        assert answer.split(" ")[0] == tag, (source, address, port, answer)
        shown = "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)
        assert answer.endswith(" " + shown), answer
