# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one error the registry raises: the host, the variable, the value and what is accepted."""

import json


def shown(value) -> str:
    """A value as an error message quotes it (JSON, so strings keep their quotes)."""
    return json.dumps(value, default=str, sort_keys=True)


class RegistryError(ValueError):
    """Bad registry data in the inventory."""

    def __init__(self, host, variable, value, expected):
        self.host = host
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__("host %r, %s: got %s; expected %s" % (host, variable, shown(value), expected))
