"""The pipeline from Envoy's standard output: real pipes and threads, no Envoy.

A test writes what Envoy would into a pipe's write end, as Envoy's flush thread does
(several lines per write, lines cut across writes), and reads what came out: the
telemetry, the forwarded lines, the agent's own log and the counts.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from test_telemetry import CLIENT_A, http_line, line, sample

from hostmesh_agent.access_log import MAX_LINE_BYTES, TCP_CONNECTED
from hostmesh_agent.access_log_output import FileOutput, Sampler
from hostmesh_agent.config import parse_config
from hostmesh_agent.envoy_stdout import EnvoyStdout, RateLimit
from hostmesh_agent.telemetry import Telemetry

DENIED = "rbac_access_denied_matched_policy[none]"


class Journal(io.BytesIO):
    """The agent's standard output, thread-safe enough for one writer."""

    def lines(self) -> List[bytes]:
        return [x for x in self.getvalue().split(b"\n") if x]


def config(**access_log: Any) -> Any:
    return parse_config({"access_log": {"enabled": True, **access_log}, "node": {"namespace": "shop"}})


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def start(cfg: Any, **kw: Any) -> Dict[str, Any]:
    journal = Journal()
    pipeline = EnvoyStdout(cfg, Telemetry(cfg), journal, time.monotonic, **kw)
    read_fd, write_fd = os.pipe()
    pipeline.start()
    pipeline.attach(0, os.fdopen(read_fd, "rb"))
    return {"pipeline": pipeline, "journal": journal, "write_fd": write_fd}


def finish(run: Dict[str, Any]) -> None:
    os.close(run["write_fd"])  # Envoy exits: the reader sees EOF
    wait_for(lambda: not any(t.is_alive() for t in run["pipeline"]._readers.values()))
    run["pipeline"].stop()


def test_lines_cut_anywhere_are_read_whole_counted_and_forwarded():
    run = start(config())
    lines = [http_line(peer_spiffe_id=CLIENT_A, path=f"/{i}") for i in range(50)]
    data = b"\n".join(lines) + b"\n"
    for i in range(0, len(data), 777):  # writes that cut lines in the middle
        os.write(run["write_fd"], data[i : i + 777])
    finish(run)
    p = run["pipeline"]
    assert (p.counts.lines, p.counts.unparsed, p.counts.dropped, p.counts.forwarded) == (50, 0, 0, 50)
    assert run["journal"].lines() == lines  # forwarded as Envoy wrote them, in order
    assert sample(p.telemetry.render(), "istio_requests_total", source_principal=CLIENT_A) == 50


def test_connected_lines_count_but_are_not_forwarded():
    run = start(config())
    os.write(run["write_fd"], line(type=TCP_CONNECTED) + b"\n" + line() + b"\n")
    finish(run)
    assert run["pipeline"].counts.forwarded == 1
    assert len(run["journal"].lines()) == 1
    assert sample(run["pipeline"].telemetry.render(), "istio_tcp_connections_opened_total") == 1


def test_other_lines_are_passed_through_and_counted_even_with_the_access_log_off():
    run = start(config(enabled=False))
    os.write(run["write_fd"], b"some text Envoy printed\n" + http_line() + b'\n{"json": "but not ours"}\n')
    finish(run)
    p = run["pipeline"]
    assert (p.counts.lines, p.counts.unparsed, p.counts.forwarded) == (3, 2, 0)
    assert run["journal"].lines() == [b"some text Envoy printed", b'{"json": "but not ours"}']
    assert sample(p.telemetry.render(), "istio_requests_total") == 1  # telemetry counts whatever is forwarded


def test_an_overlong_line_is_cut_once_and_the_next_line_is_whole():
    run = start(config())
    os.write(run["write_fd"], b"x" * (3 * MAX_LINE_BYTES) + b"\n" + http_line() + b"\n")
    finish(run)
    p = run["pipeline"]
    assert (p.counts.lines, p.counts.unparsed, p.counts.forwarded) == (2, 1, 1)
    cut, whole = run["journal"].lines()
    assert (len(cut), whole) == (MAX_LINE_BYTES, http_line())


