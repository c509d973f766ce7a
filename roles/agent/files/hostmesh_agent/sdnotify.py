"""systemd's notify protocol (sd_notify) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY=1 / WATCHDOG=1 / STATUS= / STOPPING=1; does nothing outside systemd."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.address: Optional[str] = environ.get("NOTIFY_SOCKET") or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the interval systemd asked for, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s: Optional[float] = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        )

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


class SystemdStatus:
    """What the agent tells systemd: READY=1 once, a STATUS= line per change, WATCHDOG=1
    pings while Envoy serves."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._ready_sent = False
        self._last_status = ""
        self._next_watchdog = 0.0

    def status(self, text: str) -> None:
        if self._last_status != text:
            self._last_status = text
            self.notifier.status(text)

    def ready(self, epoch: int) -> None:
        """After every passed readiness poll; the first one is what ``Type=notify`` waits for."""
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.send("READY=1", f"STATUS=ready: envoy epoch {epoch}")
        else:
            self.status(f"ready: envoy epoch {epoch}")

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping: draining connections")

    def next_watchdog(self, serving: bool) -> Optional[float]:
        """When the next ping is due; None when there is none to send (no watchdog asked
        for, or Envoy not serving: a past deadline would make the main loop spin)."""
        return self._next_watchdog if self.notifier.watchdog_interval_s and serving else None

    def watchdog(self, now: float, serving: bool) -> None:
        """Ping only while Envoy serves: a wedged Envoy then makes systemd restart the service."""
        interval = self.notifier.watchdog_interval_s
        if interval and now >= self._next_watchdog and serving:
            self.notifier.send("WATCHDOG=1")
            self._next_watchdog = now + interval
