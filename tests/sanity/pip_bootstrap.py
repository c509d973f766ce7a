"""Stand-in for the pip bootstrap script ansible-test downloads.

ansible-test creates its sanity virtual environments without pip and runs a
downloaded get-pip script in them. On machines that reach PyPI but not that
download, this script does the same job with the interpreter's own ensurepip,
then installs the pip version ansible-test asked for from the package index.
ansible-test runs pip with a reduced environment, so the system's CA bundle
(which may hold a TLS-inspecting proxy's CA) is written into the venv's pip
config, where every later pip call in that venv finds it.
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

bundle = next((path for path in SYSTEM_BUNDLES if os.path.exists(path)), None)
if bundle:
    with open(os.path.join(sys.prefix, "pip.conf"), "w") as config:
        config.write("[global]\ncert = %s\n" % bundle)
ensurepip.bootstrap(upgrade=True)
os.environ.pop("PIP_CONFIG_FILE", None)  # ensurepip points it at /dev/null
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
