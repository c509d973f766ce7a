"""Packet fates: decide, from iptables rules alone, what netfilter does with a packet.

The yardstick for traffic_capture's rules: the same packet is run through our
module's rules and through Istio's, and the two fates are compared, not the
rule texts. Pure standard library, no host access:

- ``ruleset``: iptables-restore / iptables-save / ``iptables -S`` text (both the
  canonical form and Istio's short forms) parsed into tables of chains;
- ``host``: the host a packet meets (interfaces, addresses, routes, policy routing);
- ``packet``: a packet, written and read as one line of text;
- ``netfilter``: the hooks a packet passes and what each rule does to it;
- ``fate``: where the packet ends up, as the application sees it.

``cases`` (which needs PyYAML) reads the recorded Istio cases that use all this.
"""

from packet_fate.fate import Fate, parse_fate
from packet_fate.host import Host, Interface, PolicyRoute
from packet_fate.netfilter import Decision, decide
from packet_fate.packet import Packet, Process, parse_packet
from packet_fate.ruleset import RuleError, Ruleset, parse_rules

__all__ = [
    "Decision",
    "Fate",
    "Host",
    "Interface",
    "Packet",
    "PolicyRoute",
    "Process",
    "RuleError",
    "Ruleset",
    "decide",
    "parse_fate",
    "parse_packet",
    "parse_rules",
]
