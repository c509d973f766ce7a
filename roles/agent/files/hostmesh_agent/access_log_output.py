"""Where forwarded access-log lines go, and which ones: ``access_log.destination`` and
``access_log.sampling``.

"journal" is the agent's standard output (systemd sends it to the journal; the agent's
own log is on standard error). A file path is opened for appending and reopened when
it is rotated away (renamed or removed, as logrotate does without ``copytruncate``),
looked at once a second at most.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Callable, Optional, Protocol

from hostmesh_agent.config import JOURNAL, AccessLogConfig

ROTATION_CHECK_S = 1.0
FILE_MODE = 0o640


class Output(Protocol):
    def write(self, line: bytes) -> None:
        """Write one line (without its newline); OSError when it cannot."""

    def close(self) -> None:
        """Flush and let go of the destination."""


class StreamOutput:
    """Lines to a stream the agent was given: its standard output."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, line: bytes) -> None:
        self._stream.write(line + b"\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class FileOutput:
    """Lines appended to a file, reopened at its path once the file there is another."""

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._fd: Optional[int] = None
        self._checked_at = float("-inf")

    def write(self, line: bytes) -> None:
        os.write(self._current_fd(), line + b"\n")

    def _current_fd(self) -> int:
        now = self._clock()
        if self._fd is not None and now - self._checked_at < ROTATION_CHECK_S:
            return self._fd
        self._checked_at = now
        if self._fd is not None and self._still_at_path(self._fd):
            return self._fd
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd

    def _still_at_path(self, fd: int) -> bool:
        try:
            st, mine = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_output(cfg: AccessLogConfig, journal: BinaryIO, clock: Callable[[], float]) -> Output:
    return StreamOutput(journal) if cfg.destination == JOURNAL else FileOutput(cfg.destination, clock)


class Sampler:
    """Forwards ``rate`` of the lines offered, evenly spread (0.25: one line in four), with
    no randomness: the share is exact, and a test can count on it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._credit = 0.0

    def take(self) -> bool:
        self._credit += self.rate
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False
