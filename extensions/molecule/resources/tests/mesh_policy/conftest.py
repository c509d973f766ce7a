"""The mesh_policy scenario's hosts, and the hooks every scenario's tests share (../sandbox_hosts.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sandbox_hosts

pytest_runtest_makereport = sandbox_hosts.pytest_runtest_makereport


def _host_fixture(name: str):
    """A module-scoped fixture, named like the host with "_" for "-", that yields the scenario's host ``name``."""
    return pytest.fixture(scope="module", name=name.replace("-", "_"))(lambda: sandbox_hosts._host(name))


client_a = _host_fixture("client-a")
client_b = _host_fixture("client-b")
server = _host_fixture("server")
prom = _host_fixture("prom")
