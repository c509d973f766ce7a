"""Benchmark fleet onboarding on sandbox hosts, and the data path's added latency.

For each fleet size in --hosts (e.g. 8,32), in one invocation: boots N sandbox
hosts (systemd-nspawn, reached over SSH), starts a small HTTP app on the first,
measures the app's latency from the second direct, onboards every host with
playbooks/onboard.yml (first run), runs it again (re-run, timing each step) and
once more gathering every fact, runs a playbook that only gathers facts on the
same hosts, and measures the same requests again, now through both sidecars
with mTLS. For each playbook it records the controller's peak memory (the
ansible-playbook process tree) and the bytes each host received. Prints the
figures per size; destroys the hosts. Run as root:

    .venv/bin/python benchmarks/onboard_bench.py [--hosts 8,32] [--requests 500] [--suite bookworm]

Forks equal the hosts of the size being measured.

A failed playbook prints, for each failed task, its host and name and the
first lines of its msg, stderr and stdout: Ansible's error says what went
wrong in its first lines, and the tail of the log is mostly the recap.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.process_tree import run_sampled  # noqa: E402
from tools.sandbox import suites  # noqa: E402
from tools.sandbox.sandbox import Sandbox  # noqa: E402

BIN = os.path.dirname(sys.executable)
APP_PORT = 8080

# Sends requests one at a time over fresh connections and prints latencies (ms).
PROBE = r"""
import json, sys, time, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
samples = []
for _i in range(count):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
    samples.append((time.perf_counter() - start) * 1000)
print(json.dumps(samples))
"""

# Of a failed task's result: these fields, the first lines of each.
ERROR_FIELDS = ("msg", "stderr", "module_stderr", "stdout", "module_stdout")
ERROR_HEAD_LINES = 8
ERROR_MAX_TASKS = 5

FACTS_ONLY = """- name: Gather facts only
  hosts: mesh
  gather_facts: true
  tasks: []
