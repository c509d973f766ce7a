"""Paced keep-alive HTTP load for the data-path benchmark; prints a JSON summary.

A steady ``--rate`` requests per second spread over ``--connections`` keep-alive
connections (one thread each, every connection sending on its own fixed schedule, as
Istio's fortio runs do), for ``--seconds``. Each request is timed from its first byte
sent to its response's last byte read. Run in the client's network namespace:
python3 paced_load_client.py HOST PORT [--rate 1000] [--connections 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from typing import Dict, List


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
    lock = threading.Lock()
    latencies: List[float] = []
    counts: Dict[str, int] = {"ok": 0, "failed": 0, "late": 0}
    errors: List[str] = []
    start = time.perf_counter() + 0.2

    def worker(k: int) -> None:
        mine: List[float] = []
        ok = failed = late = 0
        conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
        offset = start + k * interval / args.connections
        for i in range(per_connection):
            due = offset + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > interval:
                late += 1  # the schedule slipped by more than a period
            sent = time.perf_counter()
            try:
                conn.request("GET", f"/bench/{i}", headers={"Host": "web"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    ok += 1
                    mine.append(time.perf_counter() - sent)
                else:
                    failed += 1
            except (OSError, http.client.HTTPException) as exc:
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
                with lock:
                    if len(errors) < 10:
                        errors.append(f"{type(exc).__name__}: {exc}")
        conn.close()
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["failed"] += failed
            counts["late"] += late

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    result = {**counts, "errors": errors, "seconds": elapsed, "latencies_ms": [round(x * 1000, 4) for x in latencies]}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
