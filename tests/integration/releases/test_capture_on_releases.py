"""The capture module's real-packet tests, inside one sandbox host of each Debian release.

Each host (Debian 11, 12, 13) gets a copy of the collection's plugins, the
capture tests and their tools, the part of ansible-core a module needs on a
target (``ansible/module_utils``, as Ansible ships it with every module) and
pytest (``guest-requirements.txt``, pure-Python wheels for Python 3.9 and
later). The tests then run there as root, with the host's own python3,
iptables (nf_tables and legacy) and nft, in network namespaces inside the
host: exactly the files and options they run with on the machine.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.sandbox import commands, suites  # noqa: E402
from tools.sandbox.sandbox import Sandbox  # noqa: E402

pytestmark = pytest.mark.sandbox

HOSTS = {"deb11": "bullseye", "deb12": "bookworm", "deb13": "trixie"}
# The real-packet tests of the capture module: every backend's rules with real
# TCP (and DNS) through them, IPv4 and IPv6, REDIRECT and TPROXY.
TESTS = ("tests/integration/capture/test_traffic.py", "tests/integration/capture/test_nft_backend.py")
# What the tests read, relative to the checkout.
PAYLOAD = ("pyproject.toml", "tests/conftest.py", "plugins", "tests/integration/capture", "tests/tools")
GUEST_ROOT = "/opt/hostmesh-test"
GUEST_CHECKOUT = GUEST_ROOT + "/ansible_collections/hostmesh/sidecar"
REQUIREMENTS = Path(__file__).resolve().parent / "guest-requirements.txt"
WHEELS = REPO_ROOT / ".build" / "guest-wheels"
GUEST_TIMEOUT = 900


def _wheels() -> list[Path]:
    """guest-requirements.txt's wheels, fetched once into .build/guest-wheels."""
    pins = [line.split("==")[0] for line in REQUIREMENTS.read_text().splitlines() if "==" in line]
    have = {path.name.split("-")[0].lower(): path for path in WHEELS.glob("*.whl")}
    if any(pin.lower() not in have for pin in pins):
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.9", "--implementation", "py", "--abi", "none",
             "--platform", "any", "-d", str(WHEELS), "-r", str(REQUIREMENTS)],
            check=True,
        )  # fmt: skip
        have = {path.name.split("-")[0].lower(): path for path in WHEELS.glob("*.whl")}
    return [have[pin.lower()] for pin in pins]


def _payload() -> bytes:
    """A tar of GUEST_ROOT: site/ (pytest), the checkout's parts, and ansible's module_utils next to it."""
    import ansible

    buffer = io.BytesIO()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add_tree(source: Path, name: str) -> None:
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if any(skip(str(part.parent), [part.name]) for part in (relative, *relative.parents) if part.name):
                    continue
                if path.is_file():
                    tar.add(path, arcname=f"{name}/{relative}")

        for part in PAYLOAD:
            if (REPO_ROOT / part).is_file():
                tar.add(REPO_ROOT / part, arcname=f"ansible_collections/hostmesh/sidecar/{part}")
            else:
                add_tree(REPO_ROOT / part, f"ansible_collections/hostmesh/sidecar/{part}")
        # As ansible-playbook sends with each module: ansible/__init__, release, _vendor, module_utils.
        core = Path(ansible.__file__).parent
        for name in ("__init__.py", "release.py"):
            tar.add(core / name, arcname=f"ansible/{name}")
        add_tree(core / "_vendor", "ansible/_vendor")
        add_tree(core / "module_utils", "ansible/module_utils")
        for wheel in _wheels():
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.infolist():
                    if member.is_dir():
                        continue
                    info = tarfile.TarInfo(f"site/{member.filename}")
                    data = archive.read(member)
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def releases() -> Sandbox:
    """One booted host per release, each holding the payload under GUEST_ROOT."""
    if os.geteuid() != 0:
        pytest.fail("needs root: boots sandbox hosts")
    sb = Sandbox(os.environ.get("SANDBOX_NAME", "pytest-releases"), log=lambda m: print(m, file=sys.stderr))
    atexit.register(sb.destroy, quiet=True)
    try:
        sb.create([f"{name}:{suite}" for name, suite in HOSTS.items()])
        payload = _payload()
        for name in HOSTS:
            unpack = commands.ssh(sb.ssh_config, name, [f"mkdir -p {GUEST_ROOT} && tar -x -C {GUEST_ROOT}"])
            subprocess.run(unpack, input=payload, check=True, timeout=120)
        yield sb
    finally:
        sb.destroy(quiet=True)


@pytest.mark.parametrize("name", HOSTS)
def test_capture_packet_tests_pass_on_the_releases_own_python_iptables_and_nft(releases: Sandbox, name: str) -> None:
    suite = suites.SUITES[HOSTS[name]]
    versions = releases.ssh(name, ["python3 --version; iptables --version; nft --version"]).stdout
    assert f"Python {suite.python}." in versions and f"iptables v{suite.iptables} " in versions, versions
    assert f"nftables v{suite.nftables} " in versions, versions
    # The module the tests run finds ansible's module_utils through netlab's HM_EXTRA_PYTHONPATH.
    script = (
        f"cd {GUEST_CHECKOUT} && PYTHONPATH={GUEST_ROOT}/site:{GUEST_ROOT} HM_EXTRA_PYTHONPATH={GUEST_ROOT}"
        f" PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider {' '.join(TESTS)}"
    )
    run = releases.ssh(name, [script], timeout=GUEST_TIMEOUT)
    print(run.stdout)
    assert run.returncode == 0, f"{name} ({suite.name}): the capture tests failed there:\n{run.stdout[-6000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
