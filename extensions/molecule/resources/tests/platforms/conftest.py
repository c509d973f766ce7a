"""The fixtures and hooks every scenario's tests share, from ../sandbox_hosts.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sandbox_hosts

pytest_runtest_makereport = sandbox_hosts.pytest_runtest_makereport
