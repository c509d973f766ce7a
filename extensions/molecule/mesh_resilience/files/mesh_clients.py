"""The clients of the mesh_resilience scenario, on the client host, until a stop file appears.

    python3 mesh_clients.py LOG STOPFILE

Appends one JSON line per event to LOG (the side effect appends its own
events to the same file, on the same clock):

- http: a GET of http://web.mesh.internal:8080/ every 0.1 s, a new connection
  each; ok and the replica that answered (the page says "echo from <host>");
- tcp_new: a new connection to echo-tcp.mesh.internal:9000 every 0.5 s, the
  replica's greeting read;
- tcp_conn: eight connections opened at start and kept, a line echoed every
  second; one line when one dies, and one per survivor at the end;
- dns: web.mesh.internal (a VIP from 240.240.0.0/16) and outside.test
  (192.0.2.123, from the outside resolver) looked up every 0.5 s.
"""

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

LOG, STOP = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()


def log(**entry):
    entry["t"] = time.time()
    with LOCK, open(LOG, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def running():
    return not os.path.exists(STOP)


def http():
    while running():
        try:
            with urllib.request.urlopen("http://web.mesh.internal:8080/", timeout=15) as reply:
                body = reply.read().decode()
            log(kind="http", ok=True, replica=body.split()[-1])
        except urllib.error.HTTPError as error:
            log(kind="http", ok=False, error=repr(error), body=error.read().decode(errors="replace")[:300])
        except Exception as error:
            log(kind="http", ok=False, error=repr(error))
        time.sleep(0.1)


def greet(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError("closed before the greeting")
        data += chunk
    return data.decode().strip()


def tcp_new():
    while running():
        try:
            with socket.create_connection(("echo-tcp.mesh.internal", 9000), timeout=10) as sock:
                log(kind="tcp_new", ok=True, replica=greet(sock))
        except Exception as error:
            log(kind="tcp_new", ok=False, error=repr(error))
        time.sleep(0.5)


def tcp_conn(index):
    try:
        sock = socket.create_connection(("echo-tcp.mesh.internal", 9000), timeout=10)
        replica = greet(sock)
    except Exception as error:
        log(kind="tcp_conn", index=index, ok=False, error="open: %r" % error)
        return
    log(kind="tcp_conn", index=index, ok=True, replica=replica, state="open")
    sock.settimeout(5)
    while running():
        try:
            sock.sendall(b"ping\n")
            if sock.recv(100) != b"ping\n":
                raise ConnectionError("no echo")
        except Exception as error:
            log(kind="tcp_conn", index=index, ok=False, replica=replica, state="died", error=repr(error))
            return
        time.sleep(1)
    log(kind="tcp_conn", index=index, ok=True, replica=replica, state="alive")
    sock.close()


def dns():
    while running():
        for name, good in (("web.mesh.internal", "240.240."), ("outside.test", "192.0.2.123")):
            try:
                addresses = sorted({info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)})
                log(kind="dns", name=name, ok=any(a.startswith(good) for a in addresses), addresses=addresses)
            except Exception as error:
                log(kind="dns", name=name, ok=False, error=repr(error))
        time.sleep(0.5)


def main():
    threads = [threading.Thread(target=target) for target in (http, tcp_new, dns)]
    threads += [threading.Thread(target=tcp_conn, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log(kind="done")


if __name__ == "__main__":
    main()
