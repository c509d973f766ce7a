"""A sandbox of two booted hosts shared by the tests of this folder, and one host per suite.

The finalizer and an atexit hook both destroy it, so no host outlives the
test run even when a test fails or pytest is interrupted.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.sandbox.sandbox import Sandbox  # noqa: E402


def _interrupt(signum, _frame) -> None:
    """SIGTERM ends pytest like Ctrl-C does, so finalizers still destroy the hosts."""
    raise KeyboardInterrupt(f"signal {signum}")


def _require_machine() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    if os.geteuid() != 0:
        pytest.fail("sandbox tests need root (network namespaces, systemd-nspawn)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "ssh", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.fail(f"sandbox tests need {', '.join(missing)}: run `make deps`")


def _booted(request: pytest.FixtureRequest, name: str, hosts) -> Sandbox:
    """A sandbox of these hosts, booted now; destroyed when the fixture's scope ends, or at exit."""
    _require_machine()
    sb = Sandbox(name, log=lambda m: print(m, file=sys.stderr))
    atexit.register(sb.destroy, quiet=True)
    request.addfinalizer(lambda: sb.destroy(quiet=True))
    sb.create(hosts)
    return sb


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """Two hosts, host1 and host2, booted once for the session."""
    return _booted(request, "pytest-sandbox", ["host1", "host2"])


# One host of each Debian suite, and one with systemd-resolved.
SUITE_HOSTS = ("deb11:bullseye", "deb12:bookworm", "deb13:trixie", "dns:bookworm+resolved")


@pytest.fixture(scope="module")
def suites_sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """Hosts deb11, deb12, deb13 (Debian 11, 12, 13) and dns (12 with systemd-resolved)."""
    return _booted(request, "pytest-suites", SUITE_HOSTS)


@pytest.fixture
def make_sandbox(request: pytest.FixtureRequest):
    """Factory for extra, short-lived sandboxes; each is destroyed after the test."""
    _require_machine()
    made: list[Sandbox] = []

    def make(name: str) -> Sandbox:
        sb = Sandbox(name, log=lambda m: print(m, file=sys.stderr))
        atexit.register(sb.destroy, quiet=True)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.destroy(quiet=True)
