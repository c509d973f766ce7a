# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The standalone mesh's registry, computed once from the inventory: pure functions, no I/O.

``hosts`` reads one host's variables, ``resilience`` checks and merges the
per-service settings, ``vips`` allocates virtual IPs, ``registry`` puts them
together and cuts one host's slice (the agent's ``outbound.services``).
"""
