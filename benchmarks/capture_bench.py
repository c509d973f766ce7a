"""Benchmark traffic_capture against the ways people apply such rules by hand.

Prints, in one run on one host, for the seed's chains (chain_prefix ISTIO_):
  - traffic_capture as one ansible-playbook task, against a playbook whose one
    task is ansible.builtin.ping (the cost of any module: Ansible, Python start),
    both as whole playbooks and as the task alone;
  - the same rules as ansible.builtin.iptables tasks (one task per rule),
  - a shell script of one iptables call per rule;
and traffic_capture's apply and no-op times with 1,000 excluded CIDRs; then the
capture role's reconciler (roles/capture/files/capture_heal.py) on those
rules: its CPU while nothing drifts (percent of one CPU, over --idle seconds,
the reconciler and its nft monitor together) and its time to repair (from a
removal until capture reads as applied, median and worst of 10 removals:
iptables -t nat -F, nft flush ruleset, an old file restored, in turns).

Each figure is the median of --repeat runs, each in a fresh network namespace
(so nothing outside them is touched); the ping and traffic_capture playbooks
take turns, so both see the same machine. Run as root:
    .venv/bin/python benchmarks/capture_bench.py [--repeat 5] [--ping-only | --heal-only] [--idle 60]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "capture"))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from netlab import COLLECTIONS, Lab  # noqa: E402

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.iptables import render_rule  # noqa: E402
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.model import negated  # noqa: E402
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options  # noqa: E402
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family  # noqa: E402

BIN = os.path.dirname(sys.executable)
SEED = {"chain_prefix": "ISTIO_", "ip_families": ["ipv4"], "backend": "iptables-nft"}


def seed_rules():
    """[(table, chain, Rule)] in apply order, and our chain names."""
    family = build_family(parse_options(SEED)[0], "ipv4")
    rules = [(table, chain, rule) for (table, chain), rules in family.chains.items() for rule in rules]
    rules += [(table, chain, rule) for (table, chain), rules in family.jumps.items() for rule in rules]
    return rules, [chain for _table, chain in family.chains]


def builtin_task(table, chain, rule):
    """One ansible.builtin.iptables task for a Rule."""
    args = {"table": table, "chain": chain, "jump": rule.target}
    if rule.proto:
        args["protocol"] = rule.proto
    if rule.dport is not None:
        args["destination_port"] = str(rule.dport)
        args["match"] = [rule.proto]
    if rule.src:
        args["source"] = rule.src
    if rule.dst:
        args["destination"] = rule.dst
    if rule.out_iface:
        args["out_interface"] = rule.out_iface
    for field, name in (("uid_owner", "uid_owner"), ("gid_owner", "gid_owner")):
        value = getattr(rule, field)
        if value is not None:
            is_negated, owner = negated(value)
            args[name] = ("!" if is_negated else "") + str(owner)
    if rule.target == "REDIRECT":
        args["to_ports"] = str(rule.param("to_ports"))
    lines = ["    - name: %s %s" % (chain, render_rule(rule)), "      ansible.builtin.iptables:"]
    lines += ["        %s: %s" % (key, _yaml(value)) for key, value in args.items()]
    return "\n".join(lines)


def _yaml(value):
    if isinstance(value, list):
        return "[%s]" % ", ".join(value)
    return '"%s"' % value


def playbook(tasks):
    head = "- name: Bench\n  hosts: all\n  gather_facts: false\n  tasks:\n"
    return head + "\n".join(tasks) + "\n"


def run_playbook(lab, text, directory, samples=None):
    """Seconds the playbook took. With a dict ``samples``, append to its lists "task" the first
    task's seconds and "cpu" the CPU seconds of the whole run (every process it started), which
    other load on the machine sways far less than wall time."""
    path = os.path.join(directory, "play.yml")
    times = os.path.join(directory, "task_times.json")
    with open(path, "w") as handle:
        handle.write(text)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "benchmarks", "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="task_times",
        HOSTMESH_TASK_TIMES=times,
    )
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    argv += ["-e", "ansible_python_interpreter=%s" % sys.executable, path]
    cpu = _children_cpu()
    start = time.monotonic()
    proc = lab.run(lab.host, argv, check=False, env=env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("playbook failed:\n%s%s" % (proc.stdout, proc.stderr))
    if samples is not None:
        samples["cpu"].append(_children_cpu() - cpu)
        with open(times) as handle:
            samples["task"].append(json.load(handle)[0][0])
    return elapsed


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(function):
    """``function(lab, directory)`` in a fresh pair of namespaces."""
    lab = Lab().up()
    try:
        with tempfile.TemporaryDirectory() as directory:
            return function(lab, directory)
    finally:
        lab.down()


def timed(function, repeat):
    return statistics.median(once(function) for _index in range(repeat))


def timed_in_turns(functions, repeat):
    """Medians of several functions whose runs take turns, so drift in the machine's load hits all alike."""
    samples = [[] for _function in functions]
    for _index in range(repeat):
        for function, found in zip(functions, samples):
            found.append(once(function))
    return [statistics.median(found) for found in samples]


