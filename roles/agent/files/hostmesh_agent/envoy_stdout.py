"""Envoy's standard output, read by the agent: access-log lines into telemetry and out.

Each Envoy epoch writes its access-log lines to a pipe the agent holds (Envoy's own log
goes to standard error). One reader thread per epoch does nothing but read the pipe,
cut it into lines and put them in a bounded queue, so Envoy never waits for the agent:
when the queue is full a line is dropped and counted. One worker thread takes the
lines: each access-log line is counted into the Istio metrics (telemetry.py), refused
calls are logged (at most ``DENIALS_PER_WINDOW`` a ``DENIAL_WINDOW_S``), and the sampled
lines are forwarded to ``access_log.destination``. A line that is not one of ours is
passed through to the agent's standard output, where Envoy's output went before, and
counted; nothing a line holds can stop the reader.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional

from hostmesh_agent.access_log import MAX_LINE_BYTES, LogEntry, parse_line
from hostmesh_agent.access_log_output import Output, Sampler, StreamOutput, open_output
from hostmesh_agent.config import Config
from hostmesh_agent.policy import is_denial
from hostmesh_agent.prometheus_text import family
from hostmesh_agent.telemetry import Telemetry

log = logging.getLogger(__name__)

QUEUE_LINES = 4096
DENIALS_PER_WINDOW = 10
DENIAL_WINDOW_S = 10.0
_READ_BYTES = 65536


class RateLimit:
    """At most ``limit`` events a ``window_s``; ``allow()`` also says how many were held back
    since the last one it allowed."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._window_start = float("-inf")
        self._used = 0
        self._held_back = 0

    def allow(self) -> Optional[int]:
        """None when this event is held back, else the number held back before it."""
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._window_start, self._used = now, 0
        if self._used >= self.limit:
            self._held_back += 1
            return None
        self._used += 1
        held, self._held_back = self._held_back, 0
        return held


def describe_denial(e: LogEntry) -> str:
    who = e.peer or "a caller without a mesh certificate"
    what = f"{e.method} {e.path}" if e.protocol == "http" else "a tcp connection"
    source = f" from {e.downstream}" if e.downstream else ""
    return f"policy refused {who}{source}: {what} to {e.direction} service {e.service!r} ({e.details})"


@dataclass
class Counts:
    lines: int = 0  # read from Envoy
    unparsed: int = 0  # not access-log lines of ours (passed through), or cut at MAX_LINE_BYTES
    dropped: int = 0  # the queue was full
    forwarded: int = 0
    write_errors: int = 0


