# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compress the Envoy binary with xz on the controller, once per binary, for the envoy role.

    python3 compress_xz.py SOURCE DEST [PRESET]

Writes SOURCE compressed as DEST (xz, preset PRESET, 6 unless given) through a
file next to DEST that is renamed into place, so DEST is whole or absent.
Standard library only (lzma), so any controller Python can run it.
"""

from __future__ import annotations

import lzma
import os
import shutil
import sys

CHUNK = 1 << 20


def compress(source: str, dest: str, preset: int = 6) -> None:
    """Write SOURCE as the xz file DEST."""
    part = dest + ".part"
    try:
        with open(source, "rb") as raw, lzma.open(part, "wb", format=lzma.FORMAT_XZ, preset=preset) as out:
            shutil.copyfileobj(raw, out, CHUNK)
        os.chmod(part, 0o644)
        os.replace(part, dest)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or (len(args) == 3 and args[2] not in [str(n) for n in range(10)]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        compress(args[0], args[1], int(args[2]) if len(args) == 3 else 6)
    except (OSError, lzma.LZMAError) as error:
        print("compress_xz: %s: %s" % (args[0], error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
