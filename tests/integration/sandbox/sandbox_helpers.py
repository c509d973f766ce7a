"""What the sandbox tests run on their hosts: shell scripts over SSH, and ad-hoc Ansible through the inventory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tools.sandbox.sandbox import Sandbox

REPO_ROOT = Path(__file__).resolve().parents[3]


def sh(sb: Sandbox, host: str, script: str) -> str:
    """Run a shell script on a host over SSH; fail the test with its output if it fails."""
    proc = sb.ssh(host, [script])
    assert proc.returncode == 0, f"{host}: {script!r} failed ({proc.returncode}):\n{proc.stdout}"
    return proc.stdout.strip()


def ansible(
    sb: Sandbox, pattern: str, module: str, *args: str, timeout: float, **env: str
) -> subprocess.CompletedProcess:
    """The venv's ``ansible`` running ``module`` on the sandbox's hosts ``pattern``, colour off, extra ``env`` set."""
    return subprocess.run(
        [str(REPO_ROOT / ".venv/bin/ansible"), "-i", str(sb.inventory), pattern, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", **env),
    )
