"""``hostmesh-agent validate`` tells an Envoy that crashed from a config Envoy rejected.

The rejected path uses the real Envoy; the crash path a stand-in that prints Envoy's
assert and abort lines and kills itself with SIGABRT, as Envoy does when the host
has no inotify instance left for it (exhausting them here would starve every
other process on the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "roles" / "agent" / "files"))
from hostmesh_agent.envoy_exit import CRASHED, REJECTED, diagnose  # noqa: E402

pytestmark = [pytest.mark.envoy]

EXAMPLE = ROOT / "docs" / "examples" / "agent-standalone.json"
ASSERT_LINE = (
    "[2026-12-03 10:00:00.000][12][critical][assert] [source/common/filesystem/inotify/watcher_impl.cc:25] "
    "assert failure: inotify_fd_ >= 0. Details: Consider increasing value of user.max_inotify_watches via sysctl"
)
FAKE_CRASHING_ENVOY = f"""#!/usr/bin/python3
import os, signal, sys
sys.stderr.write({ASSERT_LINE!r} + "\\n")
sys.stderr.write("[2026-12-03 10:00:00.001][12][critical][backtrace] Caught Aborted, suspect faulting address 0x0\\n")
sys.stderr.flush()
os.kill(os.getpid(), signal.SIGABRT)
"""
# The real Envoy, given one more config (merged into the bootstrap) that it must refuse.
REJECTING_WRAPPER = """#!/bin/sh
exec {envoy} "$@" --config-yaml '{{static_resources: {{clusters: [{{name: broken, type: NO_SUCH_TYPE}}]}}}}'
"""


def _executable(path: Path, script: str) -> str:
    """Write a script that stands in for Envoy; its path."""
    path.write_text(script)
    path.chmod(0o755)
    return str(path)


def _validate(workdir: Path, binary: str) -> subprocess.CompletedProcess:
    config = json.loads(EXAMPLE.read_text())
    config["envoy"]["binary"] = binary
    config["node"]["ip"] = "127.0.0.1"
    config["run_dir"] = str(workdir / "run")
    path = workdir / "agent.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, "-S", "-m", "hostmesh_agent", "validate", "--config", str(path)],
        env={"PYTHONPATH": str(ROOT / "roles/agent/files"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_the_real_envoys_rejection_is_diagnosed_as_rejected(envoy_binary, workdir):
    (workdir / "bad.json").write_text('{"static_resources": {"clusters": [{"name": "x", "type": "NO_SUCH_TYPE"}]}}')
    res = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(workdir / "bad.json"), "-l", "error"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    verdict = diagnose(res.returncode, res.stdout + res.stderr)
    assert verdict.kind == REJECTED, res.stderr
    assert "[critical]" in verdict.critical and "NO_SUCH_TYPE" in verdict.critical


def test_validate_reports_a_rejected_config_with_envoys_first_critical_line(envoy_binary, workdir):
    res = _validate(workdir, _executable(workdir / "envoy-rejects", REJECTING_WRAPPER.format(envoy=envoy_binary)))
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bootstrap: rejected by envoy --mode validate (exit 1); first critical line: ")
    assert "NO_SUCH_TYPE" in last
    assert "crashed" not in last


def test_validate_reports_a_crashed_envoy_as_a_crash_not_a_rejection(envoy_binary, workdir):
    res = _validate(workdir, _executable(workdir / "envoy-crashes", FAKE_CRASHING_ENVOY))
    assert res.returncode == 70, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bootstrap: not judged: envoy crashed (signal SIGABRT); first critical line: ")
    assert "assert failure: inotify_fd_ >= 0" in last
    assert "fs.inotify.max_user_instances" in last
    assert "rejected" not in last
    assert diagnose(-6, ASSERT_LINE).kind == CRASHED
