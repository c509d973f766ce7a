# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Validate traffic_capture's options into one immutable value.

Every check happens here, before anything on the host is read or written, and
every error names the option, the value and what would be accepted. Types and
defaults come from the argument spec (spec.py); the values may also arrive
unconverted (numeric strings, comma-separated lists), as tests and other
callers give them.
"""

import ipaddress
import re
from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import OptionError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import (
    IPV4,
    IPV6,
    OUTBOUND_MARK,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.nft import table_name_problem
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import capture_argument_spec

# Suffixes of every chain the builder may create; the longest bounds the prefix.
CHAIN_SUFFIXES = (
    "INBOUND",
    "IN_REDIRECT",
    "OUTPUT",
    "REDIRECT",
    "DIVERT",
    "TPROXY",
    "DROP_INVALID",
    "DNS_OUTPUT",
    "DNS_PREROUTING",
    "VIRTUAL",
)
MAX_CHAIN_NAME = 28
_CHAIN_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_RESERVED_ROUTE_TABLES = (0, 253, 254, 255)

_SPEC = capture_argument_spec()
DEFAULTS = {name: entry.get("default") for name, entry in _SPEC.items()}

# One field per option of the spec, plus the port of the SSH connection running
# us (always excluded). Values are normalised: inbound_ports is None for every
# port ("*"), else a tuple; outbound_cidrs is {family: tuple of networks}, or
# None for every address; outbound_cidrs_exclude is {family: tuple};
# ip_families is "auto" or a tuple of families.
CaptureOptions = namedtuple("CaptureOptions", (*DEFAULTS, "ssh_port"))


def _integer(option, value, low, high, accepted):
    if isinstance(value, bool):
        raise OptionError(option, value, accepted)
    if isinstance(value, str) and re.match(r"^\s*\d+\s*$", value):
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise OptionError(option, value, accepted)
    return value


def _port(option, value):
    return _integer(option, value, 1, 65535, "expected a port number from 1 to 65535")


def _refuse_taken(option, value, taken, problem):
    """Raise OptionError when ``value`` is one of ``taken`` (values other options already hold)."""
    if value in taken:
        raise OptionError(option, value, problem)


def _refuse_overlap(option, items, other_option, others, kind):
    """Raise OptionError at the first of ``items`` that ``other_option`` lists too."""
    both = [item for item in items if item in others]
    if both:
        raise OptionError(option, both[0], "the %s is also in %s; list it in one of them" % (kind, other_option))


def _boolean(option, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise OptionError(option, value, "expected true or false")


def _as_list(option, value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [part.strip() for part in str(value).split(",") if part.strip()]
    raise OptionError(option, value, "expected a list")


def _unique(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return tuple(seen)


def _listed_or_star(option, value, allow_star, every):
    """The items of a list option, or None for a lone ``*`` (every ``every``) where ``allow_star``."""
    items = _as_list(option, value)
    if allow_star and any(str(item).strip() == "*" for item in items):
        if len(items) != 1:
            raise OptionError(option, value, "'*' means every %s and stands alone" % every)
        return None
    return items


def _ports(option, value, allow_star=False):
    items = _listed_or_star(option, value, allow_star, "port")
    if items is None:
        return None
    return _unique(_port(option, item) for item in items)


def _ids(option, value):
    accepted = "expected a list of numeric ids from 0 to 4294967294"
    return _unique(_integer(option, item, 0, 4294967294, accepted) for item in _as_list(option, value))


def _networks(option, value, allow_star=False):
    """Split CIDRs by family, normalised as iptables prints them."""
    items = _listed_or_star(option, value, allow_star, "address")
    if items is None:
        return None
    by_family = {IPV4: [], IPV6: []}
    for item in items:
        try:
            network = ipaddress.ip_network(str(item).strip(), strict=False)
        except ValueError:
            raise OptionError(option, item, "expected an IPv4 or IPv6 address or CIDR such as 10.0.0.0/8") from None
        family = IPV4 if network.version == 4 else IPV6
        by_family[family].append(str(network))
    return {family: _unique(nets) for family, nets in by_family.items()}


def _choice(option, value, choices):
    if value not in choices:
        raise OptionError(option, value, "expected one of %s" % ", ".join(choices))
    return value


def _families(value):
    if value in (None, "auto", ["auto"]):
        return "auto"
    items = _as_list("ip_families", value)
    if not items:
        raise OptionError("ip_families", value, "expected 'auto' or a list of ipv4, ipv6")
    for item in items:
        _choice("ip_families", item, (IPV4, IPV6))
    return tuple(family for family in (IPV4, IPV6) if family in items)


def _chain_prefix(value):
    longest = max(len(suffix) for suffix in CHAIN_SUFFIXES)
    if not isinstance(value, str) or not _CHAIN_PREFIX_RE.match(value):
        raise OptionError(
            "chain_prefix",
            value,
            "expected letters, digits and '_', starting with a letter (e.g. HOSTMESH_)",
        )
    if len(value) + longest > MAX_CHAIN_NAME:
        raise OptionError(
            "chain_prefix",
            value,
            "chain names are at most %d characters and the longest suffix is %d, "
            "so the prefix may have at most %d" % (MAX_CHAIN_NAME, longest, MAX_CHAIN_NAME - longest),
        )
    return value


def _interfaces(value, option="exclude_interfaces"):
    names = _as_list(option, value)
    for name in names:
        if not isinstance(name, str) or not _IFACE_RE.match(name) or name in (".", ".."):
            raise OptionError(option, name, "expected an interface name of 1-15 characters")
    return _unique(names)


def _group_id_from_host(name):
    import grp  # only when a group is named, not numbered

    return grp.getgrnam(name).gr_gid


def _groups(option, value, group_id):
    """Group ids, a name looked up with ``group_id`` (iptables-save prints numbers)."""
    accepted = "expected group names or numeric ids from 0 to 4294967294"
    ids = []
    for item in _as_list(option, value):
        if isinstance(item, str) and not re.match(r"^\s*\d+\s*$", item):
            name = item.strip()
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*[$]?$", name):
                raise OptionError(option, item, accepted)
            try:
                ids.append(group_id(name))
            except (KeyError, LookupError):
                raise OptionError(option, item, "no group of that name on this host; " + accepted) from None
        else:
            ids.append(_integer(option, item, 0, 4294967294, accepted))
    return _unique(ids)


def _host_loopback(value):
    accepted = "expected an IPv4 loopback CIDR inside 127.0.0.0/8, such as 127.0.0.1/32"
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise OptionError("host_loopback_cidr", value, accepted) from None
    if network.version != 4 or not network.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
        raise OptionError("host_loopback_cidr", value, accepted)
    return str(network)


def ssh_port_from_environment(environ):
    """The local port of the SSH connection this process runs under, if any."""
    fields = (environ.get("SSH_CONNECTION") or "").split()
    if len(fields) == 4 and fields[3].isdigit() and 0 < int(fields[3]) < 65536:
        return int(fields[3])
    return None


def parse_options(params, ssh_port=None, group_id=None):
    """Validate ``params`` (the module's parameters) into CaptureOptions.

    Returns (options, warnings). Raises OptionError on the first bad value.
    Options missing from ``params`` (or None) take the spec's default.
    ``group_id`` maps a group name to its id (KeyError if unknown); by
    default the host's group database.
    """
    values = dict(DEFAULTS)
    values.update({key: value for key, value in params.items() if value is not None and key in DEFAULTS})
    warnings = []

    state = _choice("state", values["state"], _SPEC["state"]["choices"])
    mode = _choice("mode", values["mode"], _SPEC["mode"]["choices"])
    proxy_port = _port("proxy_port", values["proxy_port"])
    inbound_capture_port = _port("inbound_capture_port", values["inbound_capture_port"])
    _refuse_taken(
        "inbound_capture_port", inbound_capture_port, (proxy_port,), "it must differ from proxy_port (%d)" % proxy_port
    )
    dns_port = _port("dns_port", values["dns_port"])
    _refuse_taken(
        "dns_port",
        dns_port,
        (proxy_port, inbound_capture_port),
        "it must differ from proxy_port and inbound_capture_port",
    )
    inbound_tunnel_port = _integer(
        "inbound_tunnel_port",
        values["inbound_tunnel_port"],
        0,
        65535,
        "expected a port number from 1 to 65535, or 0 for no tunnel port",
    )
    # 0 (no tunnel port) is never taken: the ports it is checked against are from 1.
    _refuse_taken(
        "inbound_tunnel_port",
        inbound_tunnel_port,
        (proxy_port, inbound_capture_port, dns_port),
        "it must differ from proxy_port, inbound_capture_port and dns_port",
    )

    proxy_uid = _ids("proxy_uid", values["proxy_uid"])
    proxy_gid = _ids("proxy_gid", values["proxy_gid"])
    if not proxy_uid and not proxy_gid:
        raise OptionError(
            "proxy_uid", list(proxy_uid), "proxy_uid or proxy_gid must name the proxy, or its own traffic would loop"
        )

    inbound_ports = _ports("inbound_ports", values["inbound_ports"], allow_star=True)
    inbound_ports_exclude = _ports("inbound_ports_exclude", values["inbound_ports_exclude"])
    _refuse_overlap("inbound_ports", inbound_ports or (), "inbound_ports_exclude", inbound_ports_exclude, "port")
    for option, port in (
        ("proxy_port", proxy_port),
        ("inbound_capture_port", inbound_capture_port),
        ("inbound_tunnel_port", inbound_tunnel_port),
    ):
        if inbound_ports and port and port in inbound_ports:
            raise OptionError("inbound_ports", port, "it is %s; capturing it would loop" % option)

    if ssh_port is not None:
        if inbound_ports is None and ssh_port not in inbound_ports_exclude:
            inbound_ports_exclude = (*inbound_ports_exclude, ssh_port)
            warnings.append(
                "inbound_ports_exclude did not list %d, the port of the SSH connection running this task; "
                "it is excluded from capture anyway so the host stays reachable" % ssh_port
            )
        elif inbound_ports and ssh_port in inbound_ports:
            inbound_ports = tuple(port for port in inbound_ports if port != ssh_port)
            warnings.append(
                "inbound_ports listed %d, the port of the SSH connection running this task; "
                "it is not captured so the host stays reachable" % ssh_port
            )

    outbound_cidrs = _networks("outbound_cidrs", values["outbound_cidrs"], allow_star=True)
    outbound_cidrs_exclude = _networks("outbound_cidrs_exclude", values["outbound_cidrs_exclude"])
    outbound_ports = _ports("outbound_ports", values["outbound_ports"])
    outbound_ports_exclude = _ports("outbound_ports_exclude", values["outbound_ports_exclude"])
    _refuse_overlap("outbound_ports", outbound_ports, "outbound_ports_exclude", outbound_ports_exclude, "port")

    tproxy_mark = _integer(
        "tproxy_mark", values["tproxy_mark"], 1, 0xFFFFFFFF, "expected a firewall mark from 1 to 4294967295"
    )
    _refuse_taken(
        "tproxy_mark",
        tproxy_mark,
        (OUTBOUND_MARK,),
        "%d marks the proxy's own connections to this host in tproxy mode (as in Istio); pick another mark"
        % OUTBOUND_MARK,
    )
    tproxy_route_table = _integer(
        "tproxy_route_table",
        values["tproxy_route_table"],
        1,
        0xFFFFFFFF,
        "expected a routing table id from 1 to 4294967295 other than 253 (default), 254 (main), 255 (local)",
    )
    _refuse_taken(
        "tproxy_route_table",
        tproxy_route_table,
        _RESERVED_ROUTE_TABLES,
        "253 (default), 254 (main) and 255 (local) belong to the system; pick another table",
    )

    dns_redirect = _boolean("dns_redirect", values["dns_redirect"])
    dns_capture_all = _boolean("dns_capture_all", values["dns_capture_all"])
    if dns_capture_all and not dns_redirect:
        raise OptionError("dns_capture_all", True, "it needs dns_redirect: true")

    lock_wait = _integer("lock_wait", values["lock_wait"], 0, 3600, "expected seconds from 0 to 3600")
    rules_file = values["rules_file"]
    if rules_file is not None and (not isinstance(rules_file, str) or not rules_file.startswith("/")):
        raise OptionError("rules_file", rules_file, "expected an absolute path")

    backend = _choice("backend", values["backend"], _SPEC["backend"]["choices"])
    chain_prefix = _chain_prefix(values["chain_prefix"])
    if backend == "nftables" and table_name_problem(chain_prefix):
        raise OptionError("chain_prefix", chain_prefix, table_name_problem(chain_prefix))

    exclude_interfaces = _interfaces(values["exclude_interfaces"])
    virtual_interfaces = _interfaces(values["virtual_interfaces"], "virtual_interfaces")
    _refuse_overlap("virtual_interfaces", virtual_interfaces, "exclude_interfaces", exclude_interfaces, "interface")
    lookup = group_id or _group_id_from_host
    owner_groups = _groups("outbound_owner_groups", values["outbound_owner_groups"], lookup)
    owner_groups_exclude = _groups("outbound_owner_groups_exclude", values["outbound_owner_groups_exclude"], lookup)
    if owner_groups and owner_groups_exclude:
        raise OptionError(
            "outbound_owner_groups_exclude",
            list(values["outbound_owner_groups_exclude"]),
            "outbound_owner_groups already limits capture to its groups; set one of the two",
        )

    options = CaptureOptions(
        state=state,
        mode=mode,
        proxy_port=proxy_port,
        inbound_capture_port=inbound_capture_port,
        proxy_uid=proxy_uid,
        proxy_gid=proxy_gid,
        inbound_ports=inbound_ports,
        inbound_ports_exclude=inbound_ports_exclude,
        outbound_cidrs=outbound_cidrs,
        outbound_cidrs_exclude=outbound_cidrs_exclude,
        outbound_ports=outbound_ports,
        outbound_ports_exclude=outbound_ports_exclude,
        exclude_interfaces=exclude_interfaces,
        virtual_interfaces=virtual_interfaces,
        outbound_owner_groups=owner_groups,
        outbound_owner_groups_exclude=owner_groups_exclude,
        inbound_tunnel_port=inbound_tunnel_port,
        inbound_forwarded=_boolean("inbound_forwarded", values["inbound_forwarded"]),
        host_loopback_cidr=_host_loopback(values["host_loopback_cidr"]),
        ip_families=_families(values["ip_families"]),
        dns_redirect=dns_redirect,
        dns_capture_all=dns_capture_all,
        dns_port=dns_port,
        drop_invalid=_boolean("drop_invalid", values["drop_invalid"]),
        protect_established=_boolean("protect_established", values["protect_established"]),
        tproxy_mark=tproxy_mark,
        tproxy_route_table=tproxy_route_table,
        chain_prefix=chain_prefix,
        backend=backend,
        lock_wait=lock_wait,
        rules_file=rules_file,
        ssh_port=ssh_port,
    )
    return options, warnings
