"""Running Debian's promtool (the Makefile's `make apt` installs the prometheus package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[3]
ROLE_FILES = ROOT / "roles" / "prometheus" / "files"
RULES = ROLE_FILES / "hostmesh_alerts.yml"
RULES_TEST = ROLE_FILES / "hostmesh_alerts_test.yml"
DASHBOARD = ROLE_FILES / "grafana" / "hostmesh.json"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """promtool ARGS; the tests need it, so its absence is a failure that says where it comes from."""
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install Debian's prometheus package (make apt)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def recording_rules(exprs: Sequence[str]) -> dict:
    """A rules file with each expression as a recording rule, so promtool parses them all."""
    rules = [{"record": f"hostmesh:check:{i}", "expr": expr} for i, expr in enumerate(exprs)]
    return {"groups": [{"name": "expressions", "rules": rules}]}
