# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Who a workload is in the standalone mesh: the names that make it up and its SPIFFE ID.

The mesh filters and the mesh CA read these from here. The agent on the hosts
cannot import collection code and keeps its own copy; a unit test holds the
two to the same rule and the same spelling.
"""

import re

# Trust domains, namespaces, service accounts and service names: lower-case
# DNS-style labels, dots allowed.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# What an error says is accepted where NAME_RE refused a value.
NAME_EXPECTED = "a lower-case DNS-style name (letters, digits, '-', '.')"


def is_name(value: object) -> bool:
    """Whether value may be a trust domain, namespace, service account or service name."""
    return isinstance(value, str) and NAME_RE.match(value) is not None


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID a workload's certificate carries and its peers expect."""
    return "spiffe://%s/ns/%s/sa/%s" % (trust_domain, namespace, service_account)
