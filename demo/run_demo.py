"""The demo: two VMs onboarded into the mesh, a request through both sidecars
with mTLS, then offboarded back to exactly how they were.

1. boots two sandbox hosts (systemd-nspawn, real systemd, reached over SSH):
   "web" runs a small HTTP app on 127.0.0.1:8080, "client" calls it;
2. records each host's state (rulesets, users, units, files);
3. runs playbooks/onboard.yml (mesh CA, Envoy, agent, capture) and again to
   show nothing changes;
4. client -> web:8080: the request goes through the client's sidecar and the
   web's sidecar over mTLS (Envoy stats show the TLS handshakes; web presents
   its SPIFFE certificate); the app only listens on loopback, so there is no
   other way in;
5. runs playbooks/offboard.yml and compares each host with step 2;
6. destroys the hosts.
Run as root: `make demo`.
"""

import difflib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.sandbox.sandbox import Sandbox  # noqa: E402

BIN = os.path.dirname(sys.executable)

MESH = """mesh:
  hosts:
    web:
      hostmesh_services:
        - {name: web, port: 8080}
    client: {}
"""

STATE = (
    "iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; nft list ruleset;"
    " ip rule; ip -6 rule; getent passwd | sort; getent group | sort;"
    " systemctl list-unit-files --no-legend | grep -v scope | sort;"
    " ls -A /etc/hostmesh /usr/local/bin /usr/local/lib /run/hostmesh 2>&1"
)


def say(text):
    print("\n== %s" % text, flush=True)


def playbook(sandbox, mesh_inventory, name):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_NOCOLOR="1")
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", str(sandbox.inventory), "-i", mesh_inventory]
    argv += ["-e", "hostmesh_ca_dir=%s" % os.path.join(os.path.dirname(mesh_inventory), "ca")]
    argv.append(os.path.join(ROOT, "playbooks", name))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    recap = [line for line in proc.stdout.splitlines() if "changed=" in line and "ok=" in line]
    print("\n".join(recap))
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-3000:])
        raise SystemExit("%s failed" % name)
    return recap


def on(sandbox, host, command):
    proc = sandbox.ssh(host, ["sh", "-c", "'%s'" % command.replace("'", "'\\''")], timeout=120)
    return proc.stdout.strip()


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (the demo boots systemd-nspawn hosts)")
    sandbox = Sandbox("demo", log=lambda message: print(message, file=sys.stderr, flush=True))
    try:
        say("two sandbox VMs with systemd: web and client")
        sandbox.create(["web", "client"])
        web = sandbox.hosts()["web"]
        on(sandbox, "web", "systemd-run --unit demo-app python3 -m http.server 8080 --bind 127.0.0.1 --directory /etc")
        before = {host: on(sandbox, host, STATE) for host in ("web", "client")}
        with tempfile.TemporaryDirectory() as directory:
            mesh = os.path.join(directory, "mesh.yml")
            with open(mesh, "w") as handle:
                handle.write(MESH)

            say("onboard: ansible-playbook playbooks/onboard.yml (then again: nothing changes)")
            playbook(sandbox, mesh, "onboard.yml")
            playbook(sandbox, mesh, "onboard.yml")
            print(on(sandbox, "web", "iptables -t nat -S | grep HOSTMESH_INBOUND | head -4"))

            say("client -> http://%s:8080/hostname (the app listens on web's loopback only)" % web)
            print("answer:", on(sandbox, "client", "curl -s --max-time 5 http://%s:8080/hostname" % web))
            stats = (
                "curl -s --unix-socket /run/hostmesh/admin.sock http://localhost/stats"
                ' | grep -E "ssl.handshake|ssl.connection_error" | grep -v ": 0$"'
            )
            print("client sidecar (outbound mTLS):", on(sandbox, "client", stats))
            print("web sidecar (inbound mTLS):    ", on(sandbox, "web", stats))
            print(
                "web presents:",
                on(
                    sandbox,
                    "web",
                    'curl -s --unix-socket /run/hostmesh/admin.sock http://localhost/certs | grep -o "spiffe://[^\\"]*" | sort -u',
                ),
            )
            say("offboard: ansible-playbook playbooks/offboard.yml")
            playbook(sandbox, mesh, "offboard.yml")
            for host in ("web", "client"):
                after = on(sandbox, host, STATE)
                same = after == before[host]
                print("%s reads as before onboarding: %s" % (host, "yes" if same else "NO"))
                if not same:
                    diff = difflib.unified_diff(
                        before[host].splitlines(), after.splitlines(), "before", "after", lineterm=""
                    )
                    print("\n".join(diff))
                    raise SystemExit("%s differs from before onboarding" % host)
    finally:
        sandbox.destroy(quiet=True)
        say("sandbox destroyed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
