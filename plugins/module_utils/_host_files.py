# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host files: reading them, and replacing them atomically.

Readers: ``read_bytes``/``read_text`` answer None for a file that cannot be
read (for code where a missing file is an answer); ``read_existing`` answers
None only for a missing file and raises anything else (for code that must fail
loudly on an unreadable one).

Writer: ``write_atomic`` is the one way the collection's modules replace a
file (the capture rules file, host_state's stamps, the mesh CA's certificates
and keys). ``staged_copy`` is its first half, for a caller that must put the
file in place some other way.
"""

import contextlib
import os
import stat
import tempfile
from typing import Iterator, Optional, Union


def read_existing(path: str) -> Optional[bytes]:
    """A file's content, or None when it does not exist; any other failure to read raises OSError."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_bytes(path: str) -> Optional[bytes]:
    """A file's content, or None when it cannot be read."""
    try:
        return read_existing(path)
    except OSError:
        return None


def read_text(path: str) -> Optional[str]:
    """A file's text (bytes that are not UTF-8 replaced), or None when it cannot be read."""
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")


@contextlib.contextmanager
def staged_copy(path: str, content: bytes, mode: int) -> Iterator[str]:
    """A new temporary file beside path holding all of content, flushed to disk; removed on leaving
    unless it was moved into place. Its mode is set before any content is written, so a key is never
    readable by others, even in the temporary file."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def write_atomic(path: str, content: Union[bytes, str], mode: int) -> bool:
    """Make path a regular file holding content (text is written as UTF-8) with exactly mode.

    True when that changed anything. A file that holds content already is not
    rewritten (only its mode is put right, if it must be). Otherwise content goes to
    a temporary file in path's directory, with mode set first, and is renamed over
    path: readers see the old file or the new one, never a part of either, and an
    error leaves the old file and no temporary one. The directory must exist; the
    new file belongs to the user writing it.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        current = None
    # A symlink is replaced by a file, never written through.
    if current is not None and stat.S_ISREG(current.st_mode) and read_existing(path) == data:
        if stat.S_IMODE(current.st_mode) == mode:
            return False
        os.chmod(path, mode)
        return True
    with staged_copy(path, data, mode) as temp:
        os.replace(temp, path)
    _sync_directory(os.path.dirname(os.path.abspath(path)))
    return True


def _sync_directory(directory: str) -> None:
    """Make a rename in directory last through a crash; best effort, as some file systems cannot."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
