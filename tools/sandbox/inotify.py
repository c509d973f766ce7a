"""Enough inotify instances for every sandbox host, raised while sandboxes live.

Every sandbox host shares the machine's kernel, and inotify's limits count
per user across the whole machine: ``fs.inotify.max_user_instances`` (128 by
default) is shared by the root of every guest, and by every guest's proxy
user. With too few, Envoy aborts at start (``assert failure: inotify_fd_ >=
0``) and guests' units fail. So before booting hosts a sandbox works out
what they will need, compares it with what is free now (the limit minus
what each user holds), raises the limits if needed and records the values
it found; when the last sandbox that needed more is destroyed, they are put
back.

The record is machine-wide (``/run/hm-sbx-inotify.json``, next to the
subnet lock), since the limits are: sandboxes of every checkout on the
machine share them. Each sandbox holds a lease in it, named by its
directory; a lease whose sandbox directory has no state and whose creating
process is gone (a crashed run whose files were removed) counts no more.
The record lives on tmpfs on purpose: a machine reboot resets the sysctls
and forgets it together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

INSTANCES = "fs.inotify.max_user_instances"
WATCHES = "fs.inotify.max_user_watches"
SYSCTLS = (INSTANCES, WATCHES)

# Per host, counted on booted bookworm hosts (links to anon_inode:inotify
# under /proc/PID/fd, grouped by the process's effective uid, watches from
# the "inotify wd:" lines of /proc/PID/fdinfo/FD):
# - root: 6 instances after boot (PID 1: 5, logind: 1), 9 while an SSH
#   login is open (its user manager: 3), which is how Ansible uses a host;
#   about 30 watches.
# - the proxy user: 6 instances and 6 watches per running Envoy (file-based
#   xDS watches), and twice that during a hot restart, while the old and the
#   new epoch both run (the drain takes up to a minute).
# A guest's dbus-daemon (1 per host) runs as the guest's messagebus user and
# stays far below any limit.
ROOT_UID = 0
PROXY_UID = 1337
ROOT_INSTANCES_PER_HOST = 9
ROOT_WATCHES_PER_HOST = 40
PROXY_INSTANCES_PER_HOST = 12
PROXY_WATCHES_PER_HOST = 12
# Left free above the need, for whatever else starts meanwhile.
SPARE = {INSTANCES: 32, WATCHES: 1024}

RECORD = Path("/run/hm-sbx-inotify.json")
LOCK = Path("/run/hm-sbx-inotify.lock")
PROC = Path("/proc")
PROC_SYS = Path("/proc/sys")


class InotifyLimitError(RuntimeError):
    """A limit is too low for the hosts asked for and cannot be raised."""


@dataclass(frozen=True)
class Need:
    """Instances and watches per uid, what some hosts use or will use."""

    instances: Mapping[int, int] = field(default_factory=dict)
    watches: Mapping[int, int] = field(default_factory=dict)

    def of(self, sysctl: str) -> Mapping[int, int]:
        return self.instances if sysctl == INSTANCES else self.watches

    def to_json(self) -> dict:
        return {
            "instances": {str(k): v for k, v in self.instances.items()},
            "watches": {str(k): v for k, v in self.watches.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Need:
        return cls(
            instances={int(k): int(v) for k, v in data.get("instances", {}).items()},
            watches={int(k): int(v) for k, v in data.get("watches", {}).items()},
        )


def need_for_hosts(hosts: int) -> Need:
    """What `hosts` sandbox hosts use at most: root's logins and a hot-restarting Envoy each."""
    return Need(
        instances={ROOT_UID: hosts * ROOT_INSTANCES_PER_HOST, PROXY_UID: hosts * PROXY_INSTANCES_PER_HOST},
        watches={ROOT_UID: hosts * ROOT_WATCHES_PER_HOST, PROXY_UID: hosts * PROXY_WATCHES_PER_HOST},
    )


