"""Metrics the merged endpoint adds about the mesh: policy counters and the certificate's expiry.

The allowed/denied counts are Envoy's own RBAC stats (exact, whatever the access log
does), read through the admin socket at scrape time and given one ``service`` label;
Envoy keeps them across hot restarts. The expiry is read from the certificate file at
each scrape, so a rotation shows at once.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

from hostmesh_agent.admin import AdminError, EnvoyAdmin
from hostmesh_agent.certificate import CertificateError, read_not_after
from hostmesh_agent.config import Config
from hostmesh_agent.policy import has_policy, network_stat_prefix
from hostmesh_agent.prometheus_text import family
from hostmesh_agent.resources import inbound_cluster_name

log = logging.getLogger(__name__)

RBAC_METRICS = {
    "allowed": ("hostmesh_rbac_allowed_total", "Connections (tcp) or requests (http) a service's policy let through."),
    "denied": ("hostmesh_rbac_denied_total", "Connections (tcp) or requests (http) a service's policy refused."),
}
EXPIRY_METRIC = "hostmesh_agent_certificate_expiry_timestamp_seconds"


def rbac_stat_names(cfg: Config) -> Dict[str, Tuple[str, str]]:
    """Envoy stat name -> (service, "allowed" | "denied"), for every service with a policy."""
    names: Dict[str, Tuple[str, str]] = {}
    for svc in cfg.inbound.services:
        if cfg.mode != "standalone" or not has_policy(cfg, svc):
            continue
        cluster = inbound_cluster_name(svc)
        prefix = f"http.{cluster}." if svc.protocol == "http" else network_stat_prefix(cluster)
        for outcome in RBAC_METRICS:
            names[f"{prefix}rbac.{outcome}"] = (svc.name, outcome)
    return names


def render_rbac(names: Dict[str, Tuple[str, str]], stats: Dict[str, int]) -> str:
    """The two counter families from Envoy's stats; a service Envoy has not reported yet is left out."""
    lines: List[str] = []
    for outcome, (metric, help_text) in RBAC_METRICS.items():
        samples = [
            ((("service", svc),), stats[name])
            for name, (svc, what) in names.items()
            if what == outcome and name in stats
        ]
        lines += family(metric, "counter", help_text, samples)
    return "\n".join(lines) + "\n" if lines else ""


def rbac_metrics(cfg: Config, admin: EnvoyAdmin) -> str:
    names = rbac_stat_names(cfg)
    if not names:
        return ""
    try:
        stats = admin.stats(tuple(names))
    except AdminError as exc:
        log.debug("envoy RBAC stats unavailable: %s", exc)
        return ""
    return render_rbac(names, stats)


def certificate_expiry(cfg: Config) -> str:
    """The workload certificate's notAfter, in seconds since the epoch (nothing without ``tls``)."""
    if not cfg.tls.configured:
        return ""
    try:
        expiry = read_not_after(cfg.tls.cert_file)
    except (OSError, CertificateError) as exc:
        log.debug("cannot read the expiry of %s: %s", cfg.tls.cert_file, exc)
        return ""
    help_text = "When the workload certificate (tls.cert_file) expires, in seconds since the epoch."
    return "\n".join(family(EXPIRY_METRIC, "gauge", help_text, [((), expiry)])) + "\n"
