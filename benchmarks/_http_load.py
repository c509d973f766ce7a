"""What the keep-alive HTTP load clients share: timed GETs on one connection, the summary.

Imported by mtls_load_client.py and paced_load_client.py, which run as scripts
(``python3 <client>.py``, this directory first on the path) in a network namespace,
sometimes as the proxy user: the standard library only, nothing from the checkout.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Callable, Dict, List

MAX_ERRORS = 10  # the first errors' texts kept for the summary, of every worker together


class Tally:
    """What every worker saw, merged under a lock: counts, request latencies, the first errors."""

    def __init__(self, *counts: str) -> None:
        self.lock = threading.Lock()
        self.latencies: List[float] = []
        self.counts: Dict[str, int] = dict.fromkeys(counts, 0)
        self.errors: List[str] = []

    def error(self, exc: Exception) -> None:
        """Keep ``exc``'s text, while fewer than ``MAX_ERRORS`` are kept."""
        with self.lock:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def add(self, latencies: List[float], **counts: int) -> None:
        """A worker's latencies and counts, once it is done."""
        with self.lock:
            self.latencies.extend(latencies)
            for name, n in counts.items():
                self.counts[name] += n

    def print_summary(self, seconds: float, digits: int) -> None:
        """The JSON summary line on stdout: counts, errors, seconds, latencies in ms rounded to ``digits``."""
        result = {**self.counts, "errors": self.errors, "seconds": seconds,
                  "latencies_ms": [round(x * 1000, digits) for x in self.latencies]}  # fmt: skip
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")


class Worker:
    """One worker's keep-alive connection: timed ``GET /bench/<i>``s, a new connection after a failure."""

    def __init__(self, connect: Callable[[], http.client.HTTPConnection], tally: Tally) -> None:
        self.connect = connect
        self.conn = connect()
        self.tally = tally
        self.latencies: List[float] = []
        self.ok = self.failed = 0

    def get(self, i: int) -> None:
        """One request, timed from its first byte sent to its response's last byte read when it answers 200."""
        start = time.perf_counter()
        try:
            self.conn.request("GET", f"/bench/{i}", headers={"Host": "web"})
            resp = self.conn.getresponse()
            resp.read()
            if resp.status == 200:
                self.ok += 1
                self.latencies.append(time.perf_counter() - start)
            else:
                self.failed += 1
        except (OSError, http.client.HTTPException) as exc:
            self.failed += 1
            self.conn.close()
            self.conn = self.connect()
            self.tally.error(exc)

    def finish(self, **counts: int) -> None:
        """Close the connection; hand the tally what this worker saw (``counts``: any others of its own)."""
        self.conn.close()
        self.tally.add(self.latencies, ok=self.ok, failed=self.failed, **counts)


def run_threads(threads: List[threading.Thread]) -> None:
    """Start every thread, then wait for them all."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()
