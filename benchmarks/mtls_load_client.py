"""Keep-alive mTLS HTTP load for the policy/telemetry benchmark; prints a JSON summary.

Each worker opens one mTLS connection (a mesh client certificate, as a calling sidecar
would present) and sends ``--requests`` GETs on it, timing each from the request's
first byte to the response's last. Run in the caller's network namespace:
python3 mtls_load_client.py HOST PORT --ca CA --cert C --key K [--workers 4] [--requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
from typing import Dict, List


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    for name in ("--ca", "--cert", "--key"):
        p.add_argument(name, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--requests", type=int, default=500)
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE identities are URI SANs
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    lock = threading.Lock()
    latencies: List[float] = []
    counts: Dict[str, int] = {"ok": 0, "failed": 0}
    errors: List[str] = []

    def worker() -> None:
        mine: List[float] = []
        ok = failed = 0
        conn = http.client.HTTPSConnection(args.host, args.port, timeout=10, context=ctx)
        for i in range(args.requests):
            start = time.perf_counter()
            try:
                conn.request("GET", f"/bench/{i}", headers={"Host": "web"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    ok += 1
                    mine.append(time.perf_counter() - start)
                else:
                    failed += 1
            except (OSError, http.client.HTTPException) as exc:
                failed += 1
                conn.close()
                conn = http.client.HTTPSConnection(args.host, args.port, timeout=10, context=ctx)
                with lock:
                    if len(errors) < 10:
                        errors.append(f"{type(exc).__name__}: {exc}")
        conn.close()
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["failed"] += failed

    threads = [threading.Thread(target=worker) for _i in range(args.workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {**counts, "errors": errors, "seconds": time.perf_counter() - started,
              "latencies_ms": [round(x * 1000, 3) for x in latencies]}  # fmt: skip
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
