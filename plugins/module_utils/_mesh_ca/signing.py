# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Making keys and certificates: the mesh's self-signed CA and the workload certificates it signs.

Workload certificates are SPIFFE X.509-SVIDs: EC P-256 keys, the SPIFFE ID as
the only URI SAN. No I/O: callers write the results (files.py).
"""

import datetime

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.crypto import (
    ExtendedKeyUsageOID,
    NameOID,
    ec,
    hashes,
    x509,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.pem import (
    CA,
    not_after,
    not_before,
    subject_key_identifier,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_identity import spiffe_id

# Tolerate clocks on the hosts running a little behind the controller's.
BACKDATE = datetime.timedelta(minutes=5)
# Every flag of an X.509 key usage: cryptography wants each one spelt out.
KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def new_key():
    """A new EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(request, now: datetime.datetime, key=None) -> CA:
    """A self-signed EC P-256 root for the trust domain, allowed to sign workload certificates only."""
    key = key or new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, request.trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, request.ca_common_name),
        ]
    )
    builder = (
        _certificate(name, name, key.public_key(), now - BACKDATE, now + datetime.timedelta(days=request.ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if request.ca_name_constraints:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(request.trust_domain)], excluded_subtrees=None
            ),
            critical=True,
        )
    return CA(cert=builder.sign(key, hashes.SHA256()), key=key, chain=())


def issue(request, ca: CA, key, now: datetime.datetime):
    """A workload certificate (X.509-SVID) for the request's SPIFFE ID and key, signed by ca."""
    uri = spiffe_id(request.trust_domain, request.namespace, request.service_account)
    names = [x509.UniformResourceIdentifier(uri)] + [x509.DNSName(name) for name in sorted(set(request.dns_names))]
    ski = subject_key_identifier(ca.cert)
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        if ski is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())
    )
    # SPIFFE puts the identity in the SAN; the subject only helps people reading it.
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, request.trust_domain)])
    builder = (
        _certificate(
            subject,
            ca.cert.subject,
            key.public_key(),
            max(now - BACKDATE, not_before(ca.cert)),
            min(now + datetime.timedelta(days=request.days), not_after(ca.cert)),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def _certificate(subject, issuer, public_key, valid_from, valid_until):
    """A certificate builder with what every certificate here has: names, key, a random serial, validity."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
    )


def _key_usage(*allowed):
    """A key usage extension allowing only the usages named."""
    return x509.KeyUsage(**{usage: usage in allowed for usage in KEY_USAGES})
