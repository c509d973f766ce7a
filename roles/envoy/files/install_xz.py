# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Install the Envoy binary on the host from the xz file the envoy role sent, for the envoy role.

    python3 install_xz.py SOURCE_XZ DEST SHA256

Decompresses SOURCE_XZ next to DEST, checks the sha256 of the result against
SHA256 and only then renames it over DEST (mode 0755, owner root), so DEST is
the old binary or the checked new one, never anything else. SOURCE_XZ is
removed either way. Standard library only: the host needs no xz tool, only
Python 3.9 or newer (its lzma module).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import sys

CHUNK = 1 << 20


class ChecksumMismatch(Exception):
    pass


def install(source: str, dest: str, sha256: str) -> str:
    """Write SOURCE decompressed as DEST if its sha256 is SHA256; the sha256 found."""
    part = dest + ".part"
    digest = hashlib.sha256()
    try:
        with lzma.open(source, "rb") as packed, open(part, "wb") as out:
            while True:
                block = packed.read(CHUNK)
                if not block:
                    break
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if found != sha256.lower():
            raise ChecksumMismatch(found)
        os.chmod(part, 0o755)
        if os.geteuid() == 0:
            os.chown(part, 0, 0)
        os.replace(part, dest)
        return found
    finally:
        if os.path.exists(part):
            os.unlink(part)
        if os.path.exists(source):
            os.unlink(source)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source, dest, sha256 = args
    try:
        found = install(source, dest, sha256)
    except ChecksumMismatch as error:
        print(
            "checksum mismatch: %s decompressed has sha256 %s but the pinned sha256 is %s; "
            "%s was left as it was" % (source, error, sha256.lower(), dest),
            file=sys.stderr,
        )
        return 1
    except (OSError, EOFError, lzma.LZMAError) as error:
        print("install_xz: %s: %s; %s was left as it was" % (source, error, dest), file=sys.stderr)
        return 1
    print("installed %s (sha256 %s)" % (dest, found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
