# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The standalone mesh's certificate authority, run on the controller.

``plan_certificate`` reads what exists and decides what should change (a CA to
create, a workload certificate to issue and why); ``apply_plan`` does it.
``plan_workloads``/``apply_workloads`` do the same for many workloads against
one CA, checked once. Check mode is a plan that is not applied. Workload
certificates are SPIFFE X.509-SVIDs: EC P-256 keys, the SPIFFE ID as the only
URI SAN. ``plan_private_dir``/``apply_private_dir`` keep the directory holding
the keys private.
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
# Many workloads against one CA: base holds the shared CA options, ca and
# create_ca are read once, plans is ((name, Plan), ...) in the caller's order.
BatchPlan = namedtuple("BatchPlan", ["base", "ca", "create_ca", "plans"])


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
    _check_dns_names("dns_names", values["dns_names"])
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


def _check_dns_names(key, names):
    for name in names:
        if not isinstance(name, str) or not DNS_RE.match(name):
            raise MeshCAError("%s: got %r; expected DNS host names" % (key, name))


# --- many workloads ---------------------------------------------------------

# name: the caller's label for the workload (an inventory host name, say);
# request: the shared CA options with this workload's identity and files.
Workload = namedtuple("Workload", ["name", "request"])
WORKLOAD_REQUIRED = ("name", "service_account", "cert_path", "key_path")
WORKLOAD_KEYS = (*WORKLOAD_REQUIRED, "namespace", "dns_names", "force")
# Options that describe one workload: given per entry of workloads instead.
SINGLE_ONLY = ("service_account", "cert_path", "key_path")


def make_workloads(base, items):
    """One checked Workload per entry of workloads, sharing base's CA options; errors name workloads[i].<key>."""
    _check_batch_options(base)
    if not isinstance(items, (list, tuple)):
        raise MeshCAError("workloads: got %r; expected a list of mappings" % (items,))
    workloads = []
    names = {}
    for index, item in enumerate(items):
        workload = _make_workload(base, "workloads[%d]" % index, item)
        if workload.name in names:
            raise MeshCAError(
                "workloads[%d].name: got %r; %s has that name already, names must be unique"
                % (index, workload.name, names[workload.name])
            )
        names[workload.name] = "workloads[%d]" % index
        workloads.append(workload)
    _check_files_unique(workloads)
    return workloads


def _check_batch_options(base):
    for key in SINGLE_ONLY:
        if getattr(base, key):
            raise MeshCAError("%s: got %r; with workloads, set it in each workload instead" % (key, getattr(base, key)))
    if base.dns_names:
        raise MeshCAError("dns_names: got %s; with workloads, set it in each workload instead" % list(base.dns_names))
    if base.force:
        raise MeshCAError("force: got True; with workloads, set it in each workload instead")


def _make_workload(base, where, item):
    if not isinstance(item, dict):
        raise MeshCAError("%s: got %r; expected a mapping with %s" % (where, item, ", ".join(WORKLOAD_REQUIRED)))
    unknown = sorted(set(item) - set(WORKLOAD_KEYS))
    if unknown:
        raise MeshCAError("%s: unknown keys %s; expected some of %s" % (where, unknown, ", ".join(WORKLOAD_KEYS)))
    for key in WORKLOAD_REQUIRED:
        if item.get(key) in (None, ""):
            raise MeshCAError("%s.%s is required (got %r)" % (where, key, item.get(key)))
    for key in ("name", "cert_path", "key_path"):
        if not isinstance(item[key], str):
            raise MeshCAError("%s.%s: got %r; expected a string" % (where, key, item[key]))
    namespace = base.namespace if item.get("namespace") is None else item["namespace"]
    _check_name(where + ".namespace", namespace)
    _check_name(where + ".service_account", item["service_account"])
    dns_names = item.get("dns_names") or ()
    if not isinstance(dns_names, (list, tuple)):
        raise MeshCAError("%s.dns_names: got %r; expected a list of DNS host names" % (where, dns_names))
    _check_dns_names(where + ".dns_names", dns_names)
    force = item.get("force")
    if force is not None and not isinstance(force, bool):
        raise MeshCAError("%s.force: got %r; expected true or false" % (where, force))
    request = base._replace(
        namespace=namespace,
        service_account=item["service_account"],
        dns_names=tuple(dns_names),
        cert_path=item["cert_path"],
        key_path=item["key_path"],
        force=bool(force),
    )
    return Workload(item["name"], request)


def _check_files_unique(workloads):
    """Two workloads writing one file would replace each other's certificate on every run."""
    owners = {}
    for index, workload in enumerate(workloads):
        for key in ("cert_path", "key_path"):
            path = getattr(workload.request, key)
            where = "workloads[%d].%s" % (index, key)
            real = os.path.abspath(path)
            if real in owners:
                raise MeshCAError("%s: got %r; %s names the same file" % (where, path, owners[real]))
            owners[real] = where


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
    ca, create_ca = plan_ca(request, now)
    return plan_workload(request, ca, create_ca, now)


def plan_ca(request, now):
    """(the CA, None while it is still to be created; whether to create it)."""
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
        return None, True
    if not all(ca_present):
        missing = request.ca_cert_path if not ca_present[0] else request.ca_key_path
        raise MeshCAError("CA file %s does not exist while its pair does; restore it or remove both" % missing)
    return load_ca(request.ca_cert_path, request.ca_key_path, now), False


