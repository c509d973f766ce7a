# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The standalone mesh's certificate authority, run on the controller.

``plan_certificate`` reads what exists and decides what should change (a CA to
create, a workload certificate to issue and why); ``apply_plan`` does it.
Check mode is a plan that is not applied. Workload certificates are SPIFFE
X.509-SVIDs: EC P-256 keys, the SPIFFE ID as the only URI SAN.
"""

import datetime
import os
import re
import tempfile
import time
import traceback
from collections import namedtuple

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([-A-Za-z0-9_]{0,62})(\.[A-Za-z0-9_][-A-Za-z0-9_]{0,62})*\.?$")
# Tolerate clocks on the hosts running a little behind the controller's.
BACKDATE = datetime.timedelta(minutes=5)
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

Request = namedtuple(
    "Request",
    [
        "ca_cert_path",
        "ca_key_path",
        "create_ca",
        "ca_common_name",
        "ca_days",
        "ca_name_constraints",
        "trust_domain",
        "namespace",
        "service_account",
        "dns_names",
        "cert_path",
        "key_path",
        "days",
        "renew_days",
        "force",
        "trust_bundle_path",
        "trust_extra",
    ],
)
REQUEST_DEFAULTS = {
    "create_ca": True,
    "ca_common_name": "hostmesh mesh CA",
    "ca_days": 3650,
    "ca_name_constraints": False,
    "trust_domain": "cluster.local",
    "namespace": "default",
    "service_account": None,
    "dns_names": (),
    "cert_path": None,
    "key_path": None,
    "days": 30,
    "renew_days": 10,
    "force": False,
    "trust_bundle_path": None,
    "trust_extra": (),
}

# ca: the loaded CA (None when it is still to be created); create_ca: whether
# apply creates it; reasons: why the workload certificate is (re-)issued, empty
# when the one in place is valid; current: the valid certificate in place;
# key_mode: why the key file's mode is put right, when only that is wrong.
Plan = namedtuple("Plan", ["request", "spiffe_id", "ca", "create_ca", "reasons", "current", "key_mode"])
CA = namedtuple("CA", ["cert", "key", "chain"])


class MeshCAError(Exception):
    """A request the CA cannot serve; the message names the option or file and the value."""


def spiffe_id(trust_domain, namespace, service_account):
    """The workload's identity, as the agent and the mesh_upstreams filter spell it."""
    return "spiffe://%s/ns/%s/sa/%s" % (trust_domain, namespace, service_account)


def make_request(params):
    """Check the options and return a Request; every error names the option and value."""
    values = dict(REQUEST_DEFAULTS)
    values.update({key: value for key, value in params.items() if value is not None and key in Request._fields})
    values["dns_names"] = tuple(values["dns_names"] or ())
    values["trust_extra"] = tuple(values["trust_extra"] or ())
    if values["trust_extra"] and not values["trust_bundle_path"]:
        raise MeshCAError("trust_extra: got %s; it needs trust_bundle_path to be set" % list(values["trust_extra"]))
    for key in ("ca_cert_path", "ca_key_path"):
        if not values.get(key):
            raise MeshCAError("%s is required" % key)
    for key in ("trust_domain", "namespace"):
        _check_name(key, values[key])
    issuing = values["cert_path"] is not None or values["key_path"] is not None
    if issuing:
        for key in ("cert_path", "key_path", "service_account"):
            if not values.get(key):
                raise MeshCAError("%s is required to issue a certificate (cert_path and key_path are set)" % key)
        _check_name("service_account", values["service_account"])
    for name in values["dns_names"]:
        if not isinstance(name, str) or not DNS_RE.match(name):
            raise MeshCAError("dns_names: got %r; expected DNS host names" % (name,))
    if not 1 <= values["days"] <= 3650:
        raise MeshCAError("days: got %r; expected 1 to 3650" % (values["days"],))
    if not 0 <= values["renew_days"] < values["days"]:
        raise MeshCAError(
            "renew_days: got %r; expected 0 or more and less than days (%r)" % (values["renew_days"], values["days"])
        )
    if not 1 <= values["ca_days"] <= 36500:
        raise MeshCAError("ca_days: got %r; expected 1 to 36500" % (values["ca_days"],))
    return Request(**values)


