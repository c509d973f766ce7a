# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Two lists of rule lines compared as multisets: what one has that the other has not.

A line listed twice where it is wanted once counts as a difference, as it
does on the host.
"""

from collections import Counter


def minus(lines, other):
    """``lines`` not in ``other``, counting repeats, in ``lines``' order."""
    left = Counter(other)
    out = []
    for line in lines:
        if left[line]:
            left[line] -= 1
        else:
            out.append(line)
    return out


def added_removed(before, after):
    """(added, removed): the lines of ``after`` that ``before`` lacks, and those of ``before`` that ``after`` lacks."""
    return minus(after, before), minus(before, after)
