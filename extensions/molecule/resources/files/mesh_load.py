"""Call a URL again and again until a stop file appears.

Run on a sandbox host: python3 mesh_load.py URL RESULT_FILE STOP_FILE [keepalive]
By default each request opens a new connection; with ``keepalive`` the requests
share one HTTP/1.1 connection, opened again only when the server closes it (a
draining Envoy answers ``connection: close``), as a pooling client does.
Writes {"ok": N, "failed": N, "connections": N, "errors": [...first few...]} to
RESULT_FILE at the end; a request fails on any error or an answer other than 200.
"""

import http.client
import json
import os
import sys
import time
import urllib.parse
import urllib.request

url, result_file, stop_file = sys.argv[1:4]
keepalive = sys.argv[4:5] == ["keepalive"]
counts = {"ok": 0, "failed": 0, "connections": 0, "errors": []}
parts = urllib.parse.urlsplit(url)
conn = None


def once() -> None:
    global conn
    if not keepalive:
        counts["connections"] += 1
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        return
    if conn is None or conn.sock is None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
        conn.connect()
        counts["connections"] += 1
    conn.request("GET", parts.path or "/")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise OSError("HTTP %d" % response.status)
    if response.will_close:
        conn.close()


deadline = time.monotonic() + 900  # never outlives a scenario
while not os.path.exists(stop_file) and time.monotonic() < deadline:
    try:
        once()
        counts["ok"] += 1
    except (OSError, http.client.HTTPException) as error:
        counts["failed"] += 1
        if conn is not None:
            conn.close()
            conn = None
        if len(counts["errors"]) < 5:
            counts["errors"].append("%s: %s" % (time.strftime("%H:%M:%S"), error))
    time.sleep(0.02)
with open(result_file + ".tmp", "w") as handle:
    json.dump(counts, handle)
os.replace(result_file + ".tmp", result_file)
