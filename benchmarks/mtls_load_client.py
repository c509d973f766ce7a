"""Keep-alive mTLS HTTP load for the policy/telemetry benchmark; prints a JSON summary.

Each worker opens one mTLS connection (a mesh client certificate, as a calling sidecar
would present) and sends ``--requests`` GETs on it, timing each from the request's
first byte to the response's last. Run in the caller's network namespace:
python3 mtls_load_client.py HOST PORT --ca CA --cert C --key K [--workers 4] [--requests 500]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import ssl
import threading
import time

from _http_load import Tally, Worker, run_threads


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
    connect = functools.partial(http.client.HTTPSConnection, args.host, args.port, timeout=10, context=ctx)
    tally = Tally("ok", "failed")

    def worker() -> None:
        mine = Worker(connect, tally)
        for i in range(args.requests):
            mine.get(i)
        mine.finish()

    threads = [threading.Thread(target=worker) for _i in range(args.workers)]
    started = time.perf_counter()
    run_threads(threads)
    tally.print_summary(time.perf_counter() - started, digits=3)


if __name__ == "__main__":
    main()
