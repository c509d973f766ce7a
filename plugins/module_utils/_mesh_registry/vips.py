# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Virtual IPs of mesh services: one IPv4 and one IPv6 address per service, stable across runs.

A service's VIPs come from a hash of ``<namespace>/<name>``, so they do not
depend on the inventory's order, on other services or on the controller. Two
services whose hashes land on the same address are settled in name order: the
first keeps it, the next takes the following free address (and so on), so the
outcome is the same on every run with the same services.
"""

import hashlib
import ipaddress

# IPv4: 240.0.0.0/4 is reserved (never routed), as Istio's auto-allocated VIPs;
# IPv6: 2001:2::/48 is the benchmarking block (RFC 5180), never routed either.
VIP_NETWORKS = (ipaddress.ip_network("240.240.0.0/16"), ipaddress.ip_network("2001:2::/48"))


def _slot(key: str, size: int) -> int:
    """Where ``key`` hashes to among ``size`` addresses, skipping the first (the network's own)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:16], "big") % (size - 2)


def allocate_vips(keys) -> dict:
    """``<namespace>/<name>`` -> [IPv4 VIP, IPv6 VIP], for every key; deterministic, collision-free."""
    keys = sorted(set(keys))
    allocated = {key: [] for key in keys}
    for network in VIP_NETWORKS:
        size = network.num_addresses
        if len(keys) > size - 2:
            raise ValueError("%d services do not fit in %s" % (len(keys), network))
        taken = set()
        for key in keys:
            slot = _slot(key, size)
            while slot in taken:
                slot = 1 + slot % (size - 2)
            taken.add(slot)
            allocated[key].append(str(network.network_address + slot))
    return allocated
