"""Run a command and sample the memory of its whole process tree, for the benchmarks.

Linux only (reads /proc). The peak is the largest sum of resident set sizes seen
over the command and its descendants (ansible-playbook and its forks); pages the
forks share are counted once per process, so it is an upper bound.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Dict, List, Tuple

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and every process below it."""
    tree = _children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            with open("/proc/%d/statm" % pid) as handle:
                total += int(handle.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def run_sampled(argv: List[str], env: Dict[str, str], interval: float = 0.5) -> Tuple[subprocess.CompletedProcess, int]:
    """Run ``argv`` to the end; its result and the peak bytes resident in its process tree."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        done.set()
        sampler.join()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), peak[0]


if __name__ == "__main__":
    import sys

    result, peak_bytes = run_sampled(sys.argv[1:], dict(os.environ))
    print("rc=%d peak=%.1f MB" % (result.returncode, peak_bytes / 1e6))
