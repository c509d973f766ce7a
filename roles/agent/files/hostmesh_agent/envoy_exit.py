"""Why an Envoy process ended: it crashed, or it judged its config and rejected it.

Pure: the caller passes the exit status (negative: killed by that signal, as
``subprocess`` reports it) and, when it has them, the lines Envoy printed.

An Envoy that *rejects* a config exits 1 and says why in a ``[critical]`` line.
An Envoy that *crashes* dies on a signal (SIGABRT after a failed assert, SIGSEGV,
SIGKILL from the OOM killer) and prints ``assert failure`` or ``Caught Aborted``;
that is nearly always the host (inotify instances, memory, file descriptors),
not the config, and a user must not be sent to fix a config that is fine.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Iterable, Optional

CRASHED = "crashed"
REJECTED = "rejected"
OK = "ok"

# What Envoy prints when it aborts: its assert macro, and its fatal signal handler.
CRASH_MARKERS = ("assert failure", "Caught Aborted", "Caught Segmentation fault", "Caught Bus error")
# A shell reports a process killed by signal N as 128 + N.
_SHELL_SIGNAL_BASE = 128
_MAX_LINE = 400


def status_text(returncode: int) -> str:
    """``exit 1``, ``signal SIGABRT``: how the process ended, in words."""
    sig = killed_by(returncode)
    if sig is not None:
        return f"signal {signal_name(sig)}"
    return f"exit {returncode}"


def killed_by(returncode: int) -> Optional[int]:
    """The signal that ended the process, if one did."""
    if returncode < 0:
        return -returncode
    return None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def first_critical(lines: Iterable[str]) -> Optional[str]:
    """The first ``[critical]`` line, trimmed; None if there is none."""
    for line in lines:
        if "[critical]" in line:
            text = line.strip()
            return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."
    return None


@dataclass(frozen=True)
class EnvoyExit:
    """One ended Envoy, diagnosed."""

    kind: str  # CRASHED, REJECTED or OK
    returncode: int
    critical: Optional[str]
    hint: str

    @property
    def crashed(self) -> bool:
        return self.kind == CRASHED

    def summary(self, what: str) -> str:
        """One line for a user: what happened to ``what``, the first critical line, the hint."""
        if self.kind == OK:
            return f"{what}: ok (envoy --mode validate)"
        if self.kind == CRASHED:
            head = f"{what}: not judged: envoy crashed ({status_text(self.returncode)})"
        else:
            head = f"{what}: rejected by envoy --mode validate ({status_text(self.returncode)})"
        parts = [head]
        if self.critical:
            parts.append(f"first critical line: {self.critical}")
        if self.hint:
            parts.append(self.hint)
        return "; ".join(parts)


def diagnose(returncode: int, output: str = "") -> EnvoyExit:
    """Tell a crash from a rejected config, from the exit status and what Envoy printed."""
    lines = output.splitlines()
    critical = first_critical(lines)
    if returncode == 0:
        return EnvoyExit(OK, 0, critical, "")
    marked = any(marker in line for line in lines for marker in CRASH_MARKERS)
    if killed_by(returncode) is not None or marked or returncode > _SHELL_SIGNAL_BASE:
        return EnvoyExit(CRASHED, returncode, critical, crash_hint(output))
    return EnvoyExit(REJECTED, returncode, critical, "")


def crash_hint(output: str) -> str:
    """What to look at on the host for a crash, from what Envoy printed."""
    if "inotify" in output:
        return (
            "the host ran out of inotify instances for the proxy user: raise the sysctl "
            "fs.inotify.max_user_instances (see the troubleshooting guide)"
        )
    return (
        "the config was not at fault as far as Envoy got; an Envoy that aborts is usually short of "
        "a host resource (inotify instances: fs.inotify.max_user_instances, memory, open files)"
    )


def describe_exit(returncode: int) -> str:
    """What the agent logs for an Envoy that ended while it ran: the status, and for a
    signal what that means (``-6 (signal SIGABRT: crashed, ...)``)."""
    sig = killed_by(returncode)
    if sig is None:
        return str(returncode)
    if sig == signal.SIGABRT:
        meaning = "Envoy aborted (a failed assert: look for its [critical] line); often a host limit such as inotify instances"
    elif sig == signal.SIGKILL:
        meaning = "killed (the OOM killer or an operator)"
    elif sig == signal.SIGSEGV:
        meaning = "Envoy crashed (segmentation fault)"
    else:
        meaning = "killed by a signal"
    return f"{returncode} (signal {signal_name(sig)}: crashed, not a config rejection: {meaning})"
