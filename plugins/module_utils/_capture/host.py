# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The host edge: every external command traffic_capture runs, and the one snapshot it plans from.

``HostCommands`` wraps ``run_command(argv, data=None) -> (rc, out, err)``,
``find_binary(name) -> path or None`` and ``read_file(path) -> text or None``
(AnsibleModule's on a host; fakes in unit tests), so the exact commands are
visible here and nowhere else. ``observe`` reads everything a plan needs once;
planning (plan.py) is then a pure function of the options and that snapshot.
"""

import os
import re
import subprocess
from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture import nft
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.backend import capture_families, choose_backend
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CommandFailed
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import parse_save, tables_in_save
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    FAMILIES,
    IPTABLES_VARIANTS,
    IPV4,
    IPV6,
    TABLES,
    IpRoute,
    IpRule,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import dns_captured, tables_used
from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_text

_VERSION_TAG = {"iptables-nft": "nf_tables", "iptables-legacy": "legacy"}
# What iptables-legacy-save itself reads to learn which tables to print.
_LEGACY_TABLE_NAMES = {IPV4: "/proc/net/ip_tables_names", IPV6: "/proc/net/ip6_tables_names"}
_FAMILY_FLAG = {IPV4: "-4", IPV6: "-6"}
_FAMILY_WORD = {IPV4: "ip", IPV6: "ip6"}  # nft's name for iptables-nft's tables of a family
_RULE_LINE = re.compile(r"^\d+:\s")

Snapshot = namedtuple(
    "Snapshot",
    (
        "iptables",  # {(variant, family): (save path, restore path)} for the tools this host has
        "saves",  # {(variant, family): iptables-save text}, one per pair in ``iptables``
        "nft",  # path of nft, or None
        "nft_table",  # our inet table as ``nft list`` prints it; "" when absent or not looked for
        "nft_tables",  # {(family, table): nft listing} of iptables-nft tables a change enters or leaves
        "ip",  # path of ip, or None
        "routing",  # {family: (IpRule tuple, IpRoute tuple)}: our policy routing as found
        "has_ipv6",
        "nameservers",  # {family: [address]} from resolv.conf
    ),
)


class HostCommands:
    """The commands, with binaries resolved once each through ``find_binary``."""

    def __init__(self, run_command, find_binary, read_file, lock_wait=30):
        self._run_command = run_command
        self._find_binary = find_binary
        self.read_file = read_file
        self.lock_wait = lock_wait
        self._binaries = {}
        self._variants = {}

    @classmethod
    def for_module(cls, module, lock_wait: int) -> "HostCommands":
        """The host an AnsibleModule runs on: its binary lookup, and ``run_process`` for the commands."""
        return cls(run_process, module.get_bin_path, read_text, lock_wait)

    # -- plumbing ----------------------------------------------------------------

    def _run(self, argv, data=None, check=True):
        try:
            rc, out, err = self._run_command(argv, data=data)
        except OSError as error:
            raise CommandFailed(argv, 127, "", str(error)) from None
        if check and rc != 0:
            raise CommandFailed(argv, rc, out, err)
        return rc, out, err

    def binary(self, name: str):
        """Path of ``name`` on this host, or None."""
        if name not in self._binaries:
            self._binaries[name] = self._find_binary(name)
        return self._binaries[name]

    def _variant_of(self, path):
        """Which variant an unsuffixed iptables tool is (asked once per path)."""
        if path not in self._variants:
            _rc, out, err = self._run([path, "--version"], check=False)
            text = out + err
            self._variants[path] = next((v for v, tag in _VERSION_TAG.items() if "(%s)" % tag in text), None)
        return self._variants[path]

    def _iptables_tool(self, variant, family, tool):
        """Path of e.g. ip6tables-legacy-restore, falling back to the unsuffixed tool
        when it is that variant (some distributions ship only one)."""
        base = ("iptables" if family == IPV4 else "ip6tables") + tool
        suffixed = self.binary(base.replace("tables", "tables-" + variant.split("-")[1], 1))
        if suffixed:
            return suffixed
        plain = self.binary(base)
        if plain and self._variant_of(plain) == variant:
            return plain
        return None

    def iptables_tools(self, variant: str, family: str):
        """(save path, restore path) for a variant and family, or None when the host lacks either."""
        save = self._iptables_tool(variant, family, "-save")
        restore = save and self._iptables_tool(variant, family, "-restore")
        return (save, restore) if restore else None

    # -- iptables ------------------------------------------------------------------

    def iptables_save(self, tools) -> str:
        """``iptables-save`` text; ``tools`` is the (save, restore) pair from iptables_tools."""
        return self._run([tools[0]])[1]

    def iptables_restore(self, tools, text: str) -> None:
        """Feed ``text`` to ``iptables-restore --noflush`` (one transaction per table)."""
        self._run([tools[1], "--noflush", "--wait", str(self.lock_wait)], data=text)

    # -- nftables ------------------------------------------------------------------

    def nft_list(self, name: str, family: str = "inet") -> str:
        """A table as nft lists it, or "" when it does not exist."""
        argv = [self.binary("nft"), *nft.list_args(name, family)]
        rc, out, err = self._run(argv, check=False)
        return nft.listing_from_result(argv, rc, out, err)

    def nft_apply(self, script: str) -> None:
        """Run an ``nft -f`` script: one transaction, all of it or nothing."""
        self._run([self.binary("nft"), *nft.APPLY_ARGS], data=script)

    # -- policy routing (TPROXY) -------------------------------------------------------

    def ip_routing(self, family: str, mark: int, table: int):
        """(our ip rules, our routes) in ``family``: ``fwmark MARK lookup TABLE`` and
        ``local default dev lo table TABLE``, read with one ``ip -batch``."""
        argv = [self.binary("ip"), _FAMILY_FLAG[family], "-batch", "-"]
        rc, out, err = self._run(argv, data="rule show\nroute show table %d\n" % table, check=False)
        if rc != 0:
            if "Address family not supported" in err:
                return (), ()  # the kernel has no IPv6 at all
            raise CommandFailed(argv, rc, out, err)
        wanted = re.compile(r"\bfwmark %s\b.*\blookup %d\b" % (re.escape(hex(mark)), table))
        rules, routes = [], []
        for line in out.splitlines():
            if _RULE_LINE.match(line):
                if wanted.search(line):
                    rules.append(IpRule(family, mark, table))
            elif re.match(r"^local (default|::/0|0\.0\.0\.0/0) dev lo\b", line.strip()):
                routes.append(IpRoute(family, table, "lo"))
        return tuple(rules), tuple(routes)

    def ip_routing_change(self, family: str, changes) -> None:
        """Apply [(verb, IpRule or IpRoute)] in order with one ``ip -batch`` (it stops at the first failure)."""
        lines = "".join(" ".join(routing_words(verb, item)) + "\n" for verb, item in changes)
        self._run([self.binary("ip"), _FAMILY_FLAG[family], "-batch", "-"], data=lines)


def run_process(argv, data=None):
    """(rc, out, err) of ``argv`` in the C locale (so errors read as expected), ``data`` on standard input.

    Not AnsibleModule.run_command: its preexec_fn makes every command fork the
    whole module process, several milliseconds each, and a run makes five to
    nine of them. subprocess still resets SIGPIPE and friends in the child.
    """
    proc = subprocess.run(
        argv,
        input=None if data is None else data.encode("utf-8"),
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env=dict(os.environ, LC_ALL="C"),
        check=False,
    )
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "surrogateescape"),
        proc.stderr.decode("utf-8", "surrogateescape"),
    )


def routing_words(verb: str, item) -> list:
    """``ip`` words (after the family flag) that add or delete one of our rules or routes."""
    if isinstance(item, IpRule):
        return ["rule", verb, "fwmark", str(item.fwmark), "lookup", str(item.table)]
    return ["route", verb, "local", "default", "dev", item.device, "table", str(item.table)]


def routing_command(ip_path: str, verb: str, item) -> list:
    """The whole ``ip`` command line for one routing change (the rules file runs these)."""
    return [ip_path, _FAMILY_FLAG[item.family], *routing_words(verb, item)]


def iptables_command_names(variant: str, family: str):
    """Plain names of the iptables and restore commands, for the rules file."""
    base = ("iptables" if family == IPV4 else "ip6tables") + "-" + variant.split("-")[1]
    return base, base + "-restore"


def nft_family_word(family: str) -> str:
    """nft's family name for iptables-nft's tables (``ip``, ``ip6``)."""
    return _FAMILY_WORD[family]


def nameservers(resolv_conf_text) -> dict:
    """Resolvers from resolv.conf text, by family."""
    servers = {IPV4: [], IPV6: []}
    for line in (resolv_conf_text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]
            servers[IPV6 if ":" in address else IPV4].append(address)
    return servers


def has_ipv6(if_inet6_text, disable_ipv6_text) -> bool:
    """IPv6 is usable when the kernel has an IPv6 address and it is not switched off."""
    disabled = (disable_ipv6_text or "0").strip() == "1"
    return bool(if_inet6_text and if_inet6_text.strip()) and not disabled


def observe(host: HostCommands, options) -> Snapshot:
    """Everything a plan for ``options`` needs from the host, each save or list command run at most once.

    Legacy iptables is only asked when the kernel lists a legacy table for that
    family (the file iptables-legacy-save itself reads), and an iptables-nft
    table is only listed with nft when a change enters or leaves it (to put
    back, or tidy, the built-in chains iptables-nft makes on demand).
    """
    read = host.read_file
    tools, saves = _iptables_saves(host)
    ipv6 = has_ipv6(read("/proc/net/if_inet6"), read("/proc/sys/net/ipv6/conf/all/disable_ipv6"))
    servers = nameservers(read("/etc/resolv.conf"))
    found = Snapshot(tools, saves, host.binary("nft"), "", {}, host.binary("ip"), {}, ipv6, servers)
    if found.nft and not nft.table_name_problem(options.chain_prefix):
        found = found._replace(nft_table=host.nft_list(nft.table_name(options.chain_prefix)))
    if found.nft:
        found = found._replace(nft_tables=_iptables_nft_tables(host, options, found))
    if found.ip:
        routing = {
            family: host.ip_routing(family, options.tproxy_mark, options.tproxy_route_table) for family in FAMILIES
        }
        found = found._replace(routing=routing)
    return found


def _iptables_saves(host):
    """({(variant, family): tools}, {(variant, family): save text}) for the tools this host has."""
    tools, saves = {}, {}
    for variant in IPTABLES_VARIANTS:
        for family in FAMILIES:
            pair = host.iptables_tools(variant, family)
            if pair is None:
                continue
            tools[(variant, family)] = pair
            if variant == "iptables-legacy" and not (host.read_file(_LEGACY_TABLE_NAMES[family]) or "").strip():
                saves[(variant, family)] = ""  # what iptables-legacy-save would print
            else:
                saves[(variant, family)] = host.iptables_save(pair)
    return tools, saves


def _iptables_nft_tables(host, options, found):
    """nft listings of the iptables-nft tables this run enters or leaves (all that exist, for state absent)."""
    backend = choose_backend(options, found)
    families = capture_families(options, found.has_ipv6)
    listings = {}
    for family in FAMILIES:
        save = found.saves.get(("iptables-nft", family))
        if save is None:
            continue
        chosen = options.state == "present" and backend == "iptables-nft" and family in families
        used = tables_used(options, dns_captured(options, found.nameservers)) if chosen else frozenset()
        moving = set(parse_save(save, options.chain_prefix)).symmetric_difference(used)
        for table in TABLES:
            if table in tables_in_save(save) and (table in moving or options.state == "absent"):
                listings[(family, table)] = host.nft_list(table, nft_family_word(family))
    return listings