def _check_name(key, value):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise MeshCAError("%s: got %r; expected a lower-case DNS-style name (letters, digits, '-', '.')" % (key, value))


# --- reading ----------------------------------------------------------------


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise MeshCAError("%s: cannot read: %s" % (path, error)) from error


PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_certificates(pem):
    """Every certificate in a PEM bundle, in order (older cryptography has no bundle loader)."""
    blocks = PEM_CERT_RE.findall(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def _not_after(cert):
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _not_before(cert):
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def _same_key(private_key, public_key):
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_key.public_key().public_bytes(*fmt) == public_key.public_bytes(*fmt)


def _self_signed(cert):
    return cert.issuer == cert.subject


def load_ca(cert_path, key_path, now):
    """The CA from its files: the first certificate signs, the rest is its chain."""
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    if cert_pem is None or key_pem is None:
        missing = cert_path if cert_pem is None else key_path
        raise MeshCAError("CA file %s does not exist" % missing)
    try:
        chain = load_certificates(cert_pem)
    except ValueError as error:
        raise MeshCAError("ca_cert_path %s: not a PEM certificate: %s" % (cert_path, error)) from error
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise MeshCAError("ca_key_path %s: not an unencrypted PEM private key: %s" % (key_path, error)) from error
    cert = chain[0]
    if not _same_key(key, cert.public_key()):
        raise MeshCAError("ca_key_path %s does not match the certificate in %s" % (key_path, cert_path))
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise MeshCAError("ca_cert_path %s: the first certificate is not a CA (basicConstraints CA:TRUE)" % cert_path)
    if _not_after(cert) <= now:
        raise MeshCAError("ca_cert_path %s: the CA expired on %s" % (cert_path, _not_after(cert).isoformat()))
    return CA(cert=cert, key=key, chain=tuple(chain))


def certificate_problems(request, ca, cert_pem, key_pem, now):
    """Why the workload certificate in place must be re-issued; empty when it is fine."""
    wanted = spiffe_id(request.trust_domain, request.namespace, request.service_account)
    if cert_pem is None:
        return ["no certificate at %s" % request.cert_path]
    if key_pem is None:
        return ["no key at %s" % request.key_path]
    try:
        certs = load_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return ["certificate or key is not readable PEM"]
    cert = certs[0]
    problems = []
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        problems.append("key is not EC P-256")
    if not _same_key(key, cert.public_key()):
        problems.append("key does not match the certificate")
    if not _issued_by(cert, ca.cert):
        problems.append("not issued by the CA in %s" % request.ca_cert_path)
    uris, dns = _sans(cert)
    if uris != [wanted]:
        problems.append("URI SAN is %s; wanted %s" % (uris or "missing", wanted))
    if sorted(set(dns)) != sorted(set(request.dns_names)):
        problems.append("DNS SANs are %s; wanted %s" % (sorted(dns), sorted(set(request.dns_names))))
    if cert_pem != chain_pem(cert, ca):
        problems.append("certificate file does not hold the certificate followed by the CA chain")
    if _not_before(cert) > now:
        problems.append("not valid before %s" % _not_before(cert).isoformat())
    left = _not_after(cert) - now
    # A certificate capped at the CA's own expiry cannot be renewed for longer.
    if left < datetime.timedelta(days=request.renew_days) and _not_after(cert) < _not_after(ca.cert):
        problems.append(
            "expires in %.1f days (renewed with fewer than %d left)"
            % (left.total_seconds() / 86400, request.renew_days)
        )
    if request.force and not problems:
        problems.append("force is set")
    return problems


def _issued_by(cert, ca_cert):
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


def _sans(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
    )


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(leaf, ca):
    """Leaf, then every intermediate of the CA file (a self-signed root stays out of the chain)."""
    return b"".join([_pem(leaf)] + [_pem(cert) for cert in ca.chain if not _self_signed(cert)])


def plan_certificate(request, now):
    """Read the CA and the workload certificate in place and decide what to change."""
    wanted = spiffe_id(request.trust_domain, request.namespace, request.service_account or "")
    if os.path.exists(request.ca_key_path) and not os.path.exists(request.ca_cert_path):
        # The key is written first: another run may be creating the CA right now.
        _wait_for(request.ca_cert_path, seconds=10.0)
    ca_present = [os.path.exists(request.ca_cert_path), os.path.exists(request.ca_key_path)]
    if not any(ca_present):
        if not request.create_ca:
            raise MeshCAError(
                "the CA does not exist (ca_cert_path %s, ca_key_path %s) and create_ca is false"
                % (request.ca_cert_path, request.ca_key_path)
            )
        reasons = ["the CA is created"] if request.cert_path else []
        return Plan(request, wanted, None, True, reasons, None, None)
    if not all(ca_present):
        missing = request.ca_cert_path if not ca_present[0] else request.ca_key_path
        raise MeshCAError("CA file %s does not exist while its pair does; restore it or remove both" % missing)
    ca = load_ca(request.ca_cert_path, request.ca_key_path, now)
    if not request.cert_path:
        return Plan(request, wanted, ca, False, [], None, None)
    _check_uri_constraints(ca, request)
    cert_pem, key_pem = _read(request.cert_path), _read(request.key_path)
    reasons = certificate_problems(request, ca, cert_pem, key_pem, now)
    if reasons:
        return Plan(request, wanted, ca, False, reasons, None, None)
    current = load_certificates(cert_pem)[0]
    return Plan(request, wanted, ca, False, [], current, key_mode_problem(request.key_path))


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


def _uri_host_permitted(host, permitted):
    # RFC 5280: "example.com" is that host only; ".example.com" any host below it.
    return any(host == p or (p.startswith(".") and host.endswith(p)) for p in permitted)


def _check_uri_constraints(ca, request):
    """Refuse to issue what peers would reject: a SPIFFE ID outside the CA's name constraints."""
    for cert in ca.chain:
        permitted = permitted_uri_hosts(cert)
        if permitted is not None and not _uri_host_permitted(request.trust_domain, permitted):
            raise MeshCAError(
                "trust_domain: got %r; the CA in %s may only sign URIs in %s (name constraints)"
                % (request.trust_domain, request.ca_cert_path, ", ".join(permitted))
            )


def trust_bundle(request):
    """The certificates peers trust: the CA file's, then each extra file's, each once."""
    sources = [("ca_cert_path", request.ca_cert_path)] + [("trust_extra", path) for path in request.trust_extra]
    seen = set()
    blocks = []
    for option, path in sources:
        pem = _read(path)
        if pem is None:
            raise MeshCAError("%s: %s does not exist" % (option, path))
        try:
            certs = load_certificates(pem)
        except ValueError as error:
            raise MeshCAError("%s: %s is not a PEM certificate: %s" % (option, path, error)) from error
        for cert in certs:
            fingerprint = cert.fingerprint(hashes.SHA256())
            if fingerprint not in seen:
                seen.add(fingerprint)
                blocks.append(_pem(cert))
    return b"".join(blocks)


def plan_bundle(request):
    """(content, changed) of the trust bundle; content is None while the CA is still to be created."""
    if not request.trust_bundle_path:
        return None, False
    if not os.path.exists(request.ca_cert_path):
        for path in request.trust_extra:
            if not os.path.exists(path):
                raise MeshCAError("trust_extra: %s does not exist" % path)
        return None, True
    content = trust_bundle(request)
    return content, _read(request.trust_bundle_path) != content


def write_bundle(request):
    """Write the trust bundle if it differs; True when it was written."""
    content, differs = plan_bundle(request)
    if differs:
        write_file(request.trust_bundle_path, content, CERT_MODE)
    return differs


# --- making -----------------------------------------------------------------


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(request, now, key=None):
    """A self-signed EC P-256 root for the trust domain, allowed to sign workload certificates only."""
    key = key or new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, request.trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, request.ca_common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=request.ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
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


def issue(request, ca, key, now):
    """A workload certificate (X.509-SVID) for the request's SPIFFE ID, signed by ca."""
    not_after = min(now + datetime.timedelta(days=request.days), _not_after(ca.cert))
    uri = spiffe_id(request.trust_domain, request.namespace, request.service_account)
    names = [x509.UniformResourceIdentifier(uri)] + [x509.DNSName(name) for name in sorted(set(request.dns_names))]
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value if _has_ski(ca.cert) else None
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        if ski is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())
    )
    builder = (
        x509.CertificateBuilder()
        # SPIFFE puts the identity in the SAN; the subject only helps people reading it.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, request.trust_domain)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, _not_before(ca.cert)))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def _has_ski(cert):
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True


# --- writing ----------------------------------------------------------------


def write_file(path, content, mode):
    """Replace path atomically with content, created with mode from the start (keys are never world-readable)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE)
    handle, temp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _create_ca_exclusive(request, now):
    """Create the CA unless another run just did; the key is linked in place so only one run wins."""
    ca = new_ca(request, now)
    ca_key_pem = private_key_pem(ca.key)
    directory = os.path.dirname(os.path.abspath(request.ca_key_path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE)
    handle, temp = tempfile.mkstemp(prefix=".ca-key.", dir=directory)
    try:
        os.fchmod(handle, KEY_MODE)
        with os.fdopen(handle, "wb") as stream:
            stream.write(ca_key_pem)
        try:
            os.link(temp, request.ca_key_path)
        except FileExistsError:
            return False
    finally:
        os.unlink(temp)
    write_file(request.ca_cert_path, _pem(ca.cert), CERT_MODE)
    return True


def changed(plan):
    return bool(plan.create_ca or plan.reasons or plan.key_mode)


def _wait_for(path, seconds=30.0):
    """Another run won the race to create the CA; give it time to write the certificate."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)


def apply_plan(plan, now):
    """Create the CA and issue the certificate as planned; returns (ca, certificate or None, ca_created)."""
    request = plan.request
    ca = plan.ca
    created = False
    if plan.create_ca:
        created = _create_ca_exclusive(request, now)
        if not created:
            _wait_for(request.ca_cert_path)
        ca = load_ca(request.ca_cert_path, request.ca_key_path, now)
    if not request.cert_path:
        return ca, None, created
    if not plan.reasons:
        if plan.key_mode:
            os.chmod(request.key_path, KEY_MODE)
        return ca, plan.current, created
    key = new_key()
    cert = issue(request, ca, key, now)
    # Key first: a reader that sees the new certificate also finds its key.
    write_file(request.key_path, private_key_pem(key), KEY_MODE)
    write_file(request.cert_path, chain_pem(cert, ca), CERT_MODE)
    return ca, cert, created


def ca_expires_within(ca, now, days):
    """True when the CA ends before a certificate issued now would."""
    return _not_after(ca.cert) - now < datetime.timedelta(days=days)


def describe(cert):
    """What the module returns about a certificate."""
    uris, dns = _sans(cert)
    return {
        "not_before": _not_before(cert).isoformat(),
        "not_after": _not_after(cert).isoformat(),
        "serial_number": "%x" % cert.serial_number,
        "uri_sans": uris,
        "dns_sans": dns,
    }


def key_mode_problem(path):
    """A reason when the key file is readable by others than its owner."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    return None if mode == KEY_MODE else "key mode is %04o; wanted %04o" % (mode, KEY_MODE)
