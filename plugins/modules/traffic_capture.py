#!/usr/bin/python
# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: traffic_capture
short_description: Steer a host's TCP traffic through the local sidecar proxy
version_added: "0.1.0"
description:
  - Computes the iptables (or nftables) rules that send a host's inbound and
    outbound TCP through the local Envoy, as Istio's C(istio-iptables) does in
    a pod, and applies them idempotently.
  - The rules are built as data, rendered once, and applied with one
    C(iptables-restore --noflush) per address family (or one C(nft -f)
    transaction). Both families change together or not at all; if a step
    fails, the steps already applied are put back.
  - Only chains whose names start with O(chain_prefix), the jumps into them,
    and the policy routing for TPROXY are ever touched. Rules that Docker,
    firewalld or an administrator own in the same tables are left alone.
  - A rule deleted or edited by hand is detected on the next run and our
    chains are restored exactly. A run whose rules are in place writes nothing.
  - The local port of the SSH connection running the task (from
    C(SSH_CONNECTION)) is never captured, even if O(inbound_ports_exclude)
    forgets it; a warning says so.
  - With O(chain_prefix=ISTIO_), Istio's defaults and
    O(protect_established=false), C(iptables -t nat -S) reads as the listing
    of a pod under Istio 1.6 (the seed's layout) plus today's tunnel-port
    rules and the rule that leaves forwarded traffic alone; with
    O(inbound_tunnel_port=0) and O(inbound_forwarded=true) as well, it reads
    as the seed's listing exactly. Packets are decided as today's
    C(istio-iptables) decides them, except for the deliberate differences
    C(docs/capture.md) lists.
  - Traffic the host only forwards (for containers, VMs) is never captured
    as inbound, unless O(inbound_forwarded=true).
author:
  - hostmesh.sidecar maintainers (@hostmesh)
options:
  state:
    description:
      - V(present) applies the rules; V(absent) removes every chain, jump rule,
        ip rule and route this module owns, in every iptables variant and both
        families, and nothing else.
    type: str
    choices: [present, absent]
    default: present
  mode:
    description:
      - How inbound connections are captured. V(redirect) uses NAT REDIRECT;
        V(tproxy) uses the mangle table's TPROXY target, which keeps the
        client's source address, plus C(ip rule fwmark O(tproxy_mark) lookup
        O(tproxy_route_table)) and C(ip route local default dev lo table
        O(tproxy_route_table)). Outbound capture uses REDIRECT in both modes.
      - Istio's C(-m).
    type: str
    choices: [redirect, tproxy]
    default: redirect
  proxy_port:
    description: Port the proxy listens on for captured outbound traffic (Istio's C(-p)).
    type: int
    default: 15001
  inbound_capture_port:
    description: Port the proxy listens on for captured inbound traffic (Istio's C(-z)).
    type: int
    default: 15006
  proxy_uid:
    description:
      - User ids whose traffic is never captured (the proxy's own). Istio's C(-u).
    type: list
    elements: raw
    default: [1337]
  proxy_gid:
    description:
      - Group ids whose traffic is never captured. Istio's C(-g).
    type: list
    elements: raw
    default: [1337]
  inbound_ports:
    description:
      - Inbound destination ports to capture; V(*) captures every port except
        O(inbound_ports_exclude). An empty list captures nothing inbound.
        Istio's C(-b).
    type: list
    elements: raw
    default: ['*']
  inbound_ports_exclude:
    description:
      - Inbound ports never captured when O(inbound_ports) is V(*). Keep the
        management (SSH) port here; the port of the running SSH connection is
        added in any case. Istio's C(-d).
    type: list
    elements: raw
    default: [22, 15090, 15021, 15020]
  outbound_cidrs:
    description:
      - Destination ranges (IPv4 and IPv6, split by family) whose outbound
        traffic is captured; V(*) captures every destination. Istio's C(-i).
    type: list
    elements: str
    default: ['*']
  outbound_cidrs_exclude:
    description: Destination ranges never captured. Istio's C(-x).
    type: list
    elements: str
    default: []
  outbound_ports:
    description:
      - Outbound destination ports captured whatever their address (in
        addition to O(outbound_cidrs)). Istio's C(-q).
    type: list
    elements: raw
    default: []
  outbound_ports_exclude:
    description: Outbound destination ports never captured. Istio's C(-o).
    type: list
    elements: raw
    default: []
  exclude_interfaces:
    description: Interfaces whose traffic is never captured, in or out. Istio's C(-c).
    type: list
    elements: str
    default: []
  virtual_interfaces:
    description:
      - Interfaces whose arriving traffic is captured as outbound (sent to
        O(proxy_port)), as if this host's own processes had sent it; for the
        bridges of containers or VMs (C(docker0), C(cni-podman0), C(virbr0)).
        Only TCP to what O(outbound_cidrs) and O(outbound_ports) capture, minus
        O(outbound_cidrs_exclude) and O(outbound_ports_exclude); what arrives on
        them is never captured as inbound. Istio's C(-k).
      - Traffic the host only forwards (for containers, VMs) is never captured
        as inbound, whatever this says.
    type: list
    elements: str
    default: []
  outbound_owner_groups:
    description:
      - Capture outbound traffic only of processes whose primary group is one
        of these (names or ids); empty captures every group. Istio's
        C(--include-outbound-owner-groups). Not together with
        O(outbound_owner_groups_exclude).
    type: list
    elements: raw
    default: []
  outbound_owner_groups_exclude:
    description:
      - Never capture outbound traffic of processes whose primary group is one
        of these (names or ids). Istio's C(--exclude-outbound-owner-groups).
    type: list
    elements: raw
    default: []
  inbound_tunnel_port:
    description:
      - The proxy's tunnel port (HBONE). Never captured inbound, and the
        proxy's own connections to this host on it are left alone. Istio's C(-e).
      - V(0) means no tunnel port and none of its rules, as in the seed's
        listing (Istio 1.6).
    type: int
    default: 15008
  inbound_forwarded:
    description:
      - Capture as inbound also the traffic the host only forwards (for
        containers or VMs it routes for), as the seed's rules (Istio 1.6) did.
        That breaks the egress of every container and VM behind the host;
        it exists only to give the seed's exact listing.
      - V(false) (the default) adds the rule that lets such traffic through
        (C(-m addrtype ! --dst-type LOCAL -j RETURN)).
    type: bool
    default: false
  host_loopback_cidr:
    description:
      - The loopback range the loopback rules treat as this host's own
        (IPv4; inside 127.0.0.0/8). Istio's host loopback CIDR.
    type: str
    default: 127.0.0.1/32
  ip_families:
    description:
      - Families to capture. V(auto) means IPv4, plus IPv6 where the host has
        IPv6 enabled. A list may name V(ipv4) and V(ipv6). Families not
        listed have our rules removed.
    type: raw
    default: auto
  dns_redirect:
    description:
      - Send DNS (UDP and TCP port 53) to O(dns_port), with the conntrack-zone
        split Istio uses in the raw table. Without O(dns_capture_all), only
        queries to the resolvers in C(/etc/resolv.conf) are captured; with none
        there, DNS is not captured at all and a warning says so (as Istio does).
        Istio's C(--redirect-dns).
    type: bool
    default: false
  dns_capture_all:
    description: Capture DNS to every address, not only the configured resolvers (Istio's C(--capture-all-dns)).
    type: bool
    default: false
  dns_port:
    description: Port of the proxy's DNS listener.
    type: int
    default: 15053
  drop_invalid:
    description: Drop inbound TCP packets conntrack marks INVALID, so they cannot bypass the proxy (Istio's C(--drop-invalid)).
    type: bool
    default: false
  protect_established:
    description:
      - Never capture a TCP connection that was already open when capture went
        on. Each capture chain starts with a rule that lets through any TCP
        packet conntrack files as new that is not a SYN.
      - It matters on hosts where nothing used conntrack before (no firewall), as
        conntrack then meets open connections mid-stream, files their next
        packet as new, and without this rule that packet would be redirected
        to the proxy, cutting the connection, including the SSH session
        running this task.
      - Set V(false) only to reproduce Istio's pod rules exactly; in a pod no
        connection is open when capture starts.
    type: bool
    default: true
  tproxy_mark:
    description: Firewall mark used by TPROXY mode (Istio's C(-t)).
    type: int
    default: 1337
  tproxy_route_table:
    description: Routing table used by TPROXY mode (Istio's C(-r)).
    type: int
    default: 133
  chain_prefix:
    description:
      - Prefix of every chain this module creates; it is how our rules are
        found again. V(ISTIO_) gives Istio's chain names exactly. At most 14
        characters, so that chain names stay within 28.
    type: str
    default: HOSTMESH_
  backend:
    description:
      - V(auto) uses the iptables variant that already holds rules (legacy or
        nft), else iptables-nft. V(nftables) writes a native C(inet) table
        (named after O(chain_prefix), lower case) atomically.
      - Our rules in the backends not chosen are removed.
    type: str
    choices: [auto, iptables-nft, iptables-legacy, nftables]
    default: auto
  lock_wait:
    description: Seconds to wait for the xtables lock.
    type: int
    default: 30
  rules_file:
    description:
      - When set, also write a POSIX shell script holding the rendered rules.
        C(sh FILE apply) puts capture back exactly as this module applied it
        (for a boot-time unit); C(sh FILE remove) lifts it. Both may run
        again safely. With O(state=absent) the file is removed.
    type: path
attributes:
  check_mode:
    support: full
    description: Reports the change it would make and writes nothing.
  diff_mode:
    support: full
    description: Shows our rules before and after, per backend and family.
  platform:
    support: full
    platforms: posix
    description: Linux with iptables (nft or legacy) or nft, and iproute2.
notes:
  - Needs root (CAP_NET_ADMIN). Runs on the target with Python 3.9 or newer.
  - If capture goes wrong on a host you can still reach, run this module with
    O(state=absent), or C(sh RULES_FILE remove). From a console, C(iptables-save
    | grep -v PREFIX) shows what remains; our chains all start with O(chain_prefix).
seealso:
  - name: Istio traffic capture
    description: The istio-iptables rules this module reproduces.
    link: https://istio.io/latest/docs/ops/deployment/requirements/
"""

EXAMPLES = r"""
- name: Capture all inbound and outbound TCP through the local sidecar
  hostmesh.sidecar.traffic_capture:
    rules_file: /etc/hostmesh/capture.rules

- name: Istio's own chain names and rules (iptables -t nat -S reads as in a pod)
  hostmesh.sidecar.traffic_capture:
    chain_prefix: ISTIO_
    protect_established: false

- name: Capture only the application's port, keep the database direct
  hostmesh.sidecar.traffic_capture:
    inbound_ports: [8080]
    outbound_cidrs_exclude: [10.20.0.0/16, "fd00:20::/64"]
    outbound_ports_exclude: [5432]

- name: TPROXY inbound (keeps the client's address), DNS through the proxy
  hostmesh.sidecar.traffic_capture:
    mode: tproxy
    dns_redirect: true

- name: Lift capture
  hostmesh.sidecar.traffic_capture:
    state: absent
    rules_file: /etc/hostmesh/capture.rules
"""

RETURN = r"""
backend:
  description: The backend used.
  returned: always
  type: str
  sample: iptables-nft
families:
  description: The address families captured.
  returned: always
  type: list
  elements: str
  sample: [ipv4, ipv6]
rules:
  description:
    - The rendered rules, per family (C(iptables-restore) text that builds
      them on a host without them) or, for the nftables backend, under
      C(inet) (the table as C(nft list) prints it).
  returned: always
  type: dict
  sample:
    ipv4: "*nat\n:HOSTMESH_INBOUND - [0:0]\n...\nCOMMIT\n"
added:
  description: Our rules added by this run (or that would be, in check mode), prefixed with backend and family.
  returned: always
  type: list
  elements: str
  sample: ["iptables-nft ipv4: *nat -A HOSTMESH_OUTPUT -j HOSTMESH_REDIRECT"]
removed:
  description: Our rules removed by this run (or that would be).
  returned: always
  type: list
  elements: str
  sample: []
ssh_port:
  description: The local port of the SSH connection running the task, always excluded from capture; null when not over SSH.
  returned: always
  type: int
  sample: 22
rules_file:
  description: Path of the rules file written (or removed), if O(rules_file) was given.
  returned: when O(rules_file) is set
  type: str
  sample: /etc/hostmesh/capture.rules
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CaptureError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import HostCommands
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import (
    parse_options,
    ssh_port_from_environment,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.run import run_capture
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import capture_argument_spec
from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_text, write_atomic


def _sync_rules_file(module, path, content):
    """Write (content) or remove (None) the rules file; True when it changed."""
    current = read_text(path)
    if current == content:
        return False
    if module.check_mode:
        return True
    if content is None:
        os.unlink(path)
        return True
    # The boot unit runs it with sh, so it needs reading, not executing.
    write_atomic(path, content, 0o644)
    return True


def main():
    module = AnsibleModule(argument_spec=capture_argument_spec(), supports_check_mode=True)
    try:
        options, warnings = parse_options(module.params, ssh_port_from_environment(os.environ))
        for warning in warnings:
            module.warn(warning)
        missing_dir = options.rules_file and not os.path.isdir(os.path.dirname(options.rules_file))
        if missing_dir and options.state == "present" and not module.check_mode:
            # Refused before anything on the host changes. Check mode only predicts: in
            # a whole playbook an earlier task (the agent role's) creates the directory.
            module.fail_json(
                msg="rules_file: %r is in a directory that does not exist" % options.rules_file,
                option="rules_file",
                value=options.rules_file,
            )
        result = run_capture(options, HostCommands.for_module(module, options.lock_wait), module.check_mode)
        script, diff = result.pop("script"), result.pop("diff")
        for warning in result.pop("warnings"):
            module.warn(warning)
        if options.rules_file:
            content = script if options.state == "present" else None
            result["changed"] = _sync_rules_file(module, options.rules_file, content) or result["changed"]
            result["rules_file"] = options.rules_file
    except CaptureError as error:
        module.fail_json(msg=str(error), **error.details())
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