def plan_workload(request, ca, create_ca, now):
    """Decide about the request's workload certificate, given the CA plan_ca found."""
    wanted = spiffe_id(request.trust_domain, request.namespace, request.service_account or "")
    if create_ca:
        reasons = ["the CA is created"] if request.cert_path else []
        return Plan(request, wanted, None, True, reasons, None, None)
    if not request.cert_path:
        return Plan(request, wanted, ca, False, [], None, None)
    _check_uri_constraints(ca, request)
    cert_pem, key_pem = _read(request.cert_path), _read(request.key_path)
    reasons = certificate_problems(request, ca, cert_pem, key_pem, now)
    if reasons:
        return Plan(request, wanted, ca, False, reasons, None, None)
    current = load_certificates(cert_pem)[0]
    return Plan(request, wanted, ca, False, [], current, key_mode_problem(request.key_path))


def plan_workloads(base, workloads, now):
    """The CA read (or planned) once from base, then a Plan per workload, in order."""
    ca, create_ca = plan_ca(base, now)
    plans = tuple((workload.name, plan_workload(workload.request, ca, create_ca, now)) for workload in workloads)
    return BatchPlan(base, ca, create_ca, plans)


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
    make_private_dirs(directory)
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


def make_private_dirs(directory):
    """Create directory and every missing parent with mode 0700 (os.makedirs gives parents the default mode)."""
    directory = os.path.abspath(directory)
    if os.path.isdir(directory):
        return
    make_private_dirs(os.path.dirname(directory))
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise


def _create_ca_exclusive(request, now):
    """Create the CA unless another run just did; the key is linked in place so only one run wins."""
    ca = new_ca(request, now)
    ca_key_pem = private_key_pem(ca.key)
    directory = os.path.dirname(os.path.abspath(request.ca_key_path))
    make_private_dirs(directory)
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
    ca, created = apply_ca(plan.request, plan.ca, plan.create_ca, now)
    return ca, apply_workload(plan, ca, now), created


def apply_ca(request, ca, create_ca, now):
    """Create the CA when planned (unless another run just did); returns (ca, ca_created)."""
    if not create_ca:
        return ca, False
    created = _create_ca_exclusive(request, now)
    if not created:
        _wait_for(request.ca_cert_path)
    return load_ca(request.ca_cert_path, request.ca_key_path, now), created


def apply_workload(plan, ca, now):
    """Issue, fix or keep the planned workload certificate, signed by ca; returns it (None without cert_path)."""
    request = plan.request
    if not request.cert_path:
        return None
    if not plan.reasons:
        if plan.key_mode:
            os.chmod(request.key_path, KEY_MODE)
        return plan.current
    key = new_key()
    cert = issue(request, ca, key, now)
    # Key first: a reader that sees the new certificate also finds its key.
    write_file(request.key_path, private_key_pem(key), KEY_MODE)
    write_file(request.cert_path, chain_pem(cert, ca), CERT_MODE)
    return cert


def apply_workloads(batch, now):
    """Apply a BatchPlan: the CA once, then each workload; returns (ca, ca_created, [(name, certificate)])."""
    ca, created = apply_ca(batch.base, batch.ca, batch.create_ca, now)
    return ca, created, [(name, apply_workload(plan, ca, now)) for name, plan in batch.plans]


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


# --- the private directory --------------------------------------------------

GITIGNORE = b"# Private keys of the mesh CA and hosts: never commit or share.\n*\n"
GITIGNORE_MODE = 0o600
# kind: "mkdir", "chmod" or "write"; reason: what is wrong, as reported.
DirAction = namedtuple("DirAction", ["kind", "path", "mode", "reason"])


def plan_private_dir(path, files=()):
    """What keeping path private takes: mode 0700, a .gitignore of everything, and 0700 on the
    directories below it that hold files (paths in files). Empty when all is as it should be."""
    gitignore = os.path.join(path, ".gitignore")
    if not os.path.exists(path):
        return [
            DirAction("mkdir", path, DIR_MODE, "%s does not exist" % path),
            DirAction("write", gitignore, GITIGNORE_MODE, "%s does not exist" % gitignore),
        ]
    if not os.path.isdir(path):
        raise MeshCAError("private_dir: got %r; it exists and is not a directory" % path)
    actions = [_chmod_action(directory, DIR_MODE) for directory in [path, *_dirs_below(path, files)]]
    content = _read(gitignore)
    if content != GITIGNORE:
        reason = "%s does not exist" % gitignore if content is None else "%s differs" % gitignore
        actions.append(DirAction("write", gitignore, GITIGNORE_MODE, reason))
    else:
        actions.append(_chmod_action(gitignore, GITIGNORE_MODE))
    return [action for action in actions if action is not None]


def _chmod_action(path, mode):
    try:
        current = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None
    if current == mode:
        return None
    return DirAction("chmod", path, mode, "%s mode is %04o; wanted %04o" % (path, current, mode))


def _dirs_below(top, files):
    """The directories strictly below top on the way to each of files, outermost first."""
    top = os.path.abspath(top)
    found = []
    for path in files:
        directory = os.path.dirname(os.path.abspath(path))
        chain = []
        while directory != top and os.path.dirname(directory) != directory:
            chain.append(directory)
            directory = os.path.dirname(directory)
        if directory == top:
            found.extend(d for d in reversed(chain) if d not in found)
    return found


def apply_private_dir(actions):
    """Carry out plan_private_dir's actions."""
    for action in actions:
        if action.kind == "mkdir":
            make_private_dirs(action.path)
            os.chmod(action.path, action.mode)
        elif action.kind == "chmod":
            os.chmod(action.path, action.mode)
        else:
            write_file(action.path, GITIGNORE, action.mode)
