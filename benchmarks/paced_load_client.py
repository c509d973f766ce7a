"""Paced keep-alive HTTP load for the data-path benchmark; prints a JSON summary.

A steady ``--rate`` requests per second spread over ``--connections`` keep-alive
connections (one thread each, every connection sending on its own fixed schedule, as
Istio's fortio runs do), for ``--seconds``. Each request is timed from its first byte
sent to its response's last byte read. Run in the client's network namespace:
python3 paced_load_client.py HOST PORT [--rate 1000] [--connections 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import threading
import time

from _http_load import Tally, Worker, run_threads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second, all connections together")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    interval = args.connections / args.rate  # each connection's period
    per_connection = int(args.seconds / interval)
    connect = functools.partial(http.client.HTTPConnection, args.host, args.port, timeout=10)
    tally = Tally("ok", "failed", "late")
    start = time.perf_counter() + 0.2

    def worker(k: int) -> None:
        mine = Worker(connect, tally)
        late = 0
        offset = start + k * interval / args.connections
        for i in range(per_connection):
            due = offset + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > interval:
                late += 1  # the schedule slipped by more than a period
            mine.get(i)
        mine.finish(late=late)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.connections)]
    run_threads(threads)
    elapsed = time.perf_counter() - start
    tally.print_summary(elapsed, digits=4)


if __name__ == "__main__":
    main()
