"""Why a host booted degraded: its failed units and each one's cause, from systemctl's output.

A degraded boot fails `create` (and a reboot): a unit that failed on a
sandbox host is a broken test machine, and the tests on it would fail
later for a reason no one can see. Pure parsing; sandbox.py runs the
commands (commands.failed_units, commands.unit_status).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# `systemctl status` starts each unit with a state mark: a bullet, a
# multiplication sign (failed, systemd 250+), a circle or a reload arrow.
_UNIT_HEADER = re.compile("^[\u25cf\u00d7\u25cb\u21bb*] (\\S+)")
_RESULT = re.compile(r"Active: \S+ \(Result: ([^)]+)\)")
# "(code=exited, status=219/CGROUP)", "(code=killed, signal=KILL)"
_PROCESS_END = re.compile(r"\(code=(\w+), (status|signal)=([^)]+)\)")
# "Process: 68 ExecStartPre=/bin/sh -c exit 3 (code=exited, status=3)"
_EXEC_STEP = re.compile(r"Process: \d+ (Exec\w+)=")


def failed_unit_names(list_output: str) -> list[str]:
    """Unit names from `systemctl list-units --failed --plain --no-legend`."""
    names = []
    for line in list_output.splitlines():
        words = line.replace("\u25cf", " ").split()
        if words and "." in words[0]:
            names.append(words[0])
    return names


def unit_causes(status_output: str) -> dict[str, str]:
    """Unit -> its result and how its processes ended, from `systemctl status UNIT...`.

    E.g. ``"result exit-code, ExecStart status=219/CGROUP"``; the main PID's
    end, when an Exec line already said it, is not repeated.
    """
    causes: dict[str, list[str]] = {}
    ends: dict[str, set[str]] = {}
    unit = None
    for line in status_output.splitlines():
        header = _UNIT_HEADER.match(line)
        if header:
            unit = header.group(1)
            causes[unit], ends[unit] = [], set()
            continue
        if unit is None:
            continue
        result = _RESULT.search(line)
        if result:
            causes[unit].append(f"result {result.group(1)}")
        end = _PROCESS_END.search(line)
        if not end:
            continue
        fragment = f"{end.group(2)}={end.group(3)}"
        step = _EXEC_STEP.search(line)
        if step:
            causes[unit].append(f"{step.group(1)} {fragment}")
        elif fragment not in ends[unit]:
            causes[unit].append(fragment)
        ends[unit].add(fragment)
    return {name: ", ".join(parts) for name, parts in causes.items()}


def degraded_message(host: str, failed: Iterable[str], causes: Mapping[str, str], journal: str = "") -> str:
    """The error text of a degraded boot: every failed unit with its cause, then the journal's lines."""
    lines = [f"{host}: booted degraded; failed units:"]
    for unit in failed:
        lines.append(f"  {unit}: {causes.get(unit) or 'cause not reported by systemctl status'}")
    if journal.strip():
        lines += ["journal of the failed units:", journal.rstrip()]
    return "\n".join(lines)
