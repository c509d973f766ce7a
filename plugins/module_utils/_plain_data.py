# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Template results as plain data, so filters compare, hash and dump them as JSON alike.

Ansible hands filters its own container and string types (lazy, tagged, or
marked unsafe, depending on the version); the filters work on plain copies.
"""

from collections.abc import Mapping


def plain(value):
    """A copy of ``value`` made of dict, list, str, int, float, bool and None only."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
