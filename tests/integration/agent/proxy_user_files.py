"""What the proxy user runs, from a directory it can read wherever the checkout is.

On a host the agent role installs the package's modules (``hostmesh_agent/*.py``,
as ``roles/agent/files/pack_agent.py`` packs them) and the Envoy binary where
the proxy user (uid 1337) can read them. A checkout under ``/root`` (mode 0700)
or a ``mktemp -d`` directory is not such a place, nor is a virtualenv inside it,
so the tests and benchmarks that run the agent or Envoy as that user run them
from a copy made here: a world-readable temporary directory, removed when the
process exits.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
AGENT_SOURCE = REPO / "roles" / "agent" / "files" / "hostmesh_agent"
PACKAGE = "hostmesh_agent"
ENVOY = "envoy"


@functools.cache
def _tree() -> Path:
    """The readable directory, made on first use: mode 0755, owned by the user running the tests."""
    tree = Path(tempfile.mkdtemp(prefix="hm-proxy-user-"))
    atexit.register(shutil.rmtree, tree, True)
    os.chmod(tree, 0o755)
    package = tree / PACKAGE
    package.mkdir(mode=0o755)
    os.chmod(package, 0o755)
    for module in sorted(AGENT_SOURCE.glob("*.py")):
        shutil.copyfile(module, package / module.name)
        os.chmod(package / module.name, 0o644)
    return tree


def agent_path() -> str:
    """A PYTHONPATH entry holding the agent package, readable by every user."""
    return str(_tree())


@functools.cache
def readable_envoy(source: str) -> str:
    """The Envoy binary at ``source`` (in the virtualenv), where every user can run it."""
    target = _tree() / ENVOY
    try:
        os.link(source, target)  # same file system: no 100 MB copy
    except OSError:
        shutil.copy2(source, target)
    mode = os.stat(target).st_mode
    if mode & 0o055 != 0o055:
        os.chmod(target, stat.S_IMODE(mode) | 0o755)
    return str(target)
