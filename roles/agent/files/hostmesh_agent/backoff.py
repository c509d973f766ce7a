"""Crash-restart backoff: exponential delays, reset after a healthy period.

Pure: the caller passes the clock readings in, so tests need no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Decides how long to wait before restarting a crashed Envoy, and when to give up."""

    initial_s: float
    max_s: float
    multiplier: float
    healthy_reset_s: float
    max_consecutive: int  # 0 = never give up
    consecutive: int = 0
    _healthy_since: float = -1.0

    def healthy(self, now: float) -> None:
        """Envoy is serving; after healthy_reset_s of that, the crash count starts over."""
        if self._healthy_since < 0:
            self._healthy_since = now
        if self.consecutive and now - self._healthy_since >= self.healthy_reset_s:
            self.consecutive = 0

    def unhealthy(self) -> None:
        self._healthy_since = -1.0

    def crashed(self) -> float:
        """Record a crash and return the delay before the next start."""
        self._healthy_since = -1.0
        delay = min(self.max_s, self.initial_s * self.multiplier**self.consecutive)
        self.consecutive += 1
        return delay

    @property
    def exhausted(self) -> bool:
        """True once the crash loop has lasted past the configured bound."""
        return self.max_consecutive > 0 and self.consecutive > self.max_consecutive
