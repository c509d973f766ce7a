# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables: our table's name, how nft lists it, and the scripts that replace or remove it.

Our rules live in one native ``inet`` table (rendered by nft_render.py, only
for the nftables backend), so both families apply in one transaction. It is
compared as the text ``nft`` prints with ``list_args``, and a change replaces
the whole table atomically. Nothing outside our table is ever named in a
script, except the tidying of the tables iptables-nft makes for our rules.

The host edge (host.py) runs, with ``LC_ALL=C`` so errors read as expected:
``nft *list_args(name)`` -> ``listing_from_result(argv, rc, out, err)``; the
plan uses ``plan_script`` / ``absent_script``; a non-empty script is fed on
standard input to ``nft *APPLY_ARGS``. The same listing of an iptables-nft
table (``ip nat``) tells ``tidy_script`` which empty built-in chains to
delete. Policy routing for TPROXY (``ip rule``/``ip route``) is not
nftables' job and stays with the edge.
"""

import re

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CommandFailed
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.lines import added_removed

# How we read our table back: numeric everything (protocols, ct states,
# priorities), so the text does not depend on /etc/protocols, /etc/services
# or /etc/passwd on the host. No -s: a counter someone adds shows as drift.
LIST_FLAGS = ("-n", "-y")

# nft reads the script from standard input; one file is one transaction.
APPLY_ARGS = ("-f", "-")

# The "mid-stream TCP" match (flags other than a bare SYN among FIN, SYN, RST,
# ACK) is rendered as nft 1.0.6 (Debian 12) lists it, "tcp flags != 0x2 /
# 0x1,0x2,0x4,0x10", which nft 0.9.8 (Debian 11) cannot parse; 0.9.8 and 1.1
# (Debian 13) list it as "tcp flags & (0x1 | 0x2 | 0x4 | 0x10) != 0x2". Scripts
# carry the form every release parses, and listings are read in the rendered form.
_FLAGS_RENDERED = re.compile(r"tcp flags (!= )?0x2 / 0x1,0x2,0x4,0x10")
_FLAGS_MASKED = re.compile(r"tcp flags & \(0x1 \| 0x2 \| 0x4 \| 0x10\) (==|!=) 0x2")

# Words nft's parser takes as keywords where a table name is expected (nft
# 1.0.6, plus ones later releases made keywords); a table cannot carry them.
_KEYWORD_TEXT = (
    "accept add ah all and arp bridge cgroup chain comment comp constant continue counter "
    "cpu create ct day dccp define delete describe destroy device devices dnat drop dst "
    "dup dynamic ecn element elements eq esp ether exists expires export exthdr fib flags "
    "flow flowtable flush frag fwd ge geneve get goto gre gretap gt handle hbh hook hour "
    "ibriport ibrname icmp icmpv6 igmp iif iifgroup iifname iiftype import include index "
    "inet insert interval ip ip6 ipsec jhash jump last le limit list log lshift lt map "
    "mark masquerade meta meter mh missing monitor ne netdev nftrace not notrack numgen "
    "obriport obrname offload oif oifgroup oifname oiftype or osf pkttype policy position "
    "priority queue quota random redefine redirect reject rename replace reset return "
    "rshift rt rt0 rt2 rtclassid rule ruleset sctp secmark set size skgid skuid snat "
    "socket srh symhash synproxy table tcp th time timeout tproxy tunnel type typeof udp "
    "udplite undefine update vlan vmap vni vxlan xor xt "
)
_NFT_KEYWORDS = frozenset(_KEYWORD_TEXT.split())


def table_name(chain_prefix: str) -> str:
    """The table for a chain prefix: ``HOSTMESH_`` -> ``hostmesh``, ``ISTIO_`` -> ``istio``."""
    name = chain_prefix.rstrip("_").lower()
    if not name or not (name[0].isalpha() and name.replace("_", "").isalnum() and name.isascii()):
        raise ValueError("chain_prefix %r gives no usable nftables table name" % chain_prefix)
    return name


def table_name_problem(chain_prefix: str) -> str:
    """Why nft could not hold the table for this prefix, or "" when it can.

    For option validation with ``backend: nftables`` (raise it as the
    chain_prefix error, before the host is touched): nft itself would only
    answer with a syntax error. ``IP_`` or ``TPROXY_`` name nft keywords.
    """
    name = table_name(chain_prefix)
    if name in _NFT_KEYWORDS:
        return (
            "with backend nftables it names the table %r, which nft reads as a keyword; "
            "pick another prefix such as HOSTMESH_" % name
        )
    return ""


def list_args(name: str, family: str = "inet") -> list:
    """The ``nft`` arguments that print a table; ours in the form ``render_table`` writes."""
    return [*LIST_FLAGS, "list", "table", family, name]


def listing_from_result(argv, rc: int, stdout: str, stderr: str) -> str:
    """The listing from an ``nft list_args(...)`` run: "" when the table does not exist."""
    if rc == 0:
        return rendered_form(stdout)
    if "No such file or directory" in stderr or "does not exist" in stderr:
        return ""
    raise CommandFailed(argv, rc, stdout, stderr)


def rendered_form(listing: str) -> str:
    """A listing with the flags match as render_table writes it, whichever nft release printed it."""
    return _FLAGS_MASKED.sub(
        lambda match: "tcp flags %s0x2 / 0x1,0x2,0x4,0x10" % ("!= " if match.group(1) == "!=" else ""), listing
    )


def parsable_form(script: str) -> str:
    """A script with the flags match in the form nft 0.9.8 to 1.1 all parse."""
    return _FLAGS_RENDERED.sub(
        lambda match: "tcp flags & (0x1 | 0x2 | 0x4 | 0x10) %s 0x2" % ("!=" if match.group(1) else "=="), script
    )


def chains_in_listing(listing: str) -> dict:
    """{chain: (policy or None, number of rules)} of one listed table."""
    chains = {}
    chain = None
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line[len("chain ") : -1].strip()
            chains[chain] = (None, 0)
        elif chain is None or not line:
            continue
        elif line == "}":
            chain = None
        elif line.startswith("type ") and " hook " in line:
            policy = line.rsplit("policy ", 1)[1].rstrip(";") if "policy " in line else None
            chains[chain] = (policy, chains[chain][1])
        else:
            chains[chain] = (chains[chain][0], chains[chain][1] + 1)
    return chains


def tidy_script(family_word: str, table: str, doomed, whole_table: bool) -> str:
    """An ``nft -f`` script deleting an iptables-nft table, or only its ``doomed`` chains."""
    if whole_table:
        return "delete table %s %s\n" % (family_word, table)
    return "".join("delete chain %s %s %s\n" % (family_word, table, chain) for chain in doomed)


def table_entries(listing: str) -> list:
    """A listing as ``"chain: line"`` entries (chain headers and rules), for diffs."""
    entries = []
    chain = None
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line[len("chain ") : -1].strip()
            entries.append("%s:" % chain)
        elif line == "}":
            chain = None
        elif line and chain is not None:
            entries.append("%s: %s" % (chain, line))
    return entries


def changes(current_listing: str, desired_text: str) -> tuple:
    """(added, removed) entries between the host's listing and ours, in their order."""
    return added_removed(table_entries(current_listing), table_entries(desired_text))


# -- scripts -----------------------------------------------------------------------


def _same(listing, desired):
    return listing.rstrip() == desired.rstrip()


def _replace_header(name):
    # ``add`` makes sure the table exists so ``delete`` cannot fail; all in one
    # transaction, so the host never sees the table missing or half built.
    return "add table inet %s\ndelete table inet %s\n" % (name, name)


def plan_script(name: str, current_listing: str, desired_text: str) -> str:
    """An ``nft -f`` script that makes our table read ``desired_text``; "" if it already does.

    ``current_listing``: what ``nft list_args(name)`` printed, "" when the table
    is absent. The script replaces the table in one transaction: if any part
    fails, nothing changes. With "" as the listing it is also the boot-time
    restore script.
    """
    if _same(current_listing, desired_text):
        return ""
    return _replace_header(name) + parsable_form(desired_text.rstrip("\n")) + "\n"


def absent_script(name: str, current_listing: str) -> str:
    """An ``nft -f`` script that removes our table; "" when it is not there."""
    if not current_listing.strip():
        return ""
    return _replace_header(name)
