"""traffic_capture on a host that runs containers, built from namespaces as Docker builds it.

The host has a ``docker0`` bridge, a container namespace behind a veth on it,
forwarding on, and Docker's own nat and filter rules as Docker writes them
(DOCKER, DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2, MASQUERADE, a published
port's DNAT). The lab's peer stands for every other host. Real packets, real
iptables-nft; traffic stays in these namespaces.
"""

import json
import re
import sys

import pytest
from netlab import HOST_V4, PEER_V4, PROBE, Lab, sh

pytestmark = pytest.mark.netns

BRIDGE = "docker0"
BRIDGE_V4 = "172.17.0.1"
CONTAINER_V4 = "172.17.0.2"
PUBLISHED = 8080  # the host port Docker publishes for the container's port 80
APP_PORT = 9000  # the host's own application

# Docker's rules, as `iptables-save` prints what dockerd writes for one container
# publishing 8080 -> 80 on the default bridge.
DOCKER_RULES = """\
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""


def removal(rules):
    """What takes ``rules`` away: rules of built-in chains deleted, chains of their own flushed and removed."""
    out = []
    for table in re.findall(r"^(\*\w+\n.*?)^COMMIT\n", rules, re.M | re.S):
        lines = table.splitlines()
        own = [line.split()[0][1:] for line in lines if re.match(r":\S+ - ", line)]
        out.append(lines[0])
        out += ["-D" + line[2:] for line in lines if line.startswith("-A ") and line.split()[1] not in own]
        out += ["-F " + chain for chain in own] + ["-X " + chain for chain in own]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# What a Docker restart does to its rules: take them all away, then write them again.
DOCKER_REMOVE = removal(DOCKER_RULES)


class DockerHost:
    """The lab's host made a Docker host: bridge, container, forwarding, Docker's rules."""

    def __init__(self, lab):
        self.lab = lab
        self.container = lab.host[:-1] + "c"

    def up(self):
        lab, tag = self.lab, self.lab.host[7:13]
        lab.run(lab.host, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        lab.run(lab.host, ["ip", "link", "add", BRIDGE, "type", "bridge"])
        lab.run(lab.host, ["ip", "addr", "add", BRIDGE_V4 + "/16", "dev", BRIDGE])
        lab.run(lab.host, ["ip", "link", "set", BRIDGE, "up"])
        sh(["ip", "netns", "add", self.container])
        veth = "hmv" + tag
        lab.run(lab.host, ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.container])
        lab.run(lab.host, ["ip", "link", "set", veth, "master", BRIDGE, "up"])
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", CONTAINER_V4 + "/16", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", "default", "via", BRIDGE_V4],
        ):
            lab.run(self.container, argv)
        self.restore(DOCKER_RULES)
        lab.serve(self.container, 80, "--label", "container", "--family", "4")
        for port in (22, 15001, 15006, APP_PORT):
            lab.serve(lab.host, port, "--label", "host", "--family", "4")
        lab.serve(lab.peer, 80, "--label", "peer", "--family", "4")
        return self

    def down(self):
        sh(["ip", "netns", "del", self.container], check=False)

    def restore(self, text):
        self.lab.run(self.lab.host, ["iptables-nft-restore", "--noflush"], input=text)

    def connect(self, ns, address, port):
        """The probe's answer: {"label", "port", "local", "original_dst", "peer"}, or {"error"}."""
        argv = [sys.executable, PROBE, "connect", address, str(port), "--timeout", "3"]
        return json.loads(self.lab.run(ns, argv, check=False).stdout)

    def docker_rules(self):
        """Docker's tables (nat, filter) exactly as iptables-save prints them, our rules left out."""
        lines, table = [], None
        for line in self.lab.run(self.lab.host, ["iptables-nft-save"]).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            if line.startswith("#") or "HOSTMESH_" in line or table not in ("nat", "filter"):
                continue
            lines.append(line.split(" [")[0] if line.startswith(":") else line)
        return lines


@pytest.fixture
def docker():
    lab = Lab().up()
    host = DockerHost(lab)
    try:
        yield host.up()
    finally:
        host.down()
        lab.down()


CAPTURE = {"backend": "iptables-nft", "ip_families": ["ipv4"]}


def test_containers_published_ports_and_the_hosts_app_work_with_capture_on(docker):
    lab = docker.lab
    # The host's own app is captured: inbound on its port, outbound to the peer.
    lab.ok(inbound_ports=[APP_PORT], **CAPTURE)
    inbound = docker.connect(lab.peer, HOST_V4, APP_PORT)
    assert (inbound["port"], inbound["original_dst"]) == (15006, "%s:%d" % (HOST_V4, APP_PORT)), inbound
    outbound = docker.connect(lab.host, PEER_V4, 80)
    assert (outbound["port"], outbound["original_dst"]) == (15001, "%s:80" % PEER_V4), outbound
    # The container's egress is forwarded (and masqueraded), not captured as inbound.
    egress = docker.connect(docker.container, PEER_V4, 80)
    assert (egress.get("label"), egress.get("peer", "").split(":")[0]) == ("peer", HOST_V4), egress
    # The published port reaches the container through Docker's DNAT.
    published = docker.connect(lab.peer, HOST_V4, PUBLISHED)
    assert (published.get("label"), published.get("local")) == ("container", "%s:80" % CONTAINER_V4), published