class EnvoyStdout:
    """The pipeline from every epoch's standard output to telemetry and the access-log output."""

    def __init__(
        self,
        cfg: Config,
        telemetry: Telemetry,
        journal: BinaryIO,
        clock: Callable[[], float],
        queue_lines: int = QUEUE_LINES,
    ) -> None:
        """``journal``: the agent's standard output; ``clock``: monotonic seconds."""
        self.telemetry = telemetry
        self.counts = Counts()
        self._journal_stream = journal
        self._journal = StreamOutput(journal)
        self._clock = clock
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(maxsize=queue_lines)
        self._lock = threading.Lock()  # the counts, written by every reader and the worker
        self._wanted = cfg  # swapped whole by configure(); the worker applies it
        self._applied: Optional[Config] = None
        self._output: Optional[Output] = None
        self._sampler = Sampler(cfg.access_log.sampling)
        self._denials = RateLimit(DENIALS_PER_WINDOW, DENIAL_WINDOW_S, clock)
        self._readers: Dict[int, threading.Thread] = {}
        self._worker = threading.Thread(target=self._work, name="envoy-stdout", daemon=True)

    # --- the edges the agent wires ---------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Let the worker finish what is queued, then end it."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._worker.join(timeout)

    def configure(self, cfg: Config) -> None:
        """A reloaded config; the worker takes it on before its next line."""
        self.telemetry.configure(cfg)
        self._wanted = cfg

    def attach(self, epoch: int, stream: BinaryIO) -> None:
        """Read a new Envoy's standard output until it closes (the process ended)."""
        reader = threading.Thread(target=self._read, args=(stream,), name=f"envoy-stdout-{epoch}", daemon=True)
        self._readers = {e: t for e, t in self._readers.items() if t.is_alive()}
        self._readers[epoch] = reader
        reader.start()

    # --- reader threads: read, cut, queue; never wait --------------------------------

    def _read(self, stream: BinaryIO) -> None:
        fd = stream.fileno()
        pending = b""
        skipping = False  # the rest of a line already cut at MAX_LINE_BYTES
        try:
            while True:
                chunk = os.read(fd, _READ_BYTES)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not skipping:
                        self._offer(line[:MAX_LINE_BYTES])
                    skipping = False
                if len(pending) > MAX_LINE_BYTES:
                    if not skipping:
                        self._offer(pending[:MAX_LINE_BYTES])
                    pending, skipping = b"", True
            if pending and not skipping:
                self._offer(pending)
        except OSError as exc:
            log.warning("reading envoy's standard output failed: %s", exc)
        finally:
            stream.close()

    def _offer(self, line: bytes) -> None:
        try:
            self._queue.put_nowait(line)
            dropped = 0
        except queue.Full:
            dropped = 1
        with self._lock:
            self.counts.lines += 1
            self.counts.dropped += dropped

    # --- the worker ------------------------------------------------------------------

    def _work(self) -> None:
        failed = False
        while True:
            line = self._queue.get()
            if line is None:
                break
            try:
                self.handle(line)
            except Exception:  # a bug must not end the worker: the queue would fill and drop every line
                if not failed:
                    log.exception("cannot handle an access-log line (first such error; others not logged)")
                failed = True
        if self._output is not None:
            self._output.close()

    def handle(self, line: bytes) -> None:
        """One line, on the worker thread (the unit tests call it directly)."""
        cfg = self._wanted
        if self._applied is not cfg:
            self._apply(cfg)
        entry = parse_line(line)
        if entry is None:
            self._count("unparsed")
            self._write(self._journal, line)
            return
        if cfg.telemetry.enabled:
            self.telemetry.observe(entry)
        if not entry.is_end:
            return
        if is_denial(entry.details):
            held = self._denials.allow()
            if held is not None:
                more = f" ({held} more refusals not logged)" if held else ""
                log.warning("%s%s", describe_denial(entry), more)
        forward = cfg.access_log.enabled and self._output is not None and self._sampler.take()
        if forward and self._write(self._output, line):
            self._count("forwarded")

    def _apply(self, cfg: Config) -> None:
        old = self._applied.access_log if self._applied else None
        new = cfg.access_log
        if old is None or old.destination != new.destination:
            if self._output is not None:
                self._output.close()
            self._output = open_output(new, self._journal_stream, self._clock)
        if old is None or old.sampling != new.sampling:
            self._sampler = Sampler(new.sampling)
        self._applied = cfg

    def _write(self, output: Output, line: bytes) -> bool:
        try:
            output.write(line)
            return True
        except OSError as exc:
            with self._lock:
                self.counts.write_errors += 1
                first = self.counts.write_errors == 1
            if first:
                log.error("cannot write access log lines: %s (counted in %s)", exc, _METRIC_NAMES["write_errors"])
            return False

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.counts, what, getattr(self.counts, what) + 1)

    # --- metrics ---------------------------------------------------------------------

    def render_metrics(self) -> str:
        with self._lock:
            counts = Counts(**vars(self.counts))
        lines: List[str] = []
        for what, (name, help_text) in _METRICS.items():
            lines += family(name, "counter", help_text, [((), getattr(counts, what))])
        return "\n".join(lines) + "\n"


_METRICS = {
    "lines": ("hostmesh_agent_access_log_lines_total", "Lines read from Envoy's standard output."),
    "unparsed": (
        "hostmesh_agent_access_log_unparsed_lines_total",
        "Lines that were not access-log lines (passed through to the agent's standard output).",
    ),
    "dropped": (
        "hostmesh_agent_access_log_dropped_lines_total",
        "Lines dropped because the agent fell behind (its queue was full).",
    ),
    "forwarded": (
        "hostmesh_agent_access_log_forwarded_lines_total",
        "Access-log lines written to access_log.destination (after sampling).",
    ),
    "write_errors": (
        "hostmesh_agent_access_log_write_errors_total",
        "Access-log lines that could not be written to access_log.destination.",
    ),
}
_METRIC_NAMES = {what: name for what, (name, _help) in _METRICS.items()}
