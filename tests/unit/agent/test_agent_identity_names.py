"""The agent's names and SPIFFE IDs agree with the controller's (_mesh_identity).

The agent runs on hosts with the standard library only and cannot import the
collection, so it keeps its own copy of the name rule and of the SPIFFE ID
format; these tests fail as soon as either copy drifts from the other.
"""

from __future__ import annotations

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _mesh_identity as identity
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
