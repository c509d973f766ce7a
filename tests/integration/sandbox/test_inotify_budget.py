"""The inotify budget's arithmetic and its record, on fake sysctls and fake usage (no root)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tools.sandbox import inotify
from tools.sandbox.inotify import INSTANCES, WATCHES, Budget, Need


class FakeSysctl:
    """Sysctls as a dict; names listed in `read_only` refuse writes like a read-only /proc/sys."""

    def __init__(self, values: dict[str, int], read_only: tuple[str, ...] = ()) -> None:
        self.values = dict(values)
        self.read_only = read_only
        self.writes: list[tuple[str, int]] = []

    def read(self, name: str) -> int:
        return self.values[name]

    def write(self, name: str, value: int) -> None:
        if name in self.read_only:
            raise OSError(errno.EROFS, "Read-only file system", f"/proc/sys/{name.replace('.', '/')}")
        self.writes.append((name, value))
        self.values[name] = value


NOTHING_IN_USE = Need()


def make_budget(tmp_path: Path, sysctl: FakeSysctl, in_use: Need = NOTHING_IN_USE, alive=lambda pid: True) -> Budget:
    return Budget(
        record=tmp_path / "record.json",
        lock=tmp_path / "record.lock",
        sysctl=sysctl,
        read_usage=lambda: in_use,
        alive=alive,
        log=lambda _m: None,
    )


def sandbox_dir(tmp_path: Path, name: str, state: bool = True) -> Path:
    path = tmp_path / "run" / name
    path.mkdir(parents=True, exist_ok=True)
    if state:
        (path / "state.json").write_text("{}")
    return path


DEFAULTS = {INSTANCES: 128, WATCHES: 192530}


def test_need_counts_root_logins_and_a_hot_restarting_envoy_per_host() -> None:
    need = inotify.need_for_hosts(32)
    assert need.instances == {0: 32 * 9, 1337: 32 * 12}
    assert inotify.PROXY_INSTANCES_PER_HOST == 2 * 6, "an Envoy's 6 instances, doubled during a hot restart"
    assert need.watches[0] == 32 * inotify.ROOT_WATCHES_PER_HOST


def test_required_is_the_busiest_uid_plus_every_need_plus_spare() -> None:
    in_use = Need(instances={0: 20, 1337: 3, 100: 2})
    needs = [inotify.need_for_hosts(32)]
    value, uid = inotify.required(INSTANCES, in_use, needs)
    assert (value, uid) == (3 + 384 + inotify.SPARE[INSTANCES], 1337)
    # Two sandboxes add up.
    value, uid = inotify.required(INSTANCES, in_use, [inotify.need_for_hosts(8), inotify.need_for_hosts(8)])
    assert (value, uid) == (3 + 192 + 32, 1337)
    assert "uid 0: 20 in use + 144 needed" in inotify.explain(INSTANCES, in_use, [inotify.need_for_hosts(16)])


def test_a_need_that_fits_the_free_budget_raises_nothing() -> None:
    in_use = Need(instances={0: 10})
    assert inotify.plan_raise(DEFAULTS, in_use, [inotify.need_for_hosts(2)]) == {}
    # 8 hosts: 96 for the proxy user + 32 spare = 128 fits exactly; 9 do not.
    assert inotify.plan_raise(DEFAULTS, Need(), [inotify.need_for_hosts(8)]) == {}
    assert inotify.plan_raise(DEFAULTS, Need(), [inotify.need_for_hosts(9)]) == {INSTANCES: 9 * 12 + 32}


def test_watches_are_raised_only_when_short() -> None:
    limits = {INSTANCES: 100000, WATCHES: 2000}
    plan = inotify.plan_raise(limits, Need(watches={0: 500}), [inotify.need_for_hosts(32)])
    assert plan == {WATCHES: 500 + 32 * inotify.ROOT_WATCHES_PER_HOST + inotify.SPARE[WATCHES]}


def test_acquire_raises_records_the_original_and_release_restores(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    budget = make_budget(tmp_path, sysctl, in_use=Need(instances={0: 18}))
    sb = sandbox_dir(tmp_path, "big")

    raised = budget.acquire(sb, 32)

    assert raised == {INSTANCES: 384 + 32}
    assert sysctl.values[INSTANCES] == 416
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["original"] == {INSTANCES: 128}
    assert record["set"] == {INSTANCES: 416}
    assert record["leases"][str(sb)]["hosts"] == 32
    assert record["leases"][str(sb)]["instances"] == {"0": 288, "1337": 384}

    assert budget.release([sb]) == {INSTANCES: 128}
    assert sysctl.values[INSTANCES] == 128
    assert not (tmp_path / "record.json").exists(), "nothing left to remember"


def test_the_limit_stays_up_until_the_last_sandbox_that_needs_it_goes(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    budget = make_budget(tmp_path, sysctl)
    first, second = sandbox_dir(tmp_path, "first"), sandbox_dir(tmp_path, "second")
    budget.acquire(first, 16)
    assert sysctl.values[INSTANCES] == 16 * 12 + 32
    # The second counts the first's need too, and keeps the first original.
    budget.acquire(second, 16)
    assert sysctl.values[INSTANCES] == 32 * 12 + 32
    assert json.loads((tmp_path / "record.json").read_text())["original"] == {INSTANCES: 128}

    assert budget.release([first]) == {INSTANCES: 16 * 12 + 32}, "down to what the second needs"
    assert budget.release([second]) == {INSTANCES: 128}
    assert sysctl.writes[-1] == (INSTANCES, 128)


def test_a_small_sandbox_alongside_needs_no_raise_and_holds_no_raise(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    budget = make_budget(tmp_path, sysctl)
    small, big = sandbox_dir(tmp_path, "small"), sandbox_dir(tmp_path, "big")
    assert budget.acquire(small, 2) == {}
    budget.acquire(big, 20)
    # With only the small one left, the original fits again.
    assert budget.release([big]) == {INSTANCES: 128}
    assert budget.release([small]) == {}
    assert sysctl.values[INSTANCES] == 128


def test_a_crashed_run_whose_files_are_gone_no_longer_holds_the_limit(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    crashed = sandbox_dir(tmp_path, "crashed", state=False)
    running = {"pid": 4242}
    budget = make_budget(tmp_path, sysctl, alive=lambda pid: pid == running["pid"])
    # Its creating process (this one, for the budget) is alive while it creates.
    budget.acquire(crashed, 20)
    record = json.loads((tmp_path / "record.json").read_text())
    record["leases"][str(crashed)]["pid"] = 4242
    (tmp_path / "record.json").write_text(json.dumps(record))
    assert budget.release() == {}, "its creator still runs: still a live lease"

    running["pid"] = 0  # the run crashed: no process, no state file
    assert budget.release() == {INSTANCES: 128}, "destroy --all puts the original back"


def test_a_lease_with_state_outlives_its_creating_process(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    budget = make_budget(tmp_path, sysctl, alive=lambda pid: False)
    sb = sandbox_dir(tmp_path, "cli")
    budget.acquire(sb, 20)
    assert budget.release() == {}, "the CLI that created it has exited, the hosts live on"
    assert budget.release([sb]) == {INSTANCES: 128}


def test_a_value_someone_else_changed_is_left_alone(tmp_path) -> None:
    sysctl = FakeSysctl(DEFAULTS)
    budget = make_budget(tmp_path, sysctl)
    sb = sandbox_dir(tmp_path, "sb")
    budget.acquire(sb, 20)
    sysctl.values[INSTANCES] = 8192  # an admin's own choice, meanwhile
    assert budget.release([sb]) == {}
    assert sysctl.values[INSTANCES] == 8192
    assert not (tmp_path / "record.json").exists()


def test_a_read_only_sysctl_refuses_with_the_name_and_both_values_and_changes_nothing(tmp_path) -> None:
    sysctl = FakeSysctl({INSTANCES: 128, WATCHES: 100}, read_only=(WATCHES,))
    budget = make_budget(tmp_path, sysctl, in_use=Need(instances={0: 6}, watches={0: 30}))
    sb = sandbox_dir(tmp_path, "ro")

    with pytest.raises(inotify.InotifyLimitError) as caught:
        budget.acquire(sb, 32)

    message = str(caught.value)
    needed_watches = 30 + 32 * inotify.ROOT_WATCHES_PER_HOST + inotify.SPARE[WATCHES]
    assert f"{WATCHES} is 100, but 32 sandbox host(s) need {needed_watches}" in message
    assert "Read-only file system" in message
    assert f"sysctl -w {WATCHES}={needed_watches}" in message
    # The instances limit, raised first, was put back; no lease, no record.
    assert sysctl.values == {INSTANCES: 128, WATCHES: 100}
    assert not (tmp_path / "record.json").exists()


def test_usage_counts_inotify_fds_per_effective_uid(tmp_path) -> None:
    """A fake /proc: two processes of uid 0 and 1337, one fd each that is inotify."""
    for pid, uid, watches in (("10", 0, 3), ("11", 1337, 1)):
        proc = tmp_path / pid
        (proc / "fd").mkdir(parents=True)
        (proc / "fdinfo").mkdir()
        (proc / "status").write_text(f"Name:\tx\nUid:\t1000\t{uid}\t{uid}\t{uid}\n")
        (proc / "fd" / "3").symlink_to("anon_inode:inotify")
        (proc / "fd" / "4").symlink_to("/dev/null")
        (proc / "fdinfo" / "3").write_text("pos:\t0\n" + "inotify wd:1 ino:2 sdev:3 mask:4\n" * watches)
    (tmp_path / "self").mkdir()
    assert inotify.usage(tmp_path) == Need(instances={0: 1, 1337: 1}, watches={0: 3, 1337: 1})
