"""Shared builders for the capture unit tests."""

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import desired_tables
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family


def options(ssh_port=None, **params):
    opts = parse_options(params, ssh_port=ssh_port)[0]
    return opts


def table_lines(family="ipv4", nameservers=(), ssh_port=None, **params):
    """{table: [lines as iptables -S prints our part]} for these options."""
    tables = desired_tables(build_family(options(ssh_port=ssh_port, **params), family, nameservers))
    return {name: state.lines() for name, state in tables.items()}
