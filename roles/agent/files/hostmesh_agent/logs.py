"""Log lines on stderr, with levels journald understands."""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping, Optional

# syslog priorities, so that journald records each line's level (SyslogLevelPrefix=).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return prefix + super().format(record)


def setup_logging(level: str, environ: Optional[Mapping[str, str]] = None) -> None:
    """Under systemd (JOURNAL_STREAM set) omit timestamps and prefix priorities."""
    environ = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
