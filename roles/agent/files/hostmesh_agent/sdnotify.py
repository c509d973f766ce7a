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
