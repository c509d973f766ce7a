"""traffic_capture's rules for one address family, as text the packet_fate evaluator reads.

The one place the Istio comparison touches the module's internals (which are being
reorganised): keep it small, and change only this when they move.
"""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import desired_tables, render_full
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import DEFAULTS, parse_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family, dns_captured


def module_rules(options, family, nameservers, group_id):
    """(iptables-restore text of every table, [(fwmark, route table)]) for these module options.

    ``nameservers``: {family: [address]} as resolv.conf gives them; ``group_id``
    maps a group name to its id on the host. Empty when the options leave
    ``family`` out. Unknown option names are an error here, not ignored, so a
    case cannot silently lose a setting.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise KeyError("traffic_capture has no option %s" % ", ".join(unknown))
    parsed, _warnings = parse_options(dict(options), group_id=group_id)
    if parsed.ip_families != "auto" and family not in parsed.ip_families:
        return "", []
    dns = dns_captured(parsed, nameservers)
    rules = build_family(parsed, family, tuple(nameservers.get(family, ())), dns)
    return render_full(desired_tables(rules)), [(rule.fwmark, rule.table) for rule in rules.ip_rules]


def module_option_names():
    """The option names traffic_capture accepts today."""
    return frozenset(DEFAULTS)
