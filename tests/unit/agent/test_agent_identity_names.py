"""The agent's names, SPIFFE IDs and resilience words agree with the controller's.

The agent runs on hosts with the standard library only and cannot import the
collection, so it keeps its own copy of the name rule, of the SPIFFE ID
format (_mesh_identity) and of the load-balancing, health-check and retry
words (_mesh_registry.resilience); these tests fail as soon as either copy drifts from the other.
"""

from __future__ import annotations

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _mesh_identity as identity
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh_registry import resilience
from hostmesh_agent import config as agent_config
from hostmesh_agent.config import ConfigError, parse_config

SAMPLES = [
    "web",
    "web-1",
    "a",
    "0",
    "cluster.local",
    "corp.example.org",
    "a-b.c-d",
    "x" * 63,
    "",
    "Web",
    "web_1",
    "-web",
    "web-",
    ".web",
    "web.",
    "we b",
    "wéb",
    "spiffe://x",
]
# The three config keys that make up a SPIFFE ID, as the agent spells them.
IDENTITY_KEYS = {
    "trust_domain": lambda name: {"trust_domain": name},
    "node.namespace": lambda name: {"node": {"namespace": name}},
    "node.service_account": lambda name: {"node": {"service_account": name}},
}


def agent_accepts(doc: dict) -> bool:
    try:
        parse_config(doc)
    except ConfigError:
        return False
    return True


def test_the_agent_keeps_the_controllers_name_rule_to_the_letter():
    assert agent_config._NAME_RE.pattern == identity.NAME_RE.pattern
    assert agent_config._NAME_RE.flags == identity.NAME_RE.flags


@pytest.mark.parametrize("key", sorted(IDENTITY_KEYS))
@pytest.mark.parametrize("name", SAMPLES)
def test_the_agent_accepts_exactly_the_names_the_controller_accepts(key, name):
    assert agent_accepts(IDENTITY_KEYS[key](name)) is identity.is_name(name)


def test_the_samples_hold_names_of_both_kinds():
    verdicts = {identity.is_name(name) for name in SAMPLES}
    assert verdicts == {True, False}


@pytest.mark.parametrize(
    ("trust_domain", "namespace", "service_account"),
    [("cluster.local", "default", "default"), ("corp.example", "prod", "web-1"), ("a", "b", "c")],
)
def test_the_agent_spells_the_spiffe_id_as_the_controller_does(trust_domain, namespace, service_account):
    cfg = parse_config(
        {"trust_domain": trust_domain, "node": {"namespace": namespace, "service_account": service_account}}
    )
    assert agent_config.spiffe_id(cfg) == identity.spiffe_id(trust_domain, namespace, service_account)


@pytest.mark.parametrize("name", ["LB_POLICIES", "HEALTH_CHECK_TYPES", "RETRY_ON"])
def test_the_agent_accepts_the_resilience_words_the_registry_accepts(name):
    assert getattr(agent_config, name) == getattr(resilience, name)
