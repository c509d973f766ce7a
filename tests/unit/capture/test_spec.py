"""One spec: traffic_capture's DOCUMENTATION, its argument spec, the option defaults and host_state's check agree."""

import ast
import os

import pytest
import yaml

from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.errors import OptionError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.options import (
    DEFAULTS,
    CaptureOptions,
    parse_options,
)
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.rules import build_family, tables_used
from ansible_collections.hostmesh.sidecar.plugins.module_utils._capture.spec import (
    capture_argument_spec,
    validate_params,
)

MODULE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "plugins",
    "modules",
    "traffic_capture.py",
)
# What Ansible assumes when the documentation or spec leaves a key out.
IMPLIED = {"type": "str", "default": None, "elements": None, "choices": None, "aliases": None, "required": False}


def documented_options():
    with open(MODULE) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["DOCUMENTATION"]:
            return yaml.safe_load(node.value.value)["options"]
    raise AssertionError("no DOCUMENTATION in %s" % MODULE)


def facts(entry):
    return {key: entry.get(key, implied) for key, implied in IMPLIED.items()}


def test_documentation_and_spec_name_the_same_options():
    assert sorted(documented_options()) == sorted(capture_argument_spec())


@pytest.mark.parametrize("name", sorted(capture_argument_spec()))
def test_documentation_and_spec_agree_on_each_option(name):
    documented = facts(documented_options()[name])
    specified = facts(capture_argument_spec()[name])
    assert documented == specified


def test_defaults_and_option_fields_come_from_the_spec():
    spec = capture_argument_spec()
    assert {name: entry.get("default") for name, entry in spec.items()} == DEFAULTS
    assert CaptureOptions._fields == (*spec, "ssh_port")


def test_each_call_gives_a_fresh_spec():
    first = capture_argument_spec()
    first["proxy_uid"]["default"].append(0)
    first["mode"]["choices"].append("magic")
    assert capture_argument_spec()["proxy_uid"]["default"] == [1337]
    assert capture_argument_spec()["mode"]["choices"] == ["redirect", "tproxy"]


def test_validation_types_and_completes_like_the_module():
    params = validate_params({"proxy_port": "15001", "dns_redirect": "yes", "inbound_ports": "80,443"})
    assert params["proxy_port"] == 15001 and params["dns_redirect"] is True
    assert params["inbound_ports"] == ["80", "443"]
    assert params["mode"] == "redirect" and params["rules_file"] is None
    assert set(params) == set(capture_argument_spec())


@pytest.mark.parametrize(
    ("params", "option", "value"),
    [
        ({"mode": "sideways"}, "mode", "sideways"),
        ({"proxy_port": "abc"}, "proxy_port", "abc"),
        ({"mode": "redirect", "dns_redirect": "perhaps"}, "dns_redirect", "perhaps"),
        ({"backend": "pf", "lock_wait": 3}, "backend", "pf"),
    ],
)
def test_validation_names_the_option_and_value(params, option, value):
    with pytest.raises(OptionError) as caught:
        validate_params(params)
    assert (caught.value.option, caught.value.value) == (option, value)
    assert str(caught.value).startswith("%s: %r is not valid; " % (option, value))


COMBINATIONS = [
    {},
    {"mode": "tproxy"},
    {"mode": "tproxy", "inbound_ports": []},
    {"inbound_ports": []},
    {"drop_invalid": True},
    {"dns_redirect": True},
    {"mode": "tproxy", "dns_redirect": True, "dns_capture_all": True, "drop_invalid": True},
]


@pytest.mark.parametrize("params", COMBINATIONS, ids=[repr(p) for p in COMBINATIONS])
def test_tables_used_is_what_the_builder_fills(params):
    options = parse_options(params)[0]
    for family in ("ipv4", "ipv6"):
        built = build_family(options, family, ("10.0.0.53",) if family == "ipv4" else ("fd00::53",))
        assert tables_used(options) == frozenset(built.tables())
