"""Pack the agent package into one tar archive on the controller, for the agent role.

    python3 pack_agent.py SOURCE_DIR ARCHIVE MODULE...

The archive holds the directory ``hostmesh_agent`` and the named modules of
SOURCE_DIR, in name order; the role sends it to a host in one transfer
instead of one per module. It is written next to ARCHIVE and renamed into
place, so a reader never sees half an archive.
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile

PACKAGE = "hostmesh_agent"


def pack(source: str, archive: str, modules: list[str]) -> None:
    """Write ARCHIVE with SOURCE's directory entry and its MODULES (file names, no paths)."""
    for module in modules:
        if os.path.basename(module) != module or not os.path.isfile(os.path.join(source, module)):
            raise ValueError("%s is not a file of %s" % (module, source))
    directory = os.path.dirname(os.path.abspath(archive))
    os.makedirs(directory, exist_ok=True)
    handle, part = tempfile.mkstemp(dir=directory, suffix=".part")
    os.close(handle)
    try:
        with tarfile.open(part, "w") as tar:
            tar.add(source, arcname=PACKAGE, recursive=False)
            for module in sorted(modules):
                tar.add(os.path.join(source, module), arcname=PACKAGE + "/" + module)
        os.replace(part, archive)
    except BaseException:
        os.unlink(part)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        pack(args[0], args[1], args[2:])
    except (OSError, ValueError) as error:
        print("pack_agent: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
