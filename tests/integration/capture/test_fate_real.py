"""The packet_fate evaluator checked against real connections.

traffic_capture applies a case's options in the namespace lab; the rules the
kernel then holds (iptables-save, ip rule) go through the evaluator, which
predicts each packet's fate; the same packet is then sent for real (a TCP
connection or a UDP datagram, as the right uid/gid, from the right place) and
where it landed is read back: which listener took it, with which local address
and which original destination (SO_ORIGINAL_DST). The packets are grid packets of
Istio's cases (tests/unit/capture/istio_cases/grid.yaml), moved to the lab's
addresses. What the Istio comparison concludes rests on these predictions.
"""

import ipaddress
import json
import os
import re
import sys

import pytest
from netlab import HOST_V4, HOST_V6, PEER_V4, PEER_V6, PROBE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))

from packet_fate import Fate, Host, PolicyRoute, Process, decide, parse_packet, parse_rules
from packet_fate.cases import load_cases

pytestmark = pytest.mark.netns

CASES = {case.name: case for case in load_cases()}
EXCLUDED = "not-istio-nic"  # the interface Istio's cases exclude, made for real here
EXCLUDED_HOST_V4, EXCLUDED_PEER_V4 = "10.232.0.1", "10.232.0.2"
EXCLUDED_HOST_V6, EXCLUDED_PEER_V6 = "fd00:232::1", "fd00:232::2"
CAPTURED_RANGE_V4 = "9.9.1.1"  # on the peer, inside the tproxy case's outbound range 9.9.0.0/16
# Behind the host, as for a container bridge (the lab's host itself does not forward).
CONTAINERS_V4 = "172.17.0.0/24"
PROCESSES = {
    "app": Process(1000, 1000),
    "proxy": Process(1337, 1337),
    "uid1337": Process(1337, 1000),
    "gid1337": Process(1000, 1337),
    "root": Process(0, 0),  # may mark and bind any address, as Envoy's original-source connections do
}
HOST_PORTS = (22, 80, 8080, 15001, 15006, 15008, 15021, 31000)
PEER_PORTS = (80, 31000, 32000)

# Grid addresses -> lab addresses (the peer stands for every remote host).
ADDRESSES = {
    "192.0.2.10": HOST_V4,
    "fd00:5::10": HOST_V6,
    "198.51.100.7": PEER_V4,
    "2606:4700::1111": PEER_V6,
    "198.18.0.5": EXCLUDED_HOST_V4,
    "198.18.0.9": EXCLUDED_PEER_V4,
    "fd18::5": EXCLUDED_HOST_V6,
    "fd18::9": EXCLUDED_PEER_V6,
}

# (case, options beyond the case's, grid packets). "module defaults" is no Istio case:
# the module's own defaults (SSH and the agent's ports excluded), both families.
CHECKS = [
    (
        "inbound-ports-wildcard",
        {},
        [
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:8080",
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:15008",
            "in ens3 tcp 198.51.100.7 > 172.17.0.2:8080",
            "in ens3 tcp [2606:4700::1111] > [fd00:5::10]:8080",
            "app tcp 192.0.2.10:80",
            "app tcp 127.0.0.2:80",
            "proxy tcp 192.0.2.10:80",
            "uid1337 tcp 192.0.2.10:8080 from=127.0.0.6",
            "gid1337 tcp 127.0.0.2:80",
            "proxy tcp 127.0.0.1:80",
            "proxy tcp 192.0.2.10:15008",
        ],
    ),
    (
        "loopback-outbound-iprange",
        {},
        ["app tcp 127.1.2.3:80", "app tcp 192.0.2.10:80", "gid1337 tcp 192.0.2.10:80"],
    ),
    (
        "kube-virt-interfaces",
        {},
        [
            "app tcp 198.51.100.7:80",
            "proxy tcp 198.51.100.7:80",
            "gid1337 tcp 198.51.100.7:80",
            "app tcp 127.0.0.1:80",
            "app tcp 198.18.0.9:80",
        ],
    ),
    (
        "ipv6-outbound-ports",
        {},
        [
            "app tcp [2606:4700::1111]:31000",
            "app tcp [2606:4700::1111]:80",
            "app tcp 198.51.100.7:32000",
            "uid1337 tcp [2606:4700::1111]:31000",
            "in ens3 tcp [2606:4700::1111] > [fd00:5::10]:8080",
        ],
    ),
    (
        "inbound-ports-tproxy",
        {},
        [
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:31000",
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:8080",
            "proxy tcp 192.0.2.10:80",
        ],
    ),
    (
        "tproxy",
        {},
        [
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:8080",
            "in ens3 tcp [2606:4700::1111] > [fd00:5::10]:8080",
            "in not-istio-nic tcp 198.18.0.9 > 198.18.0.5:8080",
            "in ens3 tcp 198.51.100.7 > 172.17.0.2:8080",
            "app tcp 9.9.1.1:80",
            "app tcp 192.0.2.10:80",
            "app tcp [fd00:5::10]:80",
            "proxy tcp 192.0.2.10:80",
            "app tcp 127.0.0.1:80",
            "app tcp 198.18.0.9:80",
            "app udp 127.0.0.53:53",
            "proxy udp 198.51.100.7:53",
            "root tcp 192.0.2.10:8080 from=198.51.100.7 mark=0x539",
        ],
    ),
    (
        "module defaults",
        {"ip_families": ["ipv4", "ipv6"]},
        [
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:22",
            "in ens3 tcp [2606:4700::1111] > [fd00:5::10]:15021",
            "in ens3 tcp 198.51.100.7 > 192.0.2.10:8080",
            "app tcp [2606:4700::1111]:80",
            "proxy tcp [2606:4700::1111]:80",
            "uid1337 tcp [fd00:5::10]:80",
        ],
    ),
]


