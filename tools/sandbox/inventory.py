"""What a sandbox hands to its users: Ansible inventory, ssh config, known_hosts.

Pure rendering from the sandbox state; scalars are written as JSON strings,
which YAML reads unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

GROUP = "sandbox"


def render_inventory(
    hosts: Mapping[str, str],
    key_file: Path,
    ssh_config: Path,
    control_dir: Path,
    host_vars: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> str:
    """YAML inventory: one group `sandbox`, every host by name with its address and host_vars.

    The sandbox gives each host ``hostmesh_sandbox_suite`` and
    ``hostmesh_sandbox_profiles``, so tests can check what they run on.

    Ansible's SSH connection masters live in the sandbox's own control_dir:
    in the shared default directory they are named by address, and a later
    sandbox given the same addresses would be handed a master still bound to
    a host that no longer exists.
    """
    lines = [
        "# Written by tools/sandbox; recreated on every `create`.",
        "all:",
        "  children:",
        f"    {GROUP}:",
        "      hosts:",
    ]
    for name, address in hosts.items():
        lines += [f"        {name}:", f"          ansible_host: {json.dumps(address)}"]
        for var, value in (host_vars or {}).get(name, {}).items():
            lines.append(f"          {var}: {json.dumps(value)}")
    lines += [
        "      vars:",
        "        ansible_user: root",
        f"        ansible_ssh_private_key_file: {json.dumps(str(key_file))}",
        f"        ansible_ssh_common_args: {json.dumps(f'-F {ssh_config}')}",
        "        ansible_python_interpreter: /usr/bin/python3",
        f"        ansible_control_path_dir: {json.dumps(str(control_dir))}",
    ]
    return "\n".join(lines) + "\n"


def render_ssh_config(hosts: Mapping[str, str], key_file: Path, known_hosts: Path) -> str:
    """`ssh -F THIS HOST` logs in as root with the sandbox key and checked host keys."""
    out = ["# Written by tools/sandbox; recreated on every `create`."]
    for name, address in hosts.items():
        out += [
            f"Host {name} {address}",
            f"  HostName {address}",
            "  User root",
            f"  IdentityFile {key_file}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  ConnectTimeout 5",
            "  LogLevel ERROR",
            "",
        ]
    return "\n".join(out)


def render_known_hosts(host_keys: Mapping[str, tuple[str, list[str]]]) -> str:
    """host -> (address, [public key lines]) as known_hosts entries."""
    out = []
    for name, (address, keys) in host_keys.items():
        for key in keys:
            key_type, blob = key.split()[:2]
            out.append(f"{name},{address} {key_type} {blob}")
    return "\n".join(out) + "\n"


def render_etc_hosts(hosts: Mapping[str, str]) -> str:
    """/etc/hosts of a sandbox host: every host, itself included, by its address."""
    out = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    out += [f"{address}\t{name}" for name, address in hosts.items()]
    return "\n".join(out) + "\n"
