# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one error the mesh CA raises, so mesh_certificate can report it as a failed task."""


class MeshCAError(Exception):
    """A request the CA cannot serve; the message names the option or file and the value."""
