"""Where a packet ends up, as the application sees it, written as short text.

``local :80``        delivered on this host to its own destination port, untouched
``redirect :15001``  NAT (REDIRECT, or DNAT to a local address) sent it to this local port
``tproxy :15006``    TPROXY handed it to the socket listening on this port
``out ens3``         leaves the host (sent by a local process) through this interface
``forward ens3``     forwarded (arrived from elsewhere) out through this interface
``drop``             dropped

followed, where set, by ``mark=0x...`` (the packet's mark when it leaves netfilter),
``connmark=0x...`` (its connection's mark), ``zone=N`` (its conntrack zone), and
``to=ADDR:PORT`` for a packet NAT sent to another host.
"""

from dataclasses import dataclass
from typing import Optional

ACTIONS = ("local", "redirect", "tproxy", "out", "forward", "drop")


@dataclass(frozen=True)
class Fate:
    action: str
    port: Optional[int] = None  # local, redirect, tproxy
    iface: Optional[str] = None  # out, forward
    mark: int = 0
    connmark: int = 0
    zone: int = 0
    to: Optional[str] = None  # out/forward after DNAT to another host

    def __str__(self):
        words = [self.action]
        if self.port is not None:
            words.append(":%d" % self.port)
        if self.iface is not None:
            words.append(self.iface)
        if self.mark:
            words.append("mark=%#x" % self.mark)
        if self.connmark:
            words.append("connmark=%#x" % self.connmark)
        if self.zone:
            words.append("zone=%d" % self.zone)
        if self.to:
            words.append("to=%s" % self.to)
        return " ".join(words)

    @property
    def lands_locally(self) -> bool:
        return self.action in ("local", "redirect", "tproxy")


def parse_fate(text: str) -> Fate:
    """The Fate a text names (the inverse of ``str(fate)``)."""
    words = text.split()
    if not words or words[0] not in ACTIONS:
        raise ValueError("fate %r: expected one of %s first" % (text, ", ".join(ACTIONS)))
    fields = {"action": words[0]}
    for word in words[1:]:
        if word.startswith(":"):
            fields["port"] = int(word[1:])
        elif "=" in word:
            key, _sep, value = word.partition("=")
            if key not in ("mark", "connmark", "zone", "to"):
                raise ValueError("fate %r: unknown %r" % (text, key))
            fields[key] = value if key == "to" else int(value, 0)
        else:
            fields["iface"] = word
    fate = Fate(**fields)
    if str(fate) != " ".join(words):
        raise ValueError("fate %r is not in canonical form (%s)" % (text, fate))
    return fate
