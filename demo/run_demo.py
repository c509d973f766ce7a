"""The demo: four VMs onboarded into the mesh; calls by service name spread over
two replicas, one replica failing over, a caller refused by policy; then
offboarded back to exactly how they were.

1. boots four sandbox hosts (systemd-nspawn, real systemd, reached over SSH):
   "web1" and "web2" are two replicas of the service "web" (a small HTTP app
   on 127.0.0.1:8080 that answers with its host name); "client" runs as the
   service account "frontend", which web's policy allows; "intruder" is in
   the mesh too, but nobody allowed it (each host has a default route, as a
   VM would: its resolver and the mesh's virtual IPs are routed);
2. records each host's state (rulesets, users, units, files, resolv.conf);
3. runs playbooks/onboard.yml (mesh CA, Envoy, agent, capture) and again
   to show nothing changes;
4. client -> web.mesh.internal, port 8080: the agent's DNS answers the name
   with web's virtual IP, the client's sidecar takes the connection and
   spreads the calls over both replicas, over mTLS; the apps only listen on
   loopback, so there is no other way in;
5. web1's app stops: the calls go on, every one answered by web2 (retries
   and outlier detection), none failed; then it starts again;
6. intruder -> the same name: refused by web's policy (403), and the
   refusal is counted and logged with intruder's SPIFFE ID;
7. runs playbooks/offboard.yml and compares each host with step 2;
8. destroys the hosts.
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
  vars:
    hostmesh_dns: true
    demo_web:
      - name: web
        port: 8080
        protocol: http
        allow:
          - {service_accounts: [frontend]}
  hosts:
    web1: {hostmesh_services: "{{ demo_web }}"}
    web2: {hostmesh_services: "{{ demo_web }}"}
    client: {hostmesh_service_account: frontend}
    intruder: {}
"""
HOSTS = ("web1", "web2", "client", "intruder")
APP = "systemd-run --unit demo-app python3 -m http.server 8080 --bind 127.0.0.1 --directory /etc"

STATE = (
    "iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; nft list ruleset;"
    " ip rule; ip -6 rule; getent passwd | sort; getent group | sort;"
    " systemctl list-unit-files --no-legend | grep -v scope | sort;"
    " ls -A /etc/hostmesh /usr/local/bin /usr/local/lib /run/hostmesh 2>&1; cat /etc/resolv.conf"
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


def calls(sandbox, host, url, count):
    """The answers of `count` calls to url from host: the host name that answered and the HTTP status."""
    script = (
        "for i in $(seq %d); do"
        ' code=$(curl -s --max-time 5 -o /tmp/demo-body -w "%%{http_code}" %s);'
        ' echo "$(cat /tmp/demo-body 2>/dev/null) $code"; rm -f /tmp/demo-body;'
        " done" % (count, url)
    )
    return on(sandbox, host, script).splitlines()


def tally(answers):
    counts = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return ", ".join("%s x%d" % (answer, n) for answer, n in sorted(counts.items()))


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (the demo boots systemd-nspawn hosts)")
    sandbox = Sandbox("demo", log=lambda message: print(message, file=sys.stderr, flush=True))
    admin = "curl -s --unix-socket /run/hostmesh/admin.sock http://localhost"
    try:
        say("four sandbox VMs with systemd: web1 and web2 (the service web), client, intruder")
        sandbox.create(list(HOSTS), default_route=True)
        for host in ("web1", "web2"):
            on(sandbox, host, APP)
        before = {host: on(sandbox, host, STATE) for host in HOSTS}
        with tempfile.TemporaryDirectory() as directory:
            mesh = os.path.join(directory, "mesh.yml")
            with open(mesh, "w") as handle:
                handle.write(MESH)

            say("onboard: ansible-playbook playbooks/onboard.yml (then again: nothing changes)")
            playbook(sandbox, mesh, "onboard.yml")
            playbook(sandbox, mesh, "onboard.yml")

            web = "http://web.mesh.internal:8080/hostname"
            say("client -> %s, 6 calls: the sidecar spreads them over web's two replicas, over mTLS" % web)
            vip = on(sandbox, "client", "getent ahostsv4 web.mesh.internal | awk 'NR == 1 { print $1 }'")
            print("client resolves web.mesh.internal to web's virtual IP:", vip)
            if not vip.startswith("240.240."):
                raise SystemExit("web.mesh.internal did not resolve to a virtual IP: %r" % vip)
            answers = calls(sandbox, "client", web, 6)
            print(tally(answers))
            if {"web1 200", "web2 200"} - set(answers):
                raise SystemExit("the calls did not reach both replicas: %s" % answers)
            print(
                "web1 presents:",
                on(sandbox, "web1", admin + '/certs | grep -o "spiffe://[^\\"]*" | sort -u | head -1'),
            )

            say(
                "web1's app stops: 10 more calls, every one answered by web2, none failed (then web1's app starts again)"
            )
            on(sandbox, "web1", "systemctl stop demo-app")
            answers = calls(sandbox, "client", web, 10)
            print(tally(answers))
            if set(answers) != {"web2 200"}:
                raise SystemExit("a call failed or reached the stopped replica: %s" % answers)
            on(sandbox, "web1", APP)

            say("intruder -> %s: not in web's allow list" % web)
            answers = calls(sandbox, "intruder", web, 1)
            print(tally(answers))
            if answers != ["RBAC: access denied 403"]:
                raise SystemExit("intruder was not refused: %s" % answers)
            # The replica that took the call refused it: its counter and its journal say so.
            denied = "curl -s http://127.0.0.1:15020/stats/prometheus | grep ^hostmesh_rbac_denied_total"
            journal = "journalctl -u hostmesh-agent --no-pager -o cat | grep -m1 'policy refused'"
            for host in ("web1", "web2"):
                print("%s's refusals: %s" % (host, on(sandbox, host, denied)))
                print("%s's journal:  %s" % (host, on(sandbox, host, journal)))

            say("offboard: ansible-playbook playbooks/offboard.yml")
            playbook(sandbox, mesh, "offboard.yml")
            for host in HOSTS:
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
