"""Record the command cases of tests/unit/capture/test_commands.yaml from the real tools.

Each case runs once in a fresh pair of network namespaces (netlab.Lab): the
setup brings the host to the state the case starts from, then one
traffic_capture run (``run_capture``, or host_state's ``check_capture``)
goes through a host edge that records every binary looked up, file read and
command run, with its data, exit status and output. A few faults are
injected (a failing restore, a read-back that differs); everything else is
what iptables, nft and ip answered. Run as root, then read the diff:

    .venv/bin/python tests/integration/capture/record_cases.py [CASE ...]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

import yaml  # noqa: E402
from netlab import Lab  # noqa: E402

OUTPUT = os.path.join(ROOT, "tests", "unit", "capture", "test_commands.yaml")

ADDRESS_FAMILY = {"ip_families": ["ipv4", "ipv6"]}
DOCKER_LIKE = [
    ["iptables-nft", "-t", "nat", "-N", "DOCKER"],
    ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
]


def apply(options):
    """A setup step: traffic_capture with ``options``, not recorded."""
    return ("apply", options)


def shell(argv):
    return ("shell", argv)


def fail_nth(tool, nth, rc, err):
    """Answer the ``nth`` run of ``tool`` (a binary's name) with rc/err instead of running it."""
    return {"tool": tool, "nth": nth, "answer": (rc, "", err)}


def drop_line(tool, nth, line):
    """Run the ``nth`` call of ``tool`` for real, then drop ``line`` from what it printed."""
    return {"tool": tool, "nth": nth, "drop": line}


# name -> what the case shows, its setup, the options of the recorded run, and its faults.
CASES = {
    "no_op_both_families_nft_with_legacy_tools": {
        "about": "A run with everything in place: each save and list command once, nothing written. "
        "Legacy iptables is installed but holds no table, so it is not asked.",
        "setup": [apply({})],
        "options": {},
    },
    "no_op_with_legacy_tables_loaded": {
        "about": "As above on a host where legacy iptables has tables (empty): its saves are read too, once each.",
        "setup": [
            shell(["iptables-legacy", "-t", "nat", "-S"]),
            shell(["ip6tables-legacy", "-t", "nat", "-S"]),
            apply({}),
        ],
        "options": {},
    },
    "first_apply_both_families": {
        "about": "A clean host: one restore per family, each read back once.",
        "setup": [],
        "options": {},
    },
    "check_mode_reads_only": {
        "about": "Check mode: the snapshot only; the plan says what would change.",
        "setup": [],
        "options": {},
        "check_mode": True,
    },
    "failed_ipv6_restore_puts_ipv4_back": {
        "about": "Both families change; IPv6's restore fails, so IPv4's change is put back.",
        "setup": [apply({})],
        "options": {"outbound_ports_exclude": [5432]},
        "faults": [
            fail_nth("ip6tables-nft-restore", 1, 1, "ip6tables-nft-restore: line 2 failed: Invalid argument.\n")
        ],
    },
    "failed_first_apply_next_to_docker_puts_the_host_back": {
        "about": "A first apply next to Docker's nat rules fails on IPv6: IPv4 is put back, and the OUTPUT chain "
        "iptables-nft made for our jump is deleted while Docker's PREROUTING stays.",
        "setup": [shell(argv) for argv in DOCKER_LIKE],
        "options": {},
        "faults": [
            fail_nth("ip6tables-nft-restore", 1, 1, "ip6tables-nft-restore: line 2 failed: Invalid argument.\n")
        ],
    },
    "held_xtables_lock_names_lock_wait": {
        "about": "Another program holds the xtables lock longer than lock_wait.",
        "setup": [],
        "hold_lock": True,
        "options": {"backend": "iptables-legacy", "ip_families": ["ipv4"], "lock_wait": 1},
    },
    "read_back_differs_is_rolled_back": {
        "about": "IPv4 applies but reads back without one rule: an error, and IPv4 is put back.",
        "setup": [],
        "options": {},
        "faults": [drop_line("iptables-nft-save", 2, "-A HOSTMESH_OUTPUT -j HOSTMESH_REDIRECT")],
    },
    "missing_owner_match_names_proxy_uid": {
        "about": "iptables cannot load the owner match (no libxt_owner): the error names proxy_uid/proxy_gid.",
        "setup": [],
        "without_owner_match": True,
        "options": {},
    },
    "state_absent_removes_ours_and_tidies": {
        "about": "state absent after tproxy, DNS and drop_invalid in both families, next to a Docker-like "
        "rule: our chains, jumps and policy routing go, and the built-in chains and tables iptables-nft "
        "made for them are deleted; Docker's stay.",
        "setup": [
            *(shell(argv) for argv in DOCKER_LIKE),
            apply(dict(ADDRESS_FAMILY, mode="tproxy", dns_redirect=True, drop_invalid=True)),
        ],
        "options": {"state": "absent"},
    },
    "nftables_backend_replaces_iptables": {
        "about": "Switching from iptables-nft to the nftables backend: one nft transaction builds our table, "
        "our iptables rules go and the table iptables-nft made for them is deleted.",
        "setup": [apply({})],
        "options": {"backend": "nftables"},
    },
    "tproxy_policy_routing": {
        "about": "mode tproxy: mangle rules per family, and one ip batch per family for the ip rule and route.",
        "setup": [],
        "options": {"mode": "tproxy"},
    },
    "tproxy_with_lo_down_is_put_back": {
        "about": "mode tproxy on a host whose loopback interface is down: IPv6's route fails (Nexthop device "
        "is not up); one error saying lo must be up, and every step applied before it is put back.",
        "setup": [shell(["ip", "link", "set", "lo", "down"])],
        "options": dict(ADDRESS_FAMILY, mode="tproxy"),
    },
    "rollback_whose_undo_fails": {
        "about": "IPv6's restore fails and putting IPv4 back fails too: both failures, each once.",
        "setup": [apply({})],
        "options": {"outbound_ports_exclude": [5432]},
        "faults": [
            fail_nth("ip6tables-nft-restore", 1, 1, "ip6tables-nft-restore: line 2 failed: Invalid argument.\n"),
            fail_nth("iptables-nft-restore", 2, 1, "iptables-nft-restore: line 4 failed: Invalid argument.\n"),
        ],
    },
    "check_finds_a_deleted_jump": {
        "about": "host_state's check: a jump deleted by hand is named; nothing is written.",
        "setup": [
            apply({}),
            shell(["iptables-nft", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "HOSTMESH_OUTPUT"]),
        ],
        "options": {},
        "entry": "check",
    },
}


# -- inside the namespace ----------------------------------------------------------------


def inside(name, out_path):
    from ansible.module_utils.common.process import get_bin_path

    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import CaptureError
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.host import HostCommands, run_process
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import parse_options
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.run import check_capture, run_capture
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import validate_params
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_text

    case = CASES[name]
    real_run = run_process  # what the module runs commands with
    env = dict(os.environ, LC_ALL="C")

    def find(name):
        try:
            return get_bin_path(name)
        except ValueError:
            return None

    def options_of(params):
        return parse_options(validate_params(params))[0]

    for kind, what in case["setup"]:
        if kind == "shell":
            subprocess.run(what, check=True, capture_output=True, env=env)
        else:
            options = options_of(what)
            run_capture(options, HostCommands(real_run, find, read_text, options.lock_wait), False)

    holder = None
    if case.get("hold_lock"):
        holder = subprocess.Popen(["flock", "/run/xtables.lock", "sleep", "5"])
        time.sleep(0.3)
    if case.get("without_owner_match"):
        libdir = next(p for p in ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables") if os.path.isdir(p))
        stripped = tempfile.mkdtemp()
        for entry in os.listdir(libdir):
            if "owner" not in entry:
                os.symlink(os.path.join(libdir, entry), os.path.join(stripped, entry))
        os.environ["XTABLES_LIBDIR"] = stripped

    commands, binaries, files, calls = [], {}, {}, {}

    def recording_run(argv, data=None):
        tool = os.path.basename(argv[0])
        calls[tool] = calls.get(tool, 0) + 1
        fault = next((f for f in case.get("faults", ()) if f["tool"] == tool and f["nth"] == calls[tool]), None)
        if fault and "answer" in fault:
            rc, out, err = fault["answer"]
        else:
            rc, out, err = real_run(argv, data)
            if fault:
                out = "".join(line + "\n" for line in out.splitlines() if line != fault["drop"])
        entry = {"argv": list(argv)}
        if data is not None:
            entry["data"] = data
        entry.update({"rc": rc, "out": out, "err": err})
        if fault:
            entry["injected"] = "answer" if "answer" in fault else "dropped %r from the real output" % fault["drop"]
        commands.append(entry)
        return rc, out, err

    def recording_find(name):
        binaries[name] = find(name)
        return binaries[name]

    def recording_read(path):
        files[path] = read_text(path)
        return files[path]

    options = options_of(case["options"])
    edge = HostCommands(recording_run, recording_find, recording_read, options.lock_wait)
    record = {"id": name, "about": case["about"], "options": case["options"]}
    if case.get("check_mode"):
        record["check_mode"] = True
    if case.get("entry"):
        record["entry"] = case["entry"]
    try:
        if case.get("entry") == "check":
            outcome = {"differences": check_capture(options, edge, recording_read)}
        else:
            outcome = run_capture(options, edge, case.get("check_mode", False))
            outcome = {key: outcome[key] for key in ("changed", "backend", "families", "added", "removed")}
        record["result"] = outcome
    except CaptureError as error:
        record["error"] = {"type": type(error).__name__, "message": str(error)}
    finally:
        if holder:
            holder.kill()
            holder.wait()
    record.update({"binaries": binaries, "files": files, "commands": commands})
    with open(out_path, "w") as handle:
        json.dump(record, handle)


# -- outside: one fresh lab per case, then the YAML file --------------------------------------


class _Literal(str):
    """A string dumped as a YAML block, or double-quoted where a block would not keep it exactly."""


class _Dumper(yaml.SafeDumper):
    """Indents lists inside mappings, as yamllint (and ansible-lint) expect."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _literal(dumper, data):
    lines = data.split("\n")
    block = "\n" in data and all(line == line.rstrip() and len(line) <= 140 for line in lines)
    style = "|" if block else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _blocks(value):
    if isinstance(value, dict):
        return {key: _blocks(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_blocks(item) for item in value]
    if isinstance(value, str) and "\n" in value:
        return _Literal(value)
    return value


HEADER = """\
---
# Command cases for the capture core, run by test_commands.py through a fake
# host edge: each case gives the options, what the host's binaries and files
# look like, and the exact commands expected in order (argv, data fed on
# standard input, rc, out, err), then the result or the error. A command not
# listed, out of order, or with other data fails the test; so does one listed
# and not run.
#
# Recorded from the real iptables, nft and ip in network namespaces by
# tests/integration/capture/record_cases.py; "injected" marks the few answers
# that case made up (a failing restore, a read-back missing a line).
"""


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root: recording creates network namespaces")
    names = sys.argv[1:] or list(CASES)
    records = {}
    if os.path.exists(OUTPUT) and sys.argv[1:]:
        with open(OUTPUT) as handle:
            records = {case["id"]: case for case in yaml.safe_load(handle)["cases"]}
    for name in names:
        lab = Lab().up()
        try:
            out_path = os.path.join(lab._tmp, "case.json")
            env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))
            proc = lab.run(lab.host, [sys.executable, __file__, "--inside", name, out_path], check=False, env=env)
            if proc.returncode != 0:
                raise SystemExit("case %s failed:\n%s%s" % (name, proc.stdout, proc.stderr))
            with open(out_path) as handle:
                records[name] = json.load(handle)
        finally:
            lab.down()
        print("recorded", name, "(%d commands)" % len(records[name]["commands"]))
    _Dumper.add_representer(_Literal, _literal)
    cases = [_blocks(records[name]) for name in CASES if name in records]
    with open(OUTPUT, "w") as handle:
        handle.write(HEADER)
        yaml.dump({"cases": cases}, handle, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        inside(sys.argv[2], sys.argv[3])
    else:
        main()
