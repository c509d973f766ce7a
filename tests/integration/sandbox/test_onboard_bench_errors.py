"""benchmarks/onboard_bench.py prints the head of a failed task's error, from real ansible-playbook output."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
FAILING_PLAY = """\
- name: Fail the way a role's task does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start the sidecar
      ansible.builtin.command:
        argv: [sh, -c, "echo 'first: the real cause' >&2; for i in $(seq 1 300); do echo noise$i >&2; done; exit 3"]
      changed_when: false
"""


def load_bench():
    spec = importlib.util.spec_from_file_location("onboard_bench", REPO_ROOT / "benchmarks/onboard_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_task_prints_its_host_name_and_first_error_lines(tmp_path) -> None:
    bench = load_bench()
    play = tmp_path / "fail.yml"
    play.write_text(FAILING_PLAY)
    proc = subprocess.run(
        [
            str(REPO_ROOT / ".venv/bin/ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout
    heads = bench.failed_task_heads(proc.stdout)
    assert heads[0] == "fatal: [localhost]: FAILED!  (task: Start the sidecar)"
    assert heads[1:4] == ["  msg:", "    non-zero return code", "  stderr:"]
    assert heads[4] == "    first: the real cause", "the first line of stderr, not its tail"
    assert heads[-1] == "    ... (%d more lines)" % (301 - bench.ERROR_HEAD_LINES)
    assert "noise300" not in "\n".join(heads)
    assert bench.failed_task_heads("PLAY RECAP\nlocalhost : ok=1 failed=0\n") == []
