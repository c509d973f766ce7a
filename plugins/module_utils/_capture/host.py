# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every external command traffic_capture runs, in one place.

``HostCommands`` wraps a ``run_command(argv, data=None) -> (rc, out, err)``
callable (AnsibleModule.run_command on a host; a fake in unit tests), so the
exact commands are visible here and nowhere else.
"""

import re

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    IPV4,
    IPV6,
    IpRoute,
    IpRule,
)

IPTABLES_VARIANTS = ("iptables-nft", "iptables-legacy")
_VERSION_TAG = {"iptables-nft": "nf_tables", "iptables-legacy": "legacy"}


class CommandError(Exception):
    """A command failed; carries what a person needs to see."""

    def __init__(self, argv, rc, out, err):
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err
        super().__init__("%s exited %d: %s" % (" ".join(argv), rc, (err or out).strip()))


class HostCommands:
    """The commands, with binaries resolved through ``find_binary(name) -> path or None``."""

    def __init__(self, run_command, find_binary, lock_wait=30):
        self._run_command = run_command
        self._find_binary = find_binary
        self.lock_wait = lock_wait
        self._cache = {}

    # -- plumbing ----------------------------------------------------------

    def _run(self, argv, data=None, check=True):
        try:
            rc, out, err = self._run_command(argv, data=data)
        except OSError as error:
            raise CommandError(argv, 127, "", str(error)) from None
        if check and rc != 0:
            raise CommandError(argv, rc, out, err)
        return rc, out, err

    def binary(self, name):
        if name not in self._cache:
            self._cache[name] = self._find_binary(name)
        return self._cache[name]

    def _iptables_tool(self, variant, family, tool):
        """Path of e.g. ip6tables-legacy-restore, falling back to the unsuffixed tool
        when it is that variant (some distributions ship only one)."""
        base = ("iptables" if family == IPV4 else "ip6tables") + tool
        suffixed = self.binary(base.replace("tables", "tables-" + variant.split("-")[1], 1))
        if suffixed:
            return suffixed
        plain = self.binary(base)
        if plain and self.iptables_variant_of(plain) == variant:
            return plain
        return None

    def iptables_variant_of(self, path):
        key = ("variant", path)
        if key not in self._cache:
            _rc, out, err = self._run([path, "--version"], check=False)
            text = out + err
            self._cache[key] = next((v for v, tag in _VERSION_TAG.items() if "(%s)" % tag in text), None)
        return self._cache[key]

    # -- iptables ------------------------------------------------------------

    def iptables_available(self, variant, family=IPV4):
        return bool(self._iptables_tool(variant, family, "-save") and self._iptables_tool(variant, family, "-restore"))

    def iptables_save(self, variant, family):
        return self._run([self._iptables_tool(variant, family, "-save")])[1]

    def iptables_restore(self, variant, family, text, test_only=False):
        argv = [self._iptables_tool(variant, family, "-restore"), "--noflush", "--wait", str(self.lock_wait)]
        if test_only:
            argv.append("--test")
        self._run(argv, data=text)

    def iptables_command_names(self, variant, family):
        """Plain names of the iptables and restore commands, for the rules file."""
        base = "iptables" if family == IPV4 else "ip6tables"
        return base + "-" + variant.split("-")[1], base + "-" + variant.split("-")[1] + "-restore"

    def prune_empty_table(self, variant, family, table):
        """After our rules left an iptables-nft table: delete the built-in chains
        it holds with no rules and an accepting policy, and the table once it has
        no chains, so the host reads as before (iptables-nft creates them on
        demand). Legacy tables are kernel modules and stay registered, empty."""
        if variant != "iptables-nft" or not self.nft_available():
            return False
        name = "%s %s" % ("ip" if family == IPV4 else "ip6", table)
        rc, out, _err = self._run([self.binary("nft"), "list", "table", *name.split()], check=False)
        if rc != 0:
            return False
        chains, empty, current = [], [], None
        for line in out.splitlines():
            line = line.strip()
            opened = re.match(r"^chain (\S+) \{$", line)
            if opened:
                current = opened.group(1)
                chains.append(current)
                empty.append(current)
            elif line == "}" or line.startswith("table ") or not line:
                continue
            elif current in empty and not re.match(r"^type \w+ hook \w+ priority [\w+-]+; policy accept;$", line):
                empty.remove(current)
        doomed = [chain for chain in empty if chain in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")]
        if not doomed:
            return False
        script = ["delete chain %s %s" % (name, chain) for chain in doomed]
        if len(doomed) == len(chains):
            script = ["delete table %s" % name]
        self._run([self.binary("nft"), "-f", "-"], data="\n".join(script) + "\n")
        return True

    # -- nftables --------------------------------------------------------------

    def nft_available(self):
        return bool(self.binary("nft"))

    def nft_list_table(self, list_args):
        """The table's listing, or "" when it does not exist."""
        rc, out, err = self._run([self.binary("nft"), *list_args], check=False)
        if rc != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return ""
            raise CommandError([self.binary("nft"), *list_args], rc, out, err)
        return out

    def nft_apply(self, script, test_only=False):
        argv = [self.binary("nft")] + (["--check"] if test_only else []) + ["-f", "-"]
        self._run(argv, data=script)

    # -- policy routing (TPROXY) ---------------------------------------------

    def _ip(self, family):
        return [self.binary("ip"), "-4" if family == IPV4 else "-6"]

    def ip_rules(self, family, mark, table):
        """Our rule if present: ``fwmark <mark> lookup <table>``."""
        out = self._run([*self._ip(family), "rule", "show"])[1]
        wanted = re.compile(r"\bfwmark %s\b.*\blookup %d\b" % (re.escape(hex(mark)), table))
        return [IpRule(family, mark, table) for line in out.splitlines() if wanted.search(line)]

    def ip_routes(self, family, table):
        """Our route if present: ``local default dev lo`` in ``table``."""
        rc, out, _err = self._run([*self._ip(family), "route", "show", "table", str(table)], check=False)
        if rc != 0:
            return []
        return [
            IpRoute(family, table, "lo")
            for line in out.splitlines()
            if re.match(r"^local (default|::/0|0\.0\.0\.0/0) dev lo\b", line.strip())
        ]

    def ip_rule_argv(self, action, ip_rule):
        return [*self._ip(ip_rule.family), "rule", action, "fwmark", str(ip_rule.fwmark), "lookup", str(ip_rule.table)]

    def ip_route_argv(self, action, ip_route):
        return [
            *self._ip(ip_route.family),
            "route",
            action,
            "local",
            "default",
            "dev",
            ip_route.device,
            "table",
            str(ip_route.table),
        ]

    def ip_rule_change(self, action, ip_rule):
        self._run(self.ip_rule_argv(action, ip_rule))

    def ip_route_change(self, action, ip_route):
        self._run(self.ip_route_argv(action, ip_route))

    # -- host facts -------------------------------------------------------------

    def host_has_ipv6(self, read_file):
        """IPv6 is usable when the kernel has it on and ip6tables/nft can manage it."""
        text = read_file("/proc/net/if_inet6")
        disabled = (read_file("/proc/sys/net/ipv6/conf/all/disable_ipv6") or "0").strip() == "1"
        return bool(text and text.strip()) and not disabled


def nameservers(resolv_conf_text):
    """Resolvers from resolv.conf text, by family."""
    servers = {IPV4: [], IPV6: []}
    for line in (resolv_conf_text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]
            servers[IPV6 if ":" in address else IPV4].append(address)
    return servers
