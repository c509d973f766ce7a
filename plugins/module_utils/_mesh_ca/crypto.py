# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cryptography library, imported here only.

A controller without it then gets missing_required_lib from mesh_certificate
instead of a traceback; the names below are None there, and nothing else of
the mesh CA runs.
"""

import traceback

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
    x509 = InvalidSignature = hashes = serialization = ec = ExtendedKeyUsageOID = NameOID = None
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

__all__ = [
    "CRYPTOGRAPHY_IMPORT_ERROR",
    "HAS_CRYPTOGRAPHY",
    "ExtendedKeyUsageOID",
    "InvalidSignature",
    "NameOID",
    "ec",
    "hashes",
    "serialization",
    "x509",
]