def lab_text(text, lab):
    """A grid packet's text with the lab's addresses and interface names."""
    for grid, real in sorted(ADDRESSES.items(), key=lambda item: -len(item[0])):
        text = re.sub(r"(?<![\w.:])%s(?![\w.])" % re.escape(grid), real, text)
    return text.replace("in ens3 ", "in %s " % lab.host_iface)


def build_lab(lab):
    """The excluded interface (a second link to the peer), the captured range on the peer, listeners."""
    lab.run(lab.host, ["ip", "link", "add", EXCLUDED, "type", "veth", "peer", "name", "hmx" + lab.host[7:13]])
    lab.run(lab.host, ["ip", "link", "set", "hmx" + lab.host[7:13], "netns", lab.peer])
    for ns, dev, v4, v6 in (
        (lab.host, EXCLUDED, EXCLUDED_HOST_V4, EXCLUDED_HOST_V6),
        (lab.peer, "hmx" + lab.host[7:13], EXCLUDED_PEER_V4, EXCLUDED_PEER_V6),
    ):
        lab.run(ns, ["ip", "link", "set", "dev", dev, "addrgenmode", "none"])
        lab.run(ns, ["ip", "addr", "add", v4 + "/24", "dev", dev])
        lab.run(ns, ["ip", "-6", "addr", "add", v6 + "/64", "dev", dev, "nodad"])
        lab.run(ns, ["ip", "link", "set", dev, "up"])
    lab.run(lab.peer, ["ip", "addr", "add", CAPTURED_RANGE_V4 + "/16", "dev", "hmp" + lab.host[7:13]])
    lab.run(lab.host, ["ip", "route", "add", "9.9.0.0/16", "dev", lab.host_iface])
    lab.run(lab.peer, ["ip", "route", "add", CONTAINERS_V4, "via", HOST_V4])  # what the host would forward
    for port in HOST_PORTS:
        lab.serve(lab.host, port, "--label", "host", "--transparent")
    # The DNS proxy runs as the proxy user: the conntrack zones of the DNS rules expect its answers to be.
    lab.serve(lab.host, 15053, "--label", "host", "--udp", "--uid", "1337", "--gid", "1337")
    for port in PEER_PORTS:
        lab.serve(lab.peer, port, "--label", "peer")
    lab.serve(lab.peer, 53, "--label", "peer", "--udp")
    return Host.build(
        {
            lab.host_iface: [HOST_V4 + "/24", HOST_V6 + "/64"],
            EXCLUDED: [EXCLUDED_HOST_V4 + "/24", EXCLUDED_HOST_V6 + "/64"],
        },
        lab.host_iface,
    )


def kernel_rules(lab):
    """What the host's kernel holds: {family: Ruleset} and the fwmark policy routes."""
    rulesets, routes = {}, []
    for family, save, ip in (("ipv4", "iptables-nft-save", "-4"), ("ipv6", "ip6tables-nft-save", "-6")):
        rulesets[family] = parse_rules(lab.run(lab.host, [save]).stdout)
        for line in lab.run(lab.host, ["ip", ip, "rule", "show"]).stdout.splitlines():
            found = re.search(r"fwmark (0x[0-9a-f]+)(?:/(0x[0-9a-f]+))? lookup (\d+)", line)
            if found:
                table = found.group(3)
                assert "local default dev lo" in lab.run(lab.host, ["ip", ip, "route", "show", "table", table]).stdout
                mask = int(found.group(2), 16) if found.group(2) else 0xFFFFFFFF
                routes.append(PolicyRoute(family, int(found.group(1), 16), int(table), mask))
    return rulesets, routes


