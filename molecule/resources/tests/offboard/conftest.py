"""Fixtures and hooks shared by every scenario's tests (see ../sandbox_hosts.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox_hosts import *  # noqa: F403
