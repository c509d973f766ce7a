"""``inbound.interception``: what changes for Envoy when the capture rules use TPROXY.

The dynamic resources are checked against ``golden/dynamic-tproxy.json``
(regenerate with ``HOSTMESH_UPDATE_GOLDEN=1``, as test_agent_rendering.py says).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_agent_rendering import RUN, STANDALONE, check_golden

from hostmesh_agent.bootstrap import render_bootstrap
from hostmesh_agent.cli import CAP_NET_ADMIN, has_capability
from hostmesh_agent.config import ConfigError, parse_config
from hostmesh_agent.proxy import EnvoyProxy
from hostmesh_agent.resources import (
    INBOUND_LISTENER,
    INBOUND_PASSTHROUGH,
    OUTBOUND_LISTENER,
    OUTBOUND_PASSTHROUGH,
    render_dynamic,
)

TPROXY = {**STANDALONE, "inbound": {**STANDALONE["inbound"], "interception": "tproxy"}}


def _by_name(files, path):
    return {r["name"]: r for r in files[path]["resources"]}


def _not_inbound(clusters):
    return {k: v for k, v in clusters.items() if not k.lower().startswith("inbound")}


def test_default_is_redirect():
    cfg = parse_config({})
    assert (cfg.inbound.interception, cfg.inbound.tproxy_mark, cfg.inbound.tproxy) == ("redirect", 1337, False)
    assert parse_config({"inbound": {"interception": "tproxy"}}).inbound.tproxy


@pytest.mark.parametrize(
    ("inbound", "message"),
    [
        (
            {"interception": "nat"},
            'config key \'inbound.interception\': got "nat"; expected one of "redirect", "tproxy"',
        ),
        ({"interception": "TPROXY"}, "'inbound.interception': got \"TPROXY\""),
        ({"tproxy_mark": 0}, "config key 'inbound.tproxy_mark': got 0; expected an integer from 1 to 4294967295"),
        ({"tproxy_mark": 2**32}, "'inbound.tproxy_mark': got 4294967296"),
        ({"tproxy_mark": "1337"}, "'inbound.tproxy_mark': got \"1337\""),
        (
            {"interception": "tproxy", "app_address": "10.0.0.5"},
            "config key 'inbound.app_address': got \"10.0.0.5\"; expected it left out when "
            "'inbound.interception' is \"tproxy\"",
        ),
        (
            {"interception": "tproxy", "source_address": "127.0.0.7"},
            "config key 'inbound.source_address': got \"127.0.0.7\"; expected it left out",
        ),
    ],
)
def test_errors_name_the_key_and_value(inbound, message):
    with pytest.raises(ConfigError) as exc:
        parse_config({"inbound": inbound})
    assert message in str(exc.value)


def test_redirect_mode_keeps_its_addresses():
    cfg = parse_config({"inbound": {"interception": "redirect", "app_address": "10.0.0.5"}})
    assert cfg.inbound.app_address == "10.0.0.5"


def test_tproxy_dynamic_resources_golden():
    check_golden("dynamic-tproxy.json", render_dynamic(parse_config(TPROXY), RUN, tls_fingerprint="f00d"))


def test_tproxy_inbound_listener_is_transparent_and_keeps_the_client_address():
    cfg = parse_config({**TPROXY, "inbound": {**TPROXY["inbound"], "tproxy_mark": 4242}})
    files = render_dynamic(cfg, RUN)
    listeners = _by_name(files, RUN.lds)
    inbound = listeners[INBOUND_LISTENER]
    assert inbound["transparent"] is True
    filters = [f["name"] for f in inbound["listener_filters"]]
    assert filters == ["envoy.filters.listener.original_dst", "envoy.filters.listener.original_src"]
    assert inbound["listener_filters"][1]["typed_config"]["mark"] == 4242
    # Outbound stays REDIRECT (nat) in the capture module's tproxy mode: nothing transparent there.
    assert "transparent" not in listeners[OUTBOUND_LISTENER]

    clusters = _by_name(files, RUN.cds)
    for name, port in (("inbound|8080||web", 8080), ("inbound|9090||api", 9091)):
        cluster = clusters[name]
        # To the address the client dialed, on the application's port, from the client's address.
        assert (cluster["type"], cluster["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
        assert cluster["original_dst_lb_config"] == {"upstream_port_override": port}
        assert "upstream_bind_config" not in cluster
        assert "load_assignment" not in cluster
    assert "upstream_bind_config" not in clusters[INBOUND_PASSTHROUGH]
    # Everything else is as in redirect mode.
    redirect = render_dynamic(parse_config(STANDALONE), RUN)
    assert _not_inbound(clusters) == _not_inbound(_by_name(redirect, RUN.cds))
    assert OUTBOUND_PASSTHROUGH in _not_inbound(clusters)
    assert inbound["filter_chains"] == _by_name(redirect, RUN.lds)[INBOUND_LISTENER]["filter_chains"]


def test_redirect_mode_has_no_transparent_listener():
    files = render_dynamic(parse_config(STANDALONE), RUN)
    for listener in files[RUN.lds]["resources"]:
        assert "transparent" not in listener
        assert all("original_src" not in f["name"] for f in listener["listener_filters"])
    clusters = _by_name(files, RUN.cds)
    assert clusters["inbound|8080||web"]["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"


@pytest.mark.parametrize(("doc", "mode"), [(STANDALONE, "REDIRECT"), (TPROXY, "TPROXY")])
def test_node_metadata_names_the_interception_mode(doc, mode):
    boot = render_bootstrap(parse_config(doc), RUN, "10.0.0.7")
    assert boot["node"]["metadata"]["INTERCEPTION_MODE"] == mode
    xds = {"mode": "xds", "xds": {"address": "istiod:15012"}, "inbound": {"interception": mode.lower()}}
    assert render_bootstrap(parse_config(xds), RUN, "10.0.0.7")["node"]["metadata"]["INTERCEPTION_MODE"] == mode


def test_interception_change_means_a_new_epoch_but_the_mark_does_not():
    base = parse_config({})
    tproxy = parse_config({"inbound": {"interception": "tproxy"}})

    def fingerprint(cfg):
        return EnvoyProxy(cfg, "10.0.0.7").fingerprint()

    assert fingerprint(tproxy) != fingerprint(base)  # node metadata changes
    marked = replace(tproxy, inbound=replace(tproxy.inbound, tproxy_mark=7))
    assert fingerprint(marked) == fingerprint(tproxy)  # only the listener file changes


def test_capability_check_reads_the_effective_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nCapInh:\t0000000000001000\nCapEff:\t0000000000001000\n")
    assert has_capability(CAP_NET_ADMIN, str(status)) is True
    status.write_text("CapEff:\t0000000000000000\n")
    assert has_capability(CAP_NET_ADMIN, str(status)) is False
    status.write_text("CapEff:\tnonsense\n")
    assert has_capability(CAP_NET_ADMIN, str(status)) is None
    assert has_capability(CAP_NET_ADMIN, str(tmp_path / "missing")) is None
