"""The demo: traffic_capture on a throwaway pair of network namespaces.

1. creates a "host" and a "peer" namespace joined by a veth;
2. runs ansible-playbook (connection local, inside the host namespace) with
   hostmesh.sidecar.traffic_capture and Istio's settings, shows
   `iptables -t nat -S`, then runs it again to show `changed=0`;
3. proves capture with real connections: the app's outbound call and the
   peer's inbound call arrive at the capture listeners with their original
   destinations; the proxy's own traffic goes direct;
4. removes capture (state: absent) and shows the host's ruleset as before;
5. deletes the namespaces.
Run as root: `make demo`.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "capture"))

from netlab import COLLECTIONS, HOST_V4, PEER_V4, Lab  # noqa: E402

PLAY = """- name: Capture traffic through the sidecar
  hosts: all
  gather_facts: false
  tasks:
    - name: Apply the interception chains
      hostmesh.sidecar.traffic_capture:
        state: "{{ capture_state }}"
        chain_prefix: ISTIO_
        protect_established: false
        ip_families: [ipv4]
"""


def say(text):
    print("\n== %s" % text, flush=True)


def playbook(lab, state, directory):
    path = os.path.join(directory, "capture.yml")
    with open(path, "w") as handle:
        handle.write(PLAY)
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    argv += ["-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "capture_state=%s" % state, path]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    proc = lab.run(lab.host, argv, check=False, env=env)
    recap = [line for line in proc.stdout.splitlines() if "ok=" in line]
    print("\n".join(recap) or proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit("playbook failed")


def show(lab, argv):
    print("$ " + " ".join(argv))
    print(lab.run(lab.host, argv).stdout.rstrip() or "(nothing)")


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (the demo creates network namespaces)")
    lab = Lab().up()
    directory = lab._tmp
    try:
        say("a host (%s) and a peer (%s) in their own network namespaces" % (HOST_V4, PEER_V4))
        before = lab.ruleset()
        for ns, port in ((lab.host, 15001), (lab.host, 15006), (lab.peer, 8080), (lab.host, 8080)):
            lab.serve(ns, port)

        say("onboard: ansible-playbook applies traffic_capture (first run, then again)")
        playbook(lab, "present", directory)
        playbook(lab, "present", directory)
        show(lab, ["iptables", "-t", "nat", "-S"])

        say("real connections (answer: original destination, client, listener port)")
        print("app -> peer:8080           ", lab.connect(lab.host, PEER_V4, 8080))
        print("proxy (uid 1337) -> peer   ", lab.connect(lab.host, PEER_V4, 8080, uid=1337))
        print("peer -> host:8080          ", lab.connect(lab.peer, HOST_V4, 8080))

        say("offboard: state absent")
        playbook(lab, "absent", directory)
        print("app -> peer:8080           ", lab.connect(lab.host, PEER_V4, 8080))
        print("ruleset as before onboarding:", "yes" if lab.ruleset() == before else "NO")
        if lab.ruleset() != before:
            raise SystemExit("the ruleset differs from before onboarding")
    finally:
        lab.down()
        say("namespaces removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