def required(sysctl: str, in_use: Need, needs: Iterable[Need]) -> tuple[int, int]:
    """(the limit these needs require, the uid that requires the most) for one sysctl.

    Each uid needs what it holds now plus every live sandbox's need; a
    sandbox already running counts twice (in use and in its need), which
    errs on the side of a higher limit: a higher limit costs nothing, one
    too low aborts Envoy.
    """
    totals: Counter[int] = Counter(in_use.of(sysctl))
    for need in needs:
        totals.update(need.of(sysctl))
    if not totals:
        return SPARE[sysctl], ROOT_UID
    uid, most = max(totals.items(), key=lambda item: (item[1], -item[0]))
    return most + SPARE[sysctl], uid


def explain(sysctl: str, in_use: Need, needs: Iterable[Need]) -> str:
    """Where a required value comes from, per uid, for messages."""
    totals: Counter[int] = Counter()
    for need in needs:
        totals.update(need.of(sysctl))
    uids = sorted(set(totals) | set(in_use.of(sysctl)))
    parts = [f"uid {uid}: {in_use.of(sysctl).get(uid, 0)} in use + {totals.get(uid, 0)} needed" for uid in uids]
    return "; ".join(parts) + f"; plus {SPARE[sysctl]} spare"


# --- the record ------------------------------------------------------------


def empty_record() -> dict:
    return {"original": {}, "set": {}, "leases": {}}


def lease_is_live(lease: Mapping, sandbox_dir: str, alive: Callable[[int], bool]) -> bool:
    """A lease counts while its sandbox has state, or while the process creating it runs."""
    return (Path(sandbox_dir) / "state.json").exists() or alive(int(lease.get("pid", 0)))


def live_leases(record: Mapping, alive: Callable[[int], bool]) -> dict[str, dict]:
    return {d: lease for d, lease in record.get("leases", {}).items() if lease_is_live(lease, d, alive)}


def plan_raise(limits: Mapping[str, int], in_use: Need, needs: list[Need]) -> dict[str, int]:
    """The sysctls to raise, to what; empty when every need fits the limits as they are."""
    raise_to = {}
    for sysctl in SYSCTLS:
        value, _uid = required(sysctl, in_use, needs)
        if value > limits[sysctl]:
            raise_to[sysctl] = value
    return raise_to


def plan_restore(record: Mapping, limits: Mapping[str, int], in_use: Need, needs: list[Need]) -> dict[str, int]:
    """The sysctls to lower, to what, once some leases are gone.

    Back to the original value when what is left fits in it, otherwise down
    to what is left needs; a value someone else changed since we set it is
    theirs and is left alone.
    """
    lower_to = {}
    for sysctl, original in record.get("original", {}).items():
        current = limits.get(sysctl)
        if current is None or current != record.get("set", {}).get(sysctl):
            continue
        target = max(original, required(sysctl, in_use, needs)[0]) if needs else original
        if target < current:
            lower_to[sysctl] = target
    return lower_to


# --- the machine -----------------------------------------------------------


class ProcSysctl:
    """Reads and writes sysctls under /proc/sys (the one place they are touched)."""

    def __init__(self, root: Path = PROC_SYS) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / name.replace(".", "/")

    def read(self, name: str) -> int:
        return int(self._path(name).read_text().split()[0])

    def write(self, name: str, value: int) -> None:
        self._path(name).write_text(f"{value}\n")


def usage(proc: Path = PROC) -> Need:
    """Inotify instances and watches held now, per effective uid, across the machine."""
    instances: Counter[int] = Counter()
    watches: Counter[int] = Counter()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid_dir = proc / entry
        try:
            uid = _effective_uid((pid_dir / "status").read_text())
            fds = os.listdir(pid_dir / "fd")
        except (OSError, ValueError):
            continue
        for fd in fds:
            try:
                if os.readlink(pid_dir / "fd" / fd) != "anon_inode:inotify":
                    continue
                info = (pid_dir / "fdinfo" / fd).read_text()
            except OSError:
                continue
            instances[uid] += 1
            watches[uid] += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
    return Need(instances=dict(instances), watches=dict(watches))