def _against_ping(ping, module, ping_samples, module_samples):
    """Rows for the ping and traffic_capture playbooks (whole, task alone, CPU) and their difference."""
    medians = [
        (whole, statistics.median(samples["task"]), statistics.median(samples["cpu"]))
        for whole, samples in ((ping, ping_samples), (module, module_samples))
    ]
    difference = tuple(b - a for a, b in zip(*medians))
    row = "  %-45s%7.2f   task %.2f   cpu %.2f"
    return "\n".join(
        row % (label, *values)
        for label, values in (
            ("ansible.builtin.ping, one task", medians[0]),
            ("traffic_capture, one task", medians[1]),
            ("traffic_capture - ping", difference),
        )
    )


HEAL = os.path.join(ROOT, "roles", "capture", "files", "capture_heal.py")
REMOVALS = (
    "iptables-nft -w -t nat -F",
    "nft flush ruleset",
    "iptables-nft-save | grep -v HOSTMESH_ > {dir}/old.v4 && iptables-nft-restore -w < {dir}/old.v4",
)


def _cpu_seconds(pids):
    """User + system CPU seconds of these processes so far (clock ticks from /proc)."""
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _capture_on(lab):
    nat = lab.run(lab.host, ["iptables-nft", "-w", "-t", "nat", "-S"]).stdout
    return "-A PREROUTING -p tcp -j HOSTMESH_INBOUND" in nat and "-A OUTPUT -p tcp -j HOSTMESH_OUTPUT" in nat


def heal_figures(idle_s, removals=10):
    """(idle CPU in percent of one CPU, [seconds to repair each removal]) in a fresh namespace."""
    lab = Lab().up()
    directory = tempfile.mkdtemp(prefix="hm-heal-")
    rules_file = os.path.join(directory, "capture.rules")
    proc = None
    try:
        lab.ok(rules_file=rules_file, ip_families=["ipv4"], backend="iptables-nft")
        argv = ["ip", "netns", "exec", lab.host, "/usr/bin/python3", HEAL, "--rules-file", rules_file]
        argv += ["--counter", os.path.join(directory, "repairs")]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)  # started, first check made, nft monitor running
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        pids = [proc.pid, *map(int, children)]
        before = _cpu_seconds(pids)
        time.sleep(idle_s)
        idle = 100 * (_cpu_seconds(pids) - before) / idle_s
        took = []
        for index in range(removals):
            removal = REMOVALS[index % len(REMOVALS)].format(dir=directory)
            lab.run(lab.host, ["sh", "-c", removal])
            start = time.monotonic()
            while not _capture_on(lab):
                if time.monotonic() - start > 30:
                    raise SystemExit("capture not back within 30 s after: %s" % removal)
                time.sleep(0.01)
            took.append(time.monotonic() - start)
            time.sleep(0.5)
        return idle, took
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        lab.down()
        subprocess.run(["rm", "-rf", directory], check=False)