def test_every_inbound_port_captured_still_leaves_containers_egress_alone(docker):
    lab = docker.lab
    lab.ok(**CAPTURE)  # inbound '*': everything addressed to the host
    egress = docker.connect(docker.container, PEER_V4, 80)
    assert egress.get("label") == "peer", egress
    # A published port is addressed to the host, so '*' takes it as inbound: the
    # documented reason to list the app's ports, or exclude published ones.
    published = docker.connect(lab.peer, HOST_V4, PUBLISHED)
    assert (published.get("label"), published.get("port")) == ("host", 15006), published
    lab.ok(inbound_ports_exclude=[22, PUBLISHED], **CAPTURE)
    published = docker.connect(lab.peer, HOST_V4, PUBLISHED)
    assert published.get("label") == "container", published


def test_virtual_interface_egress_arrives_at_the_outbound_port_with_its_destination(docker):
    lab = docker.lab
    lab.ok(virtual_interfaces=[BRIDGE], inbound_ports=[APP_PORT], **CAPTURE)
    egress = docker.connect(docker.container, PEER_V4, 80)
    assert (egress.get("port"), egress.get("original_dst")) == (15001, "%s:80" % PEER_V4), egress
    assert egress["peer"].split(":")[0] == CONTAINER_V4
    # What arrives from the bridge is never captured as inbound, even for this host.
    to_app = docker.connect(docker.container, HOST_V4, APP_PORT)
    assert to_app.get("port") == 15001, to_app  # outbound capture covers every address here
    lab.ok(virtual_interfaces=[BRIDGE], inbound_ports=[APP_PORT], outbound_cidrs=["10.0.0.0/8"], **CAPTURE)
    assert docker.connect(docker.container, PEER_V4, 80).get("port") == 15001
    published = docker.connect(lab.peer, HOST_V4, PUBLISHED)
    assert published.get("label") == "container", published


def test_apply_and_absent_leave_dockers_rules_byte_identical(docker):
    lab = docker.lab
    before = docker.docker_rules()
    lab.ok(virtual_interfaces=[BRIDGE], mode="redirect", dns_redirect=True, dns_capture_all=True, **CAPTURE)
    assert docker.docker_rules() == before
    removed = lab.ok(state="absent")
    assert removed["changed"] is True
    assert docker.docker_rules() == before
    assert "HOSTMESH_" not in lab.run(lab.host, ["iptables-nft-save"]).stdout


def test_a_docker_restart_leaves_capture_intact(docker):
    lab = docker.lab
    options = dict(virtual_interfaces=[BRIDGE], inbound_ports=[APP_PORT], **CAPTURE)
    lab.ok(**options)
    ours = [line for line in lab.run(lab.host, ["iptables-nft-save"]).stdout.splitlines() if "HOSTMESH_" in line]
    docker.restore(DOCKER_REMOVE)
    assert "DOCKER" not in lab.run(lab.host, ["iptables-nft-save"]).stdout
    docker.restore(DOCKER_RULES)
    after = [line for line in lab.run(lab.host, ["iptables-nft-save"]).stdout.splitlines() if "HOSTMESH_" in line]
    assert after == ours
    assert lab.ok(**options)["changed"] is False
    assert docker.connect(docker.container, PEER_V4, 80).get("port") == 15001
    assert docker.connect(lab.peer, HOST_V4, PUBLISHED).get("label") == "container"
    assert docker.connect(lab.peer, HOST_V4, APP_PORT).get("port") == 15006


def test_the_ssh_connection_from_a_container_is_never_captured(docker):
    """Ansible run from a container on the bridge: its SSH port stays direct, groups or not."""
    lab = docker.lab
    ssh = {"SSH_CONNECTION": "%s 40022 %s 22" % (CONTAINER_V4, BRIDGE_V4)}
    result = lab.module(
        env=ssh, virtual_interfaces=[BRIDGE], outbound_owner_groups=[0], inbound_ports_exclude=[], **CAPTURE
    )
    assert not result.get("failed"), result.get("msg")
    to_ssh = docker.connect(docker.container, BRIDGE_V4, 22)
    assert (to_ssh.get("port"), to_ssh.get("local")) == (22, "%s:22" % BRIDGE_V4), to_ssh
    # Without the SSH connection in the environment, the same options capture it.
    lab.ok(virtual_interfaces=[BRIDGE], outbound_owner_groups=[0], inbound_ports_exclude=[], **CAPTURE)
    assert docker.connect(docker.container, BRIDGE_V4, 22).get("port") == 15001
