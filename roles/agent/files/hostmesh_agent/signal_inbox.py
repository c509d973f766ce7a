"""The signals the Agent acts on: queued by their handlers, read by the main loop.

A handler only records the signal and, through ``signal.set_wakeup_fd``, cuts
the main loop's wait short; every decision is taken later, on the main thread.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from collections import deque
from typing import Any, Deque, Dict, List, Protocol, Tuple

# SIGCHLD only wakes the loop, so that an Envoy that exits is noticed at once.
AGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


class Inbox(Protocol):
    def open(self) -> None:
        """Start receiving (install the handlers)."""

    def close(self) -> None:
        """Stop receiving (put the previous handlers back)."""

    def wait(self, timeout: float) -> None:
        """Wait ``timeout`` seconds, or less if a signal arrives."""

    def take(self) -> List[int]:
        """The signals received since the last call, oldest first."""


class SignalInbox:
    """The real inbox: process signal handlers and a wake-up socket pair (main thread only)."""

    def __init__(self, signums: Tuple[int, ...] = AGENT_SIGNALS) -> None:
        self._signums = signums
        self._queue: Deque[int] = deque()
        self._previous: Dict[int, Any] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def open(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in self._signums:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._queue.append(signum)

    def wait(self, timeout: float) -> None:
        if select.select([self._wake_r], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)

    def take(self) -> List[int]:
        taken = []
        while self._queue:
            taken.append(self._queue.popleft())
        return taken