def send(lab, host, packet):
    """Send the packet for real; the probe's JSON answer."""
    if packet.is_local:
        argv = [sys.executable, PROBE, "connect", str(packet.dst), str(packet.dport), "--timeout", "2"]
        if packet.sender.uid != 0 or packet.sender.gid != 0:
            argv += ["--uid", str(packet.sender.uid), "--gid", str(packet.sender.gid)]
        if packet.src is not None:
            argv += ["--bind", str(packet.src)] + ([] if host.is_local(packet.src) else ["--transparent"])
        if packet.mark:
            argv += ["--mark", str(packet.mark)]
        namespace = lab.host
    else:
        # The peer must reach the destination through the link the packet names.
        link = {lab.host_iface: "hmp", EXCLUDED: "hmx"}[packet.in_iface] + lab.host[7:13]
        route = lab.run(lab.peer, ["ip", "route", "get", str(packet.dst)]).stdout
        assert " dev %s " % link in route, "the peer cannot send %s through %s: %s" % (packet.text, link, route)
        argv = [sys.executable, PROBE, "connect", str(packet.dst), str(packet.dport), "--timeout", "2"]
        namespace = lab.peer
    if packet.proto == "udp":
        argv.append("--udp")
    proc = lab.run(namespace, argv, check=False)
    assert proc.stdout, "the probe printed nothing: %s" % proc.stderr
    return json.loads(proc.stdout)


def endpoint(address, port):
    return ("[%s]:%d" if ipaddress.ip_address(address).version == 6 else "%s:%d") % (address, port)


def observed(lab, packet, answer):
    """The fate the real packet met, as far as its landing shows (no marks, no zones)."""
    if "error" in answer:
        return "drop" if "timed out" in answer["error"] else "error: %s" % answer["error"]
    if answer["label"] == "peer":
        local = answer.get("local", "")
        return "out %s" % (EXCLUDED if EXCLUDED_PEER_V4 in local or EXCLUDED_PEER_V6 in local else lab.host_iface)
    port = answer["port"]
    if packet.proto == "udp":
        return "local :%d" % port if port == packet.dport else "redirect :%d" % port
    destination = endpoint(packet.dst, packet.dport)
    if answer["local"] == destination:
        return "local :%d" % port if port == packet.dport else "tproxy :%d" % port
    assert answer["original_dst"] == destination, "redirected, but reports %s as the original destination" % answer
    return "redirect :%d" % port


@pytest.fixture
def resolver_file(lab):
    """The host namespace's own resolv.conf (ip netns exec mounts /etc/netns/NS/ over /etc/)."""
    directory = os.path.join("/etc/netns", lab.host)
    os.makedirs(directory)
    path = os.path.join(directory, "resolv.conf")
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.remove(path)
        os.rmdir(directory)


@pytest.mark.parametrize(("name", "extra", "texts"), CHECKS, ids=[check[0] for check in CHECKS])
def test_the_evaluator_predicts_where_real_connections_land(lab, resolver_file, name, extra, texts):
    case = CASES.get(name)
    options = dict(case.options) if case else {}
    options.update(extra, backend="iptables-nft")
    with open(resolver_file, "w") as handle:
        for family in ("ipv4", "ipv6"):
            handle.writelines("nameserver %s\n" % server for server in (case.nameservers[family] if case else ()))
    host = build_lab(lab)
    lab.ok(**options)
    rulesets, routes = kernel_rules(lab)
    host = host.with_policy_routes(routes)
    wrong = []
    for text in texts:
        packet = parse_packet(lab_text(text, lab), PROCESSES)
        predicted = decide(rulesets, host, packet).fate
        landed = observed(lab, packet, send(lab, host, packet))
        expected = str(Fate(predicted.action, predicted.port, predicted.iface))
        if predicted.action == "forward":
            # This lab's host does not forward: not captured, the packet dies there. Real
            # forwarding is proven on the Docker-like host (test_docker_like.py).
            expected = "drop"
        if expected != landed:
            wrong.append("%s (grid: %s): predicted %s, landed %s" % (packet.text, text, predicted, landed))
    assert not wrong, "%s: the evaluator mispredicted:\n  %s" % (name, "\n  ".join(wrong))
