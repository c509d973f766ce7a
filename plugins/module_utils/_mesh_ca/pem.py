# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificates and keys as PEM: loading them, inspecting them, and writing them out.

Pure: bytes in, objects out and back. Works with the older cryptography
releases some controllers have (no ``*_utc`` dates, no bundle loader).
"""

import datetime
import re
from collections import namedtuple

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.crypto import (
    InvalidSignature,
    ec,
    serialization,
    x509,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_ca.errors import MeshCAError

# A loaded CA: the certificate that signs, its key, and every certificate of
# its file in order (the signing one first; empty for a CA made in this run).
CA = namedtuple("CA", ["cert", "key", "chain"])
PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_certificates(pem: bytes) -> list:
    """Every certificate in a PEM bundle, in order; ValueError when there is none."""
    blocks = PEM_CERT_RE.findall(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def load_private_key(pem: bytes):
    """An unencrypted PEM private key; ValueError or TypeError when it is not one."""
    return serialization.load_pem_private_key(pem, password=None)


def parse_ca(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str, now: datetime.datetime) -> CA:
    """The CA from its files' contents: the first certificate signs, the rest is its chain; it must be a
    CA, unexpired, and match the key. The paths only name the files in errors."""
    try:
        chain = load_certificates(cert_pem)
    except ValueError as error:
        raise MeshCAError("ca_cert_path %s: not a PEM certificate: %s" % (cert_path, error)) from error
    try:
        key = load_private_key(key_pem)
    except (ValueError, TypeError) as error:
        raise MeshCAError("ca_key_path %s: not an unencrypted PEM private key: %s" % (key_path, error)) from error
    cert = chain[0]
    if not same_key(key, cert.public_key()):
        raise MeshCAError("ca_key_path %s does not match the certificate in %s" % (key_path, cert_path))
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise MeshCAError("ca_cert_path %s: the first certificate is not a CA (basicConstraints CA:TRUE)" % cert_path)
    if not_after(cert) <= now:
        raise MeshCAError("ca_cert_path %s: the CA expired on %s" % (cert_path, not_after(cert).isoformat()))
    return CA(cert=cert, key=key, chain=tuple(chain))


def not_after(cert) -> datetime.datetime:
    """End of validity, as an aware UTC datetime."""
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def not_before(cert) -> datetime.datetime:
    """Start of validity, as an aware UTC datetime."""
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def same_key(private_key, public_key) -> bool:
    """Whether public_key is private_key's."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_key.public_key().public_bytes(*fmt) == public_key.public_bytes(*fmt)


def is_p256(key) -> bool:
    """Whether key is an EC P-256 private key, the only kind workloads get."""
    return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def self_signed(cert) -> bool:
    return cert.issuer == cert.subject


def issued_by(cert, ca_cert) -> bool:
    """Whether ca_cert signed cert (names and signature)."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        verify = getattr(cert, "verify_directly_issued_by", None)
        if verify is not None:
            verify(ca_cert)
        else:
            ca_cert.public_key().verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def sans(cert) -> tuple:
    """(URI SANs, DNS SANs) of cert, each a list in the certificate's order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
    )


def subject_key_identifier(cert):
    """cert's SubjectKeyIdentifier extension value, or None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None


def permitted_uri_hosts(cert):
    """The URI hosts a name-constrained CA may sign for; None when it is not constrained for URIs."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    hosts = [
        name.value for name in constraints.permitted_subtrees or () if isinstance(name, x509.UniformResourceIdentifier)
    ]
    return hosts or None


def certificate_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key) -> bytes:
    """key as unencrypted PKCS#8 PEM, the form Envoy and the agent read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def chain_pem(leaf, ca: CA) -> bytes:
    """Leaf, then every intermediate of the CA file (a self-signed root stays out of the chain)."""
    return b"".join([certificate_pem(leaf)] + [certificate_pem(cert) for cert in ca.chain if not self_signed(cert)])


def describe(cert) -> dict:
    """What mesh_certificate returns about a certificate."""
    uris, dns = sans(cert)
    return {
        "not_before": not_before(cert).isoformat(),
        "not_after": not_after(cert).isoformat(),
        "serial_number": "%x" % cert.serial_number,
        "uri_sans": uris,
        "dns_sans": dns,
    }


def ca_expires_within(ca: CA, now: datetime.datetime, days: int) -> bool:
    """True when the CA ends before a certificate issued now for days would."""
    return not_after(ca.cert) - now < datetime.timedelta(days=days)
