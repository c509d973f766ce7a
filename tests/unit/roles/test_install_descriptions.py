"""The agent and capture roles install from the same entries their records describe.

A role's record digest covers its ``hostmesh_*_install`` entries (tasks/plan.yml);
that only guarantees a re-run converges when what a host should have changed
if the tasks take their owners, groups, modes and paths from those entries
too. This test reads the tasks and holds them to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
WRITERS = ("ansible.builtin.copy", "ansible.builtin.template", "ansible.builtin.file", "ansible.builtin.unarchive")
ATTRIBUTES = ("owner", "group", "mode")


def _tasks(tasks):
    for task in tasks:
        yield task
        yield from _tasks(task.get("block", []))


@pytest.mark.parametrize("role", ["agent", "capture"])
def test_every_written_path_takes_its_owner_group_and_mode_from_the_install_entries(role: str) -> None:
    install = f"hostmesh_{role}_install"
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "converge.yml").read_text())
    checked = 0
    for task in _tasks(tasks):
        module = next((name for name in WRITERS if name in task), None)
        if module is None or not isinstance(task[module], dict) or task[module].get("state") == "absent":
            continue
        args = task[module]
        source = str(task.get("loop", ""))
        for attribute in ATTRIBUTES:
            if attribute not in args:
                continue
            value = str(args[attribute])
            assert install in value or (value.startswith("{{ item.") and install in source), (task["name"], attribute)
            checked += 1
    assert checked >= (15 if role == "agent" else 6)


def test_the_proxy_accounts_come_from_the_install_entries() -> None:
    tasks = {
        task["name"]: task for task in _tasks(yaml.safe_load((ROOT / "roles/agent/tasks/converge.yml").read_text()))
    }
    for name, module in (
        ("Create the proxy user", "ansible.builtin.user"),
        ("Create the proxy group", "ansible.builtin.group"),
    ):
        for key, value in tasks[name][module].items():
            if key not in ("system", "groups", "create_home"):
                assert "hostmesh_agent_install." in str(value), (name, key)
