"""After offboarding, each host is as it was before onboarding."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from sandbox_hosts import REPO_ROOT, address_of

SNAPSHOT = REPO_ROOT / "extensions/molecule/resources/files/host_snapshot.sh"


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_host_is_as_before_onboarding(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    before_file = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / f"before-{name}.txt"
    assert before_file.exists(), f"prepare did not record {before_file}"
    host.ansible("ansible.builtin.copy", f"src={SNAPSHOT} dest=/tmp/host_snapshot.sh mode=0644", check=False)
    now = host.check_output("sh /tmp/host_snapshot.sh && rm -f /tmp/host_snapshot.sh")
    before = before_file.read_text()
    diff = list(difflib.unified_diff(before.splitlines(), now.splitlines(), "before", "after", lineterm="", n=1))
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("name", ["host1", "host2"])
def test_application_is_reached_directly_again(name, host1, host2) -> None:
    host = host1 if name == "host1" else host2
    body = host.check_output(f"curl -sf --max-time 5 http://{address_of(host2)}:8080/")
    assert body.strip() == "echo from host2"
