# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which backend and address families a run uses, decided once from what the host has.

Pure functions of the options and the snapshot (host.py): the snapshot needs
the answer to know what else to read, and the plan builds on it.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import MissingFeature
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import parse_save
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    IPTABLES_VARIANTS,
    IPV4,
    IPV6,
)


def choose_backend(options, snapshot) -> str:
    """The user's backend, or for ``auto`` the iptables variant already holding rules
    (so we share the tables other tools see), else iptables-nft."""
    if options.backend == "nftables":
        if not snapshot.nft:
            raise MissingFeature(
                "backend", "nftables", "backend: 'nftables' needs the nft command, which this host does not have"
            )
        return "nftables"
    if options.backend != "auto":
        if (options.backend, IPV4) not in snapshot.iptables:
            raise MissingFeature(
                "backend",
                options.backend,
                "backend: %r needs %s-save and -restore, which this host does not have"
                % (options.backend, options.backend),
            )
        return options.backend
    available = [variant for variant in IPTABLES_VARIANTS if (variant, IPV4) in snapshot.iptables]
    if not available:
        if snapshot.nft:
            return "nftables"
        raise MissingFeature(
            "backend", "auto", "backend: 'auto' found neither iptables (nft or legacy) nor nft on this host"
        )
    saves = {variant: snapshot.saves[(variant, IPV4)] for variant in available}
    holding = [v for v in available if any(line.startswith("-A ") for line in saves[v].splitlines())]
    ours = [v for v in holding if parse_save(saves[v], options.chain_prefix)]
    for candidates in (ours, holding):
        if candidates:
            return candidates[0]
    return available[0]


def capture_families(options, has_ipv6: bool) -> tuple:
    """The families to capture: the user's list, or IPv4 plus IPv6 where the host has it."""
    if options.ip_families == "auto":
        return (IPV4, IPV6) if has_ipv6 else (IPV4,)
    return options.ip_families


def require_families(backend: str, families, snapshot) -> None:
    """Refuse families the chosen iptables variant has no tools for."""
    if backend not in IPTABLES_VARIANTS:
        return
    missing = [family for family in families if (backend, family) not in snapshot.iptables]
    if missing:
        raise MissingFeature(
            "ip_families",
            list(families),
            "ip_families: %s needs %s for %s, which this host does not have" % (list(families), backend, missing[0]),
        )
