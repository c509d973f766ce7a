"""The sandbox's private network: a bridge in its own namespace.

Layout for a sandbox with id ``abc123`` on subnet ``10.213.N.0/24``:

- namespace ``hm-sbx-abc123`` holds bridge ``br0``;
- the controller reaches it through veth ``hm-sbx-abc123`` (``.1``) whose
  peer ``ctl`` sits on the bridge;
- each host gets a fresh namespace ``hm-sbx-abc123-HOST`` per boot, with
  ``eth0`` (``.11``, ``.12``, ...) whose peer ``h-HOST`` sits on the bridge.

Only these links and addresses are used; nothing is routed anywhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

from tools.sandbox import commands

PREFIX = "hm-sbx-"
# A /16 of private space set aside for sandbox links; one /24 per sandbox.
SUPERNET = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST_OCTET = 11
NETNS_DIR = Path("/run/netns")
SUBNET_LOCK = Path("/run/hm-sbx-subnet.lock")


def bridge_netns(sandbox_id: str) -> str:
    return f"{PREFIX}{sandbox_id}"


def controller_link(sandbox_id: str) -> str:
    return f"{PREFIX}{sandbox_id}"


def host_netns(sandbox_id: str, host: str) -> str:
    return f"{PREFIX}{sandbox_id}-{host}"


def host_peer_link(host: str) -> str:
    return f"h-{host}"


def host_address(subnet: str, index: int) -> str:
    net = ipaddress.ip_network(subnet)
    return str(net.network_address + FIRST_HOST_OCTET + index)


def controller_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet).network_address + 1)


def pick_subnet(in_use: Iterable[str]) -> str:
    """First /24 of the sandbox range that overlaps nothing already configured."""
    used = [ipaddress.ip_network(n, strict=False) for n in in_use]
    for candidate in SUPERNET.subnets(new_prefix=24):
        if candidate.network_address.packed[2] == 0:
            continue
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise RuntimeError(f"no free /24 left in {SUPERNET} for a new sandbox")


@contextlib.contextmanager
def subnet_lock() -> Iterator[None]:
    """Held while a sandbox picks its subnet and claims it with its controller link."""
    with open(SUBNET_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def subnets_in_use() -> list[str]:
    """IPv4 networks on the machine's links and routes (root namespace)."""
    out = commands.run(commands.ip(None, "-o", "-4", "addr", "show")).stdout
    nets = re.findall(r"inet (\S+)", out)
    routes = commands.run(commands.ip(None, "-4", "route", "show")).stdout
    nets += re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)", routes, re.M)
    return nets


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_names(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def link_exists(name: str, netns: Optional[str] = None) -> bool:
    proc = commands.run(commands.ip(netns, "link", "show", "dev", name), check=False)
    return proc.returncode == 0


def bridge_up(sandbox_id: str, subnet: str) -> None:
    """Create the bridge namespace and the controller's link to it."""
    ns = bridge_netns(sandbox_id)
    link = controller_link(sandbox_id)
    prefix_len = ipaddress.ip_network(subnet).prefixlen
    if not netns_exists(ns):
        commands.run(commands.netns_add(ns))
    commands.run(commands.ip(ns, "link", "set", "lo", "up"))
    if not link_exists("br0", ns):
        commands.run(commands.ip(ns, "link", "add", "br0", "type", "bridge"))
    commands.run(commands.ip(ns, "link", "set", "br0", "up"))
    if not link_exists(link):
        commands.run(commands.ip(None, "link", "add", link, "type", "veth", "peer", "name", "ctl", "netns", ns))
        commands.run(commands.ip(None, "addr", "add", f"{controller_address(subnet)}/{prefix_len}", "dev", link))
    commands.run(commands.ip(ns, "link", "set", "ctl", "master", "br0", "up"))
    commands.run(commands.ip(None, "link", "set", link, "up"))


def host_mac(sandbox_id: str, host: str) -> str:
    """A fixed, locally administered MAC per host, so peers' ARP caches survive a reboot."""
    digest = hashlib.sha1(f"{sandbox_id}/{host}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def host_up(sandbox_id: str, host: str, address: str, subnet: str, default_route: bool = False) -> Path:
    """A fresh namespace for one boot of a host, wired to the bridge; returns its path.

    Fresh on purpose: like a VM's kernel after a reboot, the host starts with
    empty iptables/nftables rulesets and default sysctls.

    With ``default_route`` the host also gets an IPv4 default route on eth0
    with no gateway: as on a VM, its resolver's address and the mesh's
    virtual IPs are then routed (an application can send to them, and the
    capture rules take the packets), while a packet for any other address
    only gets an ARP request on the bridge that nothing answers.
    """
    ns = host_netns(sandbox_id, host)
    host_down(sandbox_id, host)
    commands.run(commands.netns_add(ns))
    peer = host_peer_link(host)
    commands.run(
        commands.ip(
            bridge_netns(sandbox_id),
            "link",
            "add",
            peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
    )
    commands.run(commands.ip(bridge_netns(sandbox_id), "link", "set", peer, "master", "br0", "up"))
    prefix_len = ipaddress.ip_network(subnet).prefixlen
    commands.run(commands.ip(ns, "link", "set", "lo", "up"))
    commands.run(commands.ip(ns, "link", "set", "eth0", "address", host_mac(sandbox_id, host)))
    commands.run(commands.ip(ns, "addr", "add", f"{address}/{prefix_len}", "dev", "eth0"))
    commands.run(commands.ip(ns, "link", "set", "eth0", "up"))
    if default_route:
        commands.run(commands.ip(ns, "-4", "route", "add", "default", "dev", "eth0"))
    # The controller may still hold the previous boot's neighbour entry.
    commands.run(
        commands.ip(None, "neigh", "flush", "to", address, "dev", controller_link(sandbox_id)),
        check=False,
    )
    return NETNS_DIR / ns


def host_down(sandbox_id: str, host: str) -> None:
    """Drop a host's namespace; its veth pair goes with it."""
    ns = host_netns(sandbox_id, host)
    if netns_exists(ns):
        commands.run(commands.netns_delete(ns), check=False)
    peer = host_peer_link(host)
    if netns_exists(bridge_netns(sandbox_id)) and link_exists(peer, bridge_netns(sandbox_id)):
        commands.run(commands.ip(bridge_netns(sandbox_id), "link", "delete", peer), check=False)


def teardown(sandbox_id: str) -> list[str]:
    """Delete every namespace and link of one sandbox; returns what was removed."""
    removed = []
    for ns in netns_names(f"{PREFIX}{sandbox_id}-"):
        commands.run(commands.netns_delete(ns), check=False)
        removed.append(f"netns {ns}")
    if netns_exists(bridge_netns(sandbox_id)):
        commands.run(commands.netns_delete(bridge_netns(sandbox_id)), check=False)
        removed.append(f"netns {bridge_netns(sandbox_id)}")
    if link_exists(controller_link(sandbox_id)):
        commands.run(commands.ip(None, "link", "delete", controller_link(sandbox_id)), check=False)
        removed.append(f"link {controller_link(sandbox_id)}")
    return removed


def netns_inode(name: str) -> Optional[int]:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None