def _effective_uid(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise ValueError("no Uid line")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Budget:
    """The machine's inotify limits as sandboxes lease them: raise on create, restore on destroy."""

    def __init__(
        self,
        record: Path = RECORD,
        lock: Path = LOCK,
        sysctl: Optional[ProcSysctl] = None,
        read_usage: Callable[[], Need] = usage,
        alive: Callable[[int], bool] = _pid_alive,
        log: Callable[[str], object] = print,
    ) -> None:
        self.record_path = record
        self.lock_path = lock
        self.sysctl = sysctl or ProcSysctl()
        self.read_usage = read_usage
        self.alive = alive
        self.log = log

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The record, under the machine-wide lock; written back when the block ends without error."""
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = json.loads(self.record_path.read_text())
            except (OSError, ValueError):
                record = empty_record()
            yield record
            if record["leases"] or record["original"]:
                tmp = self.record_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                tmp.replace(self.record_path)
            else:
                self.record_path.unlink(missing_ok=True)

    def limits(self) -> dict[str, int]:
        return {name: self.sysctl.read(name) for name in SYSCTLS}

    def acquire(self, sandbox_dir: Path, hosts: int) -> dict[str, int]:
        """Lease what `hosts` hosts need, raising the limits first if they are short.

        Returns the sysctls raised (name -> new value). Raises
        InotifyLimitError, with nothing changed, when a limit is short and
        cannot be written.
        """
        need = need_for_hosts(hosts)
        with self._locked() as record:
            leases = live_leases(record, self.alive)
            leases.pop(str(sandbox_dir), None)
            needs = [Need.from_json(lease) for lease in leases.values()] + [need]
            limits = self.limits()
            in_use = self.read_usage()
            raise_to = plan_raise(limits, in_use, needs)
            written: list[str] = []
            for name, value in raise_to.items():
                try:
                    self.sysctl.write(name, value)
                except OSError as exc:
                    for done in written:
                        with contextlib.suppress(OSError):
                            self.sysctl.write(done, limits[done])
                    raise InotifyLimitError(
                        f"{name} is {limits[name]}, but {hosts} sandbox host(s) need {value} "
                        f"({explain(name, in_use, needs)}), and the sandbox cannot raise it: {exc}. "
                        f"Raise it as root first (sysctl -w {name}={value}) or boot fewer hosts"
                    ) from exc
                written.append(name)
                record["original"].setdefault(name, limits[name])
                record["set"][name] = value
                self.log(
                    f"{name}: raised from {limits[name]} to {value} for {hosts} host(s) ({explain(name, in_use, needs)})"
                )
            leases[str(sandbox_dir)] = {"pid": os.getpid(), "hosts": hosts, **need.to_json()}
            record["leases"] = leases
        return raise_to

    def release(self, sandbox_dirs: Iterable[Path] = ()) -> dict[str, int]:
        """Drop these sandboxes' leases (and stale ones); lower the limits as far as what is left allows.

        Returns the sysctls lowered (name -> value now).
        """
        with self._locked() as record:
            leases = live_leases(record, self.alive)
            for sandbox_dir in sandbox_dirs:
                leases.pop(str(sandbox_dir), None)
            record["leases"] = leases
            if not record["original"]:
                return {}
            limits = self.limits()
            # A value someone else changed since we set it is theirs: no longer ours to put back.
            for name in [n for n in record["original"] if limits.get(n) != record["set"].get(n)]:
                self.log(f"{name}: changed by someone else to {limits.get(name)}; left as it is")
                del record["original"][name]
                record["set"].pop(name, None)
            needs = [Need.from_json(lease) for lease in leases.values()]
            lower_to = plan_restore(record, limits, self.read_usage() if needs else Need(), needs)
            for name, value in lower_to.items():
                try:
                    self.sysctl.write(name, value)
                except OSError as exc:
                    self.log(f"{name}: could not put back {value}: {exc}")
                    continue
                self.log(f"{name}: back to {value} (was {limits[name]})")
                if value == record["original"][name]:
                    del record["original"][name]
                    record["set"].pop(name, None)
                else:
                    record["set"][name] = value
        return lower_to
