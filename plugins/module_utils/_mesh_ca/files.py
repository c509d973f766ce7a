# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mesh CA's files on the controller: every read, write and mode change the CA makes.

Reads fail loudly: a CA file that exists and cannot be read is an error,
never taken for a missing one. Writes replace files atomically
(``_host_files.write_atomic``), after creating missing directories with mode
0700; the CA key alone is put in place by a link, so only one run creates it.
"""

import os
import time

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import (
    read_existing,
    staged_copy,
    write_atomic,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.plan import DIR_MODE, PrivateDir, WorkloadFiles


def read(path: str):
    """A file's content, or None when it does not exist; MeshCAError naming the file when it cannot be read."""
    try:
        return read_existing(path)
    except OSError as error:
        raise MeshCAError("%s: cannot read: %s" % (path, error)) from error


def exists(path: str) -> bool:
    return os.path.exists(path)


def mode_of(path: str):
    """A file's permission bits, or None when it cannot be looked at."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return None


def set_mode(path: str, mode: int) -> None:
    os.chmod(path, mode)


def read_workload(request) -> WorkloadFiles:
    """What is in a workload's certificate and key files."""
    return WorkloadFiles(read(request.cert_path), read(request.key_path), mode_of(request.key_path))


def look_at_private_dir(path: str, dirs) -> PrivateDir:
    """The private directory as it is: dirs (the directory first, then those below it) that exist, with
    their modes, and its .gitignore."""
    if not os.path.exists(path):
        return PrivateDir("missing", (), None, None)
    if not os.path.isdir(path):
        return PrivateDir("other", (), None, None)
    modes = ((directory, mode_of(directory)) for directory in dirs)
    gitignore = os.path.join(path, ".gitignore")
    return PrivateDir(
        "directory",
        tuple((directory, mode) for directory, mode in modes if mode is not None),
        read(gitignore),
        mode_of(gitignore),
    )


def wait_for(path: str, seconds: float = 30.0) -> None:
    """Another run is creating the CA; give it time to write the certificate."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)


def make_private_dirs(directory: str) -> None:
    """Create directory and every missing parent with mode 0700 (os.makedirs gives parents the default mode)."""
    directory = os.path.abspath(directory)
    if os.path.isdir(directory):
        return
    make_private_dirs(os.path.dirname(directory))
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise


def write(path: str, content: bytes, mode: int) -> None:
    """Replace path with content, with mode from the start (keys are never readable by others, even for a moment)."""
    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    write_atomic(path, content, mode)


def create_exclusive(path: str, content: bytes, mode: int) -> bool:
    """Put content at path unless a file is there already; False when another run got there first.

    Not write_atomic: its rename would replace a CA key another run has just
    created (and signed its certificate with); a link refuses to.
    """
    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    with staged_copy(path, content, mode) as temp:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    return True
