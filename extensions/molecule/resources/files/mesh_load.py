"""Call a URL again and again, one new connection per request, until a stop file appears.

Run on a sandbox host: python3 mesh_load.py URL RESULT_FILE STOP_FILE
Writes {"ok": N, "failed": N, "errors": [...first few...]} to RESULT_FILE at the end.
"""

import json
import os
import sys
import time
import urllib.request

url, result_file, stop_file = sys.argv[1:4]
counts = {"ok": 0, "failed": 0, "errors": []}
deadline = time.monotonic() + 600  # never outlives a scenario
while not os.path.exists(stop_file) and time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        counts["ok"] += 1
    except OSError as error:
        counts["failed"] += 1
        if len(counts["errors"]) < 5:
            counts["errors"].append("%s: %s" % (time.strftime("%H:%M:%S"), error))
    time.sleep(0.02)
with open(result_file + ".tmp", "w") as handle:
    json.dump(counts, handle)
os.replace(result_file + ".tmp", result_file)
