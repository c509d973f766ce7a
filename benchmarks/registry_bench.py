"""Benchmark the mesh registry: every host's agent config rendered on the controller, no real host.

An inventory of N hosts on the local connection, each a replica of one of
N / --replicas services in one of two zones, with mesh defaults; one play
renders every host's agent config (the agent role's own variables and the
agent_config filter, as the role writes /etc/hostmesh/agent.json) in three ways:

- none:      no upstreams at all (the same play without the registry: the baseline);
- registry:  the registry computed once (run_once set_fact), each host its slice;
- upstreams: the deprecated mesh_upstreams filter, every host's call reading every host.

Prints the wall time of each playbook run, its ratio to the baseline, the
controller's peak RSS, and the bytes of agent config rendered per host. Run:

    .venv/bin/python benchmarks/registry_bench.py [--hosts 1000 200 400] [--modes none registry]
        [--replicas 10] [--forks 10]

Needs ``make collection`` once (the collection path in .build/).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
AGENT_ROLE = os.path.join(ROOT, "roles", "agent")

PLAY = """
- name: Render every host's agent config ({mode})
  hosts: mesh
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Compute the mesh registry once
      ansible.builtin.set_fact:
        hostmesh_registry: "{{{{ hostvars | hostmesh.sidecar.mesh_registry(groups['mesh'], 'cluster.local') }}}}"
      run_once: true
      when: mode == 'registry'

    - name: Render the agent config
      ansible.builtin.set_fact:
        rendered: "{{{{ hostmesh_agent_config_text }}}}"
      vars:
        hostmesh_outbound_services: >-
          {{{{ (hostmesh_registry | hostmesh.sidecar.mesh_outbound(inventory_hostname)) if mode == 'registry'
             else (hostvars | hostmesh.sidecar.mesh_upstreams(groups['mesh'], inventory_hostname, 'cluster.local'))
             if mode == 'upstreams' else [] }}}}

    - name: Measure one host's config
      ansible.builtin.copy:
        content: "{{{{ rendered | length }}}}"
        dest: "{{{{ out }}}}"
        mode: "0644"
      run_once: true
"""


def inventory(hosts: int, replicas: int) -> dict:
    services = max(1, hosts // replicas)
    mesh = {}
    for i in range(hosts):
        service = i % services
        mesh["h%04d" % i] = {
            "ansible_host": "10.%d.%d.%d" % (i // 65536, i // 256 % 256, i % 256),
            "hostmesh_locality": "zone-a" if i % 2 else "zone-b",
            "hostmesh_services": [{"name": "svc%d" % service, "port": 8000 + service, "protocol": "http"}],
        }
    return {
        "mesh": {
            "hosts": mesh,
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "hostmesh_mesh_defaults": {"connect_timeout_s": 2, "retries": {"attempts": 3}},
            },
        }
    }


def run(workdir: str, hosts: int, mode: str, replicas: int, forks: int) -> dict:
    inv = os.path.join(workdir, "inventory-%d.json" % hosts)
    if not os.path.exists(inv):
        with open(inv, "w") as handle:
            json.dump(inventory(hosts, replicas), handle)
    play = os.path.join(workdir, "render.yml")
    with open(play, "w") as handle:
        handle.write(PLAY.format(mode="{{ mode }}", role=AGENT_ROLE))
    out = os.path.join(workdir, "size-%s-%d" % (mode, hosts))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_FORKS=str(forks),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_LOCALHOST_WARNING="False",
    )
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", inv, play, "-e", json.dumps({"mode": mode, "out": out})]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit("%s at %d hosts failed:\n%s\n%s" % (mode, hosts, proc.stdout[-3000:], proc.stderr[-2000:]))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(out) as handle:
        size = int(handle.read())
    return {"seconds": elapsed, "peak_rss_mb": max(peak, before) / 1024, "config_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 200, 400])
    parser.add_argument("--modes", nargs="+", default=["none", "registry"], choices=["none", "registry", "upstreams"])
    parser.add_argument("--replicas", type=int, default=10, help="replicas per service (default 10)")
    parser.add_argument("--forks", type=int, default=10)
    args = parser.parse_args()
    print("hosts  mode       seconds  vs none  peak RSS MB  config bytes/host")
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as workdir:
        for hosts in args.hosts:
            base = None
            for mode in args.modes:
                got = run(workdir, hosts, mode, args.replicas, args.forks)
                if mode == "none":
                    base = got["seconds"]
                ratio = "%.2fx" % (got["seconds"] / base) if base else "-"
                print(
                    "%5d  %-9s  %7.1f  %7s  %11.0f  %17d"
                    % (hosts, mode, got["seconds"], ratio, got["peak_rss_mb"], got["config_bytes"]),
                    flush=True,
                )


if __name__ == "__main__":
    main()