def print_heal(idle_s):
    idle, took = heal_figures(idle_s)
    print("capture reconciler (iptables-nft, nft monitor events):")
    print("  idle CPU over %3d s, %% of one CPU            %7.3f" % (idle_s, idle))
    print(
        "  time to repair, median / worst of %2d         %7.3f / %.3f" % (len(took), statistics.median(took), max(took))
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cidrs", type=int, default=1000)
    parser.add_argument("--ping-only", action="store_true", help="only traffic_capture against ansible.builtin.ping")
    parser.add_argument("--heal-only", action="store_true", help="only the reconciler's idle CPU and time to repair")
    parser.add_argument("--idle", type=int, default=60, help="seconds over which the reconciler's idle CPU is taken")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates network namespaces")
    if args.heal_only:
        print_heal(args.idle)
        return

    rules, chains = seed_rules()
    module_task = (
        "    - name: Capture\n      hostmesh.sidecar.traffic_capture:\n"
        "        chain_prefix: ISTIO_\n        ip_families: [ipv4]\n        backend: iptables-nft"
    )
    create_chains = [
        "    - name: Chain %s\n      ansible.builtin.iptables:\n        table: nat\n        chain: %s\n"
        "        chain_management: true" % (chain, chain)
        for chain in chains
    ]
    builtin = create_chains + [builtin_task(*item) for item in rules]
    shell = ["iptables-nft -t nat -N %s" % chain for chain in chains]
    shell += ["iptables-nft -t %s -A %s %s" % (table, chain, render_rule(rule)) for table, chain, rule in rules]
    empty = "    - name: Nothing\n      ansible.builtin.meta: noop"
    ping_task = "    - name: Ping\n      ansible.builtin.ping:"

    ping_samples, module_samples = {"task": [], "cpu": []}, {"task": [], "cpu": []}
    ping, module = timed_in_turns(
        [
            lambda lab, d: run_playbook(lab, playbook([ping_task]), d, ping_samples),
            lambda lab, d: run_playbook(lab, playbook([module_task]), d, module_samples),
        ],
        args.repeat,
    )
    against_ping = _against_ping(ping, module, ping_samples, module_samples)
    if args.ping_only:
        print("traffic_capture against ansible.builtin.ping (median of %d runs, seconds)" % args.repeat)
        print(against_ping)
        return
    baseline = timed(lambda lab, d: run_playbook(lab, playbook([empty]), d), args.repeat)
    builtin_time = timed(lambda lab, d: run_playbook(lab, playbook(builtin), d), args.repeat)

    def shell_loop(lab, directory):
        path = os.path.join(directory, "rules.sh")
        with open(path, "w") as handle:
            handle.write("set -e\n" + "\n".join(shell) + "\n")
        start = time.monotonic()
        lab.run(lab.host, ["sh", path])
        return time.monotonic() - start

    shell_time = timed(shell_loop, args.repeat)

    cidrs = ["10.%d.%d.0/24" % (index // 256, index % 256) for index in range(args.cidrs)]

    def module_run(lab, extra):
        start = time.monotonic()
        lab.ok(outbound_cidrs_exclude=cidrs, ip_families=["ipv4"], backend="iptables-nft", **extra)
        return time.monotonic() - start

    def apply_many(lab, directory):
        return module_run(lab, {})

    def noop_many(lab, directory):
        module_run(lab, {})
        return module_run(lab, {})

    apply_time = timed(apply_many, args.repeat)
    noop_time = timed(noop_many, args.repeat)

    print("traffic_capture benchmark (median of %d runs, seconds)" % args.repeat)
    print("seed chains: %d rules in %d chains" % (len(rules), len(chains)))
    print("  ansible-playbook, empty task (overhead)      %7.2f" % baseline)
    print(against_ping)
    print(
        "  ansible.builtin.iptables, %2d tasks           %7.2f   tasks %.2f"
        % (len(builtin), builtin_time, builtin_time - baseline)
    )
    print("  shell loop, %2d iptables calls                %7.2f" % (len(shell), shell_time))
    print("  builtin tasks / traffic_capture task         %7.1fx" % ((builtin_time - baseline) / (module - baseline)))
    print("%d excluded CIDRs, module run on the host:" % args.cidrs)
    print("  apply                                        %7.3f" % apply_time)
    print("  no-op (second run)                           %7.3f" % noop_time)
    print_heal(args.idle)


if __name__ == "__main__":
    main()
