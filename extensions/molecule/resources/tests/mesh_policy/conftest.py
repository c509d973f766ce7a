"""The mesh_policy scenario's hosts, and the hooks every scenario's tests share (../sandbox_hosts.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sandbox_hosts

pytest_runtest_makereport = sandbox_hosts.pytest_runtest_makereport


@pytest.fixture(scope="module")
def client_a():
    return sandbox_hosts._host("client-a")


@pytest.fixture(scope="module")
def client_b():
    return sandbox_hosts._host("client-b")


@pytest.fixture(scope="module")
def server():
    return sandbox_hosts._host("server")


@pytest.fixture(scope="module")
def prom():
    return sandbox_hosts._host("prom")