def test_the_reader_never_waits_for_a_stuck_worker_it_drops_and_counts():
    """While the worker is stuck (a journal that blocks), Envoy's writes still go through."""
    gate = threading.Event()

    class StuckJournal(Journal):
        def write(self, data: bytes) -> int:
            gate.wait()
            return super().write(data)

    cfg = config()
    journal = StuckJournal()
    pipeline = EnvoyStdout(cfg, Telemetry(cfg), journal, time.monotonic, queue_lines=8)
    read_fd, write_fd = os.pipe()
    pipeline.start()
    pipeline.attach(0, os.fdopen(read_fd, "rb"))
    one = http_line() + b"\n"
    total = 4000  # far more than the queue and the pipe's 64 KiB together
    started = time.monotonic()
    for _i in range(total // 100):
        os.write(write_fd, one * 100)  # would block if the reader stopped reading
    elapsed = time.monotonic() - started
    wait_for(lambda: pipeline.counts.lines == total)
    gate.set()
    os.close(write_fd)
    wait_for(lambda: not any(t.is_alive() for t in pipeline._readers.values()))
    pipeline.stop()
    c = pipeline.counts
    assert elapsed < 5.0
    assert c.dropped > 0 and c.forwarded + c.dropped == total, c
    assert c.forwarded <= 8 + 1  # the queue's worth, and the one line the worker held
    text = pipeline.render_metrics()
    assert sample(text, "hostmesh_agent_access_log_dropped_lines_total") == c.dropped
    assert sample(text, "hostmesh_agent_access_log_lines_total") == total


@pytest.mark.parametrize(("rate", "expected"), [(1.0, 20), (0.25, 5), (0.1, 2), (0.0, 0)])
def test_sampling_forwards_exactly_that_share(rate, expected):
    run = start(config(sampling=rate))
    os.write(run["write_fd"], (http_line() + b"\n") * 20)
    finish(run)
    assert run["pipeline"].counts.forwarded == expected
    assert sample(run["pipeline"].telemetry.render(), "istio_requests_total") == 20  # telemetry sees them all


def test_sampler_spreads_evenly():
    s = Sampler(0.5)
    assert [s.take() for _i in range(6)] == [False, True, False, True, False, True]


def test_refusals_are_logged_with_the_callers_identity_at_most_ten_a_window(caplog):
    caplog.set_level(logging.WARNING, logger="hostmesh_agent.envoy_stdout")
    run = start(config(enabled=False))
    denied = http_line(peer_spiffe_id=CLIENT_A, response_code=403, response_code_details=DENIED, path="/admin")
    tcp = line(peer_spiffe_id=None, connection_termination_details=DENIED, upstream_host=None, service="db")
    os.write(run["write_fd"], (denied + b"\n") * 12 + tcp + b"\n")
    finish(run)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 10
    assert messages[0] == (
        f"policy refused {CLIENT_A} from 10.77.0.2:40000: GET /admin to inbound service 'web' ({DENIED})"
    )


def test_rate_limit_reports_what_it_held_back():
    now = [0.0]
    limit = RateLimit(2, 10.0, lambda: now[0])
    assert [limit.allow() for _i in range(5)] == [0, 0, None, None, None]
    now[0] = 10.0
    assert limit.allow() == 3


def test_file_destination_is_reopened_after_rotation(tmp_path: Path):
    path = tmp_path / "access.log"
    now = [0.0]
    out = FileOutput(str(path), lambda: now[0])
    out.write(b"one")
    os.rename(path, tmp_path / "access.log.1")  # logrotate moves it away
    out.write(b"two")  # within the check period: still the old file
    now[0] = 1.5
    out.write(b"three")
    out.close()
    assert (tmp_path / "access.log.1").read_bytes() == b"one\ntwo\n"
    assert path.read_bytes() == b"three\n"
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_reload_moves_the_lines_to_a_file_and_write_errors_are_counted(tmp_path: Path, caplog):
    run = start(config())
    p = run["pipeline"]
    os.write(run["write_fd"], http_line(path="/first") + b"\n")
    wait_for(lambda: p.counts.forwarded == 1)
    p.configure(config(destination=str(tmp_path / "access.log")))
    os.write(run["write_fd"], http_line(path="/second") + b"\n")
    wait_for(lambda: p.counts.forwarded == 2)
    p.configure(config(destination=str(tmp_path / "missing" / "access.log")))
    os.write(run["write_fd"], http_line(path="/third") + b"\n")
    finish(run)
    assert [b"/first" in x for x in run["journal"].lines()] == [True]
    assert b"/second" in (tmp_path / "access.log").read_bytes()
    assert p.counts.write_errors == 1
    assert "cannot write access log lines" in caplog.text


def test_a_line_the_worker_cannot_handle_is_logged_once_and_the_next_ones_still_count(caplog):
    class Brittle(Telemetry):
        def observe(self, e: Any) -> None:
            if e.path == "/boom":
                raise RuntimeError("boom")
            super().observe(e)

    cfg = config()
    journal = Journal()
    pipeline = EnvoyStdout(cfg, Brittle(cfg), journal, time.monotonic)
    read_fd, write_fd = os.pipe()
    pipeline.start()
    pipeline.attach(0, os.fdopen(read_fd, "rb"))
    os.write(write_fd, (http_line(path="/boom") + b"\n") * 2 + http_line(path="/fine") + b"\n")
    finish({"pipeline": pipeline, "write_fd": write_fd})
    assert caplog.text.count("cannot handle an access-log line") == 1
    assert sample(pipeline.telemetry.render(), "istio_requests_total") == 1