"""


def failed_task_heads(output, head_lines=ERROR_HEAD_LINES, max_tasks=ERROR_MAX_TASKS):
    """The head of each failed task's error in ansible-playbook's output, as lines to print.

    Ansible prints a failed result as ``fatal: [HOST]: FAILED! => {JSON}``
    (``failed: [HOST] (item=...)`` in a loop, ``UNREACHABLE!`` for a lost host).
    """
    lines = []
    task = "?"
    failures = 0
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].rsplit("]", 1)[0]
            continue
        if not line.startswith(("fatal: [", "failed: [")) or " => " not in line:
            continue
        failures += 1
        if failures > max_tasks:
            continue
        head, _sep, payload = line.partition(" => ")
        lines.append("%s  (task: %s)" % (head, task))
        try:
            result = json.loads(payload)
        except ValueError:
            lines.append("    " + payload[:500])
            continue
        for field in ERROR_FIELDS:
            text = result.get(field)
            if not text or not isinstance(text, str):
                continue
            field_lines = text.splitlines()
            lines.append("  %s:" % field)
            lines += ["    " + text_line[:300] for text_line in field_lines[:head_lines]]
            if len(field_lines) > head_lines:
                lines.append("    ... (%d more lines)" % (len(field_lines) - head_lines))
    if failures > max_tasks:
        lines.append("... and %d more failed tasks" % (failures - max_tasks))
    return lines


# Bytes a host has received on its interfaces but loopback.
RX_BYTES = "cat $(ls -d /sys/class/net/*/statistics/rx_bytes | grep -v /lo/)"


def received(sandbox, names):
    """Bytes each host has received so far, by name."""
    counts = {}
    for name in names:
        proc = sandbox.ssh(name, ["sh", "-c", shlex.quote(RX_BYTES)], check=True, timeout=60)
        counts[name] = sum(int(word) for word in proc.stdout.split())
    return counts


class Run:
    """One timed playbook: seconds, changed tasks, controller peak bytes, bytes per host."""

    def __init__(self, seconds, changed, peak, sent):
        self.seconds, self.changed, self.peak, self.sent = seconds, changed, peak, sent

    def sent_text(self):
        values = sorted(self.sent.values())
        return "mean %.1f MB, max %.1f MB" % (sum(values) / len(values) / 1e6, values[-1] / 1e6)


def measured(sandbox, names, *args, **kwargs):
    """``playbook()`` with the bytes each host received while it ran."""
    before = received(sandbox, names)
    seconds, changed, peak = playbook(*args, **kwargs)
    after = received(sandbox, names)
    return Run(seconds, changed, peak, {name: after[name] - before[name] for name in names})


def playbook(inventory, extra_inventory, path, forks, extra_vars=(), times=None):
    """Run a playbook; returns (seconds, changed, peak bytes resident in the controller's
    ansible-playbook process tree). With ``times`` (a path) each task's duration is written there."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_NOCOLOR="1")
    if times:
        env.update(
            ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "benchmarks", "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="task_times",
            HOSTMESH_TASK_TIMES=times,
        )
    # SSH pipelining, as docs/onboarding.md recommends for fleets; every playbook timed here gets it.
    env.setdefault("ANSIBLE_PIPELINING", "True")
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", inventory, "-i", extra_inventory, "-f", str(forks)]
    # The mesh CA goes with the run's other throwaway files, not beside the playbook.
    argv += ["-e", "hostmesh_ca_dir=%s" % os.path.join(os.path.dirname(extra_inventory), "ca")]
    for assignment in extra_vars:
        argv += ["-e", assignment]
    argv.append(path)
    start = time.monotonic()
    proc, peak = run_sampled(argv, env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        heads = failed_task_heads(proc.stdout)
        raise SystemExit(
            "%s failed (rc=%d)\n%s\n--- the end of its output:\n%s\n%s"
            % (
                path,
                proc.returncode,
                "\n".join(heads) if heads else "(no failed task in its output)",
                proc.stdout[-2000:],
                proc.stderr[-2000:],
            )
        )
    recap = [line for line in proc.stdout.splitlines() if "changed=" in line]
    changed = sum(int(line.split("changed=")[1].split()[0]) for line in recap)
    return elapsed, changed, peak


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latencies(sandbox, client, url, count):
    # ssh hands the words to the remote shell, so quote them for it.
    argv = [shlex.quote(word) for word in ("python3", "-c", PROBE, url, str(count))]
    proc = sandbox.ssh(client, argv, check=True, timeout=600)
    return json.loads(proc.stdout)


def sizes(text):
    """--hosts: one size or several, "8,32"."""
    try:
        values = [int(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("--hosts: expected sizes like 8 or 8,32, got %r" % text) from None
    if any(value < 2 for value in values):
        raise argparse.ArgumentTypeError("--hosts: every size must be 2 or more, got %r" % text)
    return values


def measure(count, args):
    """Every figure for a fleet of ``count`` hosts."""
    names = ["web"] + ["host%d" % index for index in range(2, count + 1)]
    sandbox = Sandbox("bench-onboard", log=lambda message: print(message, file=sys.stderr))
    try:
        try:
            # The sandbox raises the machine's inotify limits for many hosts, or says why it cannot.
            sandbox.create(names, suite=args.suite)
        except RuntimeError as exc:
            raise SystemExit("sandbox create failed: %s" % exc) from exc
        hosts = sandbox.hosts()
        with tempfile.TemporaryDirectory() as directory:
            extra = os.path.join(directory, "mesh.yml")
            members = "\n".join("    %s: {}" % name for name in names[1:])
            with open(extra, "w") as handle:
                handle.write(
                    "mesh:\n  hosts:\n    web:\n      hostmesh_services:\n"
                    "        - {name: web, port: %d}\n%s\n" % (APP_PORT, members)
                )
            facts = os.path.join(directory, "facts.yml")
            with open(facts, "w") as handle:
                handle.write(FACTS_ONLY)
            inventory = str(sandbox.inventory)

            sandbox.ssh(
                "web",
                [
                    "systemd-run",
                    "--unit",
                    "bench-web",
                    "python3",
                    "-m",
                    "http.server",
                    str(APP_PORT),
                    "--directory",
                    "/etc",
                ],
                check=True,
            )
            time.sleep(1)
            url = "http://%s:%d/hostname" % (hosts["web"], APP_PORT)
            direct = latencies(sandbox, names[1], url, args.requests)

            onboard = os.path.join(ROOT, "playbooks", "onboard.yml")
            first = measured(sandbox, names, inventory, extra, onboard, count)
            times = os.path.join(directory, "rerun-times.json")
            rerun = measured(sandbox, names, inventory, extra, onboard, count, times=times)
            with open(times) as handle:
                steps = json.load(handle)
            with_facts = measured(
                sandbox, names, inventory, extra, onboard, count, extra_vars=["hostmesh_gather_facts=true"]
            )
            facts_only = measured(sandbox, names, inventory, extra, facts, count)
            meshed = latencies(sandbox, names[1], url, args.requests)
    finally:
        sandbox.destroy(quiet=True)
    return {"first": first, "rerun": rerun, "with_facts": with_facts, "facts": facts_only, "steps": steps,
            "direct": direct, "meshed": meshed}  # fmt: skip


def report(count, figures, args):
    first, rerun, with_facts, facts = figures["first"], figures["rerun"], figures["with_facts"], figures["facts"]
    direct, meshed = figures["direct"], figures["meshed"]
    print(
        "onboarding %d sandbox hosts of Debian %s (seconds; forks %d; ANSIBLE_PIPELINING=%s)"
        % (count, args.suite, count, os.environ.get("ANSIBLE_PIPELINING", "True"))
    )
    rows = (("first run", first), ("re-run", rerun), ("facts-only playbook", facts),
            ("re-run gathering all facts", with_facts))  # fmt: skip
    for label, run in rows:
        print(
            "  %-28s %7.1f   (changed=%d)   controller peak %6.1f MB   received per host: %s"
            % (label, run.seconds, run.changed, run.peak / 1e6, run.sent_text())
        )
    print("  first run per host           %7.2f" % (first.seconds / count))
    print("  re-run / facts-only          %7.1fx" % (rerun.seconds / facts.seconds))
    print("re-run, slowest steps (seconds from a task's start to the next's)")
    steps = figures["steps"]
    for seconds, name in sorted(steps, reverse=True)[: args.steps]:
        print("  %6.2f  %s" % (seconds, name))
    print("  %6.2f  all %d steps" % (sum(row[0] for row in steps), len(steps)))
    print("data path, %d sequential HTTP requests, new connection each (ms)" % args.requests)
    print("  direct            p50 %6.2f   p99 %6.2f" % (percentile(direct, 0.5), percentile(direct, 0.99)))
    print("  via both sidecars p50 %6.2f   p99 %6.2f" % (percentile(meshed, 0.5), percentile(meshed, 0.99)))
    print(
        "  added             p50 %6.2f   p99 %6.2f"
        % (percentile(meshed, 0.5) - percentile(direct, 0.5), percentile(meshed, 0.99) - percentile(direct, 0.99))
    )
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=sizes, default=[8], help="fleet sizes, e.g. 8 or 8,32")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--steps", type=int, default=12, help="how many of the re-run's slowest steps to print")
    parser.add_argument(
        "--suite", default=suites.DEFAULT_SUITE, choices=list(suites.SUITES), help="Debian suite of the hosts"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark boots systemd-nspawn hosts")
    for count in args.hosts:
        report(count, measure(count, args), args)


if __name__ == "__main__":
    main()
