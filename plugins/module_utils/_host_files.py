# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading a host's files where a missing or unreadable file is an answer, not an error."""


def read_bytes(path):
    """A file's content, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def read_text(path):
    """A file's text (bytes that are not UTF-8 replaced), or None when it cannot be read."""
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")
