"""Keeps requests flowing to a target until SIGTERM, then prints a JSON summary.

Each request opens a new connection (so every one crosses the capture rules and
Envoy's listener), or with ``--keepalive`` reuses one as long as the server
allows; each must come back 200 with a body naming ``--expect-peer``.
Run: python3 load_client.py HOST PORT [--workers N] [--expect-peer IP]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--expect-peer", default="")
    p.add_argument("--keepalive", action="store_true")
    args = p.parse_args()
    stop = threading.Event()
    lock = threading.Lock()
    result = {"ok": 0, "failed": 0, "connections": 0, "errors": []}

    def worker() -> None:
        conn = None
        while not stop.is_set():
            err = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(args.host, args.port, timeout=5)
                headers = {} if args.keepalive else {"Connection": "close"}
                conn.request("GET", "/", headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode()
                if not args.keepalive or resp.will_close:
                    conn.close()
                    conn = None
                if resp.status != 200:
                    err = f"status {resp.status}"
                elif args.expect_peer and args.expect_peer not in body:
                    err = f"unexpected body {body!r}"
            except (OSError, http.client.HTTPException) as exc:
                err = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                    conn = None
            with lock:
                if err:
                    result["failed"] += 1
                    if len(result["errors"]) < 20:
                        result["errors"].append(f"{time.time():.3f} {err}")
                else:
                    result["ok"] += 1
                    result["connections"] += int(conn is None)
            time.sleep(0.005)

    signal.signal(signal.SIGTERM, lambda *_args: stop.set())
    threads = [threading.Thread(target=worker) for _i in range(args.workers)]
    for t in threads:
        t.start()
    print("started", flush=True)
    while not stop.is_set():
        stop.wait(0.2)
    for t in threads:
        t.join()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
