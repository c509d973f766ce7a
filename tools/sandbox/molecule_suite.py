"""Run molecule scenarios on sandbox hosts, one after another, and say what failed.

``python3 -m tools.sandbox.molecule_suite [SCENARIO...]`` (all of ``extensions/molecule/``
when none is named). The rootfs is built once up front. A failed scenario
prints each host's diagnostics before its hosts are destroyed, and the recap
repeats the lines that say why; molecule's output is printed with the
seconds since the scenario started, to see where time went. Hosts are
destroyed whatever happens. Molecule silently skips a missing create, destroy
or verify step; this runner refuses such a scenario instead.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.sandbox import rootfs
from tools.sandbox.sandbox import DEFAULT_BASE, REPO_ROOT, Sandbox, stop_ssh_masters

MOLECULE_DIR = REPO_ROOT / "extensions" / "molecule"
# A bound per scenario; platforms (three hosts, a reboot and an offboard) took
# 1200 s up to its idempotence step on a loaded 2-core machine.
SCENARIO_TIMEOUT = 35 * 60
# Printed by molecule only when the verifier really ran tests and they passed.
VERIFIER_OK = "Verifier completed successfully"
# Where molecule's Ansible and testinfra keep SSH connection masters.
ANSIBLE_CONTROL_DIR = Path.home() / ".ansible" / "cp"
# Lines of molecule's output that say why a scenario failed: the step, the
# task that failed or could not reach its host, the tests that failed, and
# the tasks an idempotence run changed. The recap repeats them, so the end of
# a long log is enough to see what went wrong.
WHY_FAILED = re.compile(
    r"^(\S+ > \w+: Executed: (?!Successful)"
    r"|(fatal|failed): \["
    r"|.*UNREACHABLE!"
    r"|FAILED \S+::"
    r"|ERROR \S+::"
    r"|(CRITICAL|ERROR) "
    r"|\* \[)"
)
WHY_FAILED_MAX_LINES = 24
WHY_FAILED_MAX_CHARS = 400


def scenarios() -> list[str]:
    return sorted(p.parent.name for p in MOLECULE_DIR.glob("*/molecule.yml"))


def check_scenario(name: str) -> list[str]:
    """Problems that would let molecule skip a step instead of failing."""
    scenario = MOLECULE_DIR / name
    if not (scenario / "molecule.yml").exists():
        return [f"no extensions/molecule/{name}/molecule.yml (scenarios: {', '.join(scenarios())})"]
    text = (scenario / "molecule.yml").read_text()
    problems = []
    for step in ("create", "destroy"):
        if f"{step}: ../resources/playbooks/{step}.yml" not in text:
            problems.append(f"{name}: molecule.yml must use ../resources/playbooks/{step}.yml")
    for step, path in re.findall(r"^\s{4}(\w+): (\S+\.yml)\s*$", text, re.M):
        if not (scenario / path).exists():
            problems.append(f"{name}: the {step} playbook {path} does not exist")
    # molecule reports "Missing playbook" and goes on when a sequence runs a
    # side effect (even one naming its playbook) and no side_effect is set.
    for path in re.findall(r"^\s*- side_effect (\S+)\s*$", text, re.M):
        if not (scenario / path).exists():
            problems.append(f"{name}: the side_effect playbook {path} does not exist")
    if re.search(r"^\s*- side_effect\b", text, re.M) and not re.search(r"^\s{4}side_effect: \S+", text, re.M):
        problems.append(f"{name}: the sequence runs side_effect, but ansible.playbooks sets no side_effect playbook")
    verifier = re.search(r"^\s{2}directory: (\S+)\s*$", text, re.M)
    tests_dir = scenario / (verifier.group(1) if verifier else "tests")
    if not list(tests_dir.glob("test_*.py")):
        problems.append(f"{name}: no test_*.py in the verifier directory {tests_dir}")
    return problems


def why_failed(output: str) -> list[str]:
    """The lines of a scenario's output that say why it failed, shortened, in order."""
    lines = []
    for line in output.splitlines():
        line = line.rstrip()
        if WHY_FAILED.match(line) and line not in lines:
            if len(line) > WHY_FAILED_MAX_CHARS:
                line = line[: WHY_FAILED_MAX_CHARS - 3] + "..."
            lines.append(line)
    if len(lines) > WHY_FAILED_MAX_LINES:
        left = len(lines) - WHY_FAILED_MAX_LINES
        lines = [*lines[:WHY_FAILED_MAX_LINES], f"... and {left} more such lines in the log above"]
    return lines


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / ".build" / "collections"),
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
        PY_COLORS="0",
    )


def run_scenario(name: str) -> tuple[bool, float, str, list[str]]:
    """Run one scenario's full test sequence; returns (passed, seconds, reason, why it failed)."""
    problems = check_scenario(name)
    if problems:
        return False, 0.0, "; ".join(problems), []
    started = time.monotonic()
    sb = Sandbox(f"molecule-{name}", base_dir=DEFAULT_BASE, log=lambda m: print(m, flush=True))
    reason = ""
    output: list[str] = []
    try:
        proc = subprocess.Popen(
            ["molecule", "test", "-s", name, "--destroy", "never"],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            # Each line says when it came, in seconds since the scenario started.
            print(f"{time.monotonic() - started:5.0f}s {line}", end="", flush=True)
            output.append(line)
            if time.monotonic() - started > SCENARIO_TIMEOUT:
                proc.kill()
                reason = f"timed out after {SCENARIO_TIMEOUT}s"
                break
        rc = proc.wait()
        if not reason and rc != 0:
            reason = f"molecule exited {rc}"
        if not reason and VERIFIER_OK not in "".join(output):
            reason = "the verifier ran no tests"
        if reason:
            print(f"===== {name} failed ({reason}): diagnostics of its hosts =====", flush=True)
            for host in sb.hosts():
                print(sb.diagnose(host), flush=True)
    finally:
        addresses = list(sb.hosts().values())
        subprocess.run(["molecule", "destroy", "-s", name], cwd=REPO_ROOT, env=_env(), check=False)
        sb.destroy(quiet=True)
        # Molecule's Ansible and testinfra share one directory of connection
        # masters named by address, and the next scenario's hosts get the same
        # addresses: a master left behind would be bound to a host that is gone.
        stop_ssh_masters(ANSIBLE_CONTROL_DIR, addresses)
        left = sb.leftovers()
        if left and not reason:
            reason = f"destroy left {left}"
    return not reason, time.monotonic() - started, reason, why_failed("".join(output)) if reason else []


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.sandbox.molecule_suite")
    parser.add_argument("scenario", nargs="*", help="default: every scenario in extensions/molecule/")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so each scenario's `finally` destroys its hosts.
    signal.signal(signal.SIGTERM, _interrupt)
    names = args.scenario or scenarios()
    if not names:
        print("no molecule scenarios found", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    tree = rootfs.ensure_rootfs(DEFAULT_BASE / "rootfs", log=lambda m: print(m, flush=True))
    print(f"rootfs ready in {time.monotonic() - t0:.1f}s: {tree.name}", flush=True)
    results = [(name, *run_scenario(name)) for name in names]
    print("\n===== molecule scenarios =====")
    for name, ok, took, reason, why in results:
        print(f"{name:24} {'passed' if ok else 'FAILED'} in {took:.0f}s {reason}")
        for line in why:
            print(f"    {line}")
    passed = sum(1 for result in results if result[1])
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
