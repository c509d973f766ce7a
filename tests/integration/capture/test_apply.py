"""traffic_capture against real iptables in a network namespace."""

import os

import pytest
from netlab import assert_same

HERE = os.path.dirname(os.path.abspath(__file__))
# The seed's layout with today's Istio rules (tests/unit/capture/test_rules.py says which),
# and the seed article's own listing.
SEED = os.path.join(os.path.dirname(os.path.dirname(HERE)), "unit", "capture", "seed_nat_today.txt")
SEED_EXACT = os.path.join(os.path.dirname(SEED), "seed_nat.txt")

VARIANTS = ["iptables-nft", "iptables-legacy"]


def seed_listing(path=SEED):
    with open(path) as handle:
        return handle.read().splitlines()


@pytest.mark.parametrize("backend", VARIANTS)
def test_seed_settings_read_back_as_the_seed(lab, backend):
    result = lab.ok(chain_prefix="ISTIO_", protect_established=False, backend=backend, ip_families=["ipv4", "ipv6"])
    assert result["changed"] is True
    assert result["backend"] == backend
    assert lab.nat_listing(backend.split("-")[1]) == seed_listing()


@pytest.mark.parametrize("backend", VARIANTS)
def test_seed_settings_without_todays_additions_read_back_as_the_seed_article_exactly(lab, backend):
    seed = {"chain_prefix": "ISTIO_", "protect_established": False, "inbound_tunnel_port": 0, "inbound_forwarded": True}
    result = lab.ok(backend=backend, ip_families=["ipv4"], **seed)
    assert result["changed"] is True
    assert lab.nat_listing(backend.split("-")[1]) == seed_listing(SEED_EXACT)
    assert lab.ok(backend=backend, ip_families=["ipv4"], **seed)["changed"] is False


@pytest.mark.parametrize("backend", [*VARIANTS, "nftables"])
def test_second_run_changes_nothing_and_writes_nothing(lab, backend):
    lab.ok(backend=backend, ip_families=["ipv4", "ipv6"], mode="tproxy", dns_redirect=True, drop_invalid=True)
    before = lab.ruleset()
    again = lab.ok(backend=backend, ip_families=["ipv4", "ipv6"], mode="tproxy", dns_redirect=True, drop_invalid=True)
    assert again["changed"] is False
    assert again["added"] == [] and again["removed"] == []
    assert_same(before, lab.ruleset())


def test_absent_restores_the_host_exactly(lab):
    # Rules others own in the same tables: they must survive untouched.
    lab.run(lab.host, ["iptables", "-t", "nat", "-N", "DOCKER"])
    lab.run(
        lab.host, ["iptables", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"]
    )
    lab.run(lab.host, ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"])
    lab.run(lab.host, ["nft", "add", "table", "inet", "firewalld"])
    before = lab.ruleset()
    lab.ok(mode="tproxy", dns_redirect=True, dns_capture_all=True, drop_invalid=True, ip_families=["ipv4", "ipv6"])
    assert lab.ruleset() != before
    removed = lab.ok(state="absent")
    assert removed["changed"] is True
    assert_same(before, lab.ruleset())
    assert lab.ok(state="absent")["changed"] is False


def test_hand_deleted_rule_is_detected_and_restored(lab):
    lab.ok(chain_prefix="ISTIO_", protect_established=False)
    lab.run(lab.host, ["iptables", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15090", "-j", "RETURN"])
    lab.run(lab.host, ["iptables", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"])
    lab.run(
        lab.host,
        ["iptables", "-t", "nat", "-R", "ISTIO_REDIRECT", "1", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "9"],
    )
    check = lab.ok(chain_prefix="ISTIO_", protect_established=False, check_mode=True)
    assert check["changed"] is True
    fixed = lab.ok(chain_prefix="ISTIO_", protect_established=False)
    assert fixed["changed"] is True
    assert any("--dport 15090 -j RETURN" in line for line in fixed["added"])
    assert lab.nat_listing() == seed_listing()


def test_check_mode_predicts_and_writes_nothing(lab):
    before = lab.ruleset()
    check = lab.ok(check_mode=True, diff=True)
    assert check["changed"] is True
    assert_same(before, lab.ruleset())
    assert "-A HOSTMESH_OUTPUT -j HOSTMESH_REDIRECT" in check["diff"][0]["after"]
    assert check["diff"][0]["before"] == ""
    lab.ok()
    assert lab.ok(check_mode=True)["changed"] is False


def test_diff_shows_before_and_after_of_a_change(lab):
    lab.ok()
    result = lab.ok(diff=True, outbound_ports_exclude=[5432], ip_families=["ipv4"])
    diff = result["diff"][0]
    assert "--dport 5432 -j RETURN" not in diff["before"]
    assert "-A HOSTMESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in diff["after"]


def test_switching_backend_moves_the_rules(lab):
    lab.ok(backend="iptables-legacy", ip_families=["ipv4"])
    assert "HOSTMESH_OUTPUT" in lab.run(lab.host, ["iptables-legacy-save"]).stdout
    result = lab.ok(backend="iptables-nft", ip_families=["ipv4"])
    assert result["changed"] is True
    assert "HOSTMESH" not in lab.run(lab.host, ["iptables-legacy-save"]).stdout
    assert "HOSTMESH_OUTPUT" in lab.run(lab.host, ["iptables-nft-save"]).stdout


def test_auto_backend_follows_the_variant_holding_rules(lab):
    lab.run(lab.host, ["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"])
    assert lab.ok(ip_families=["ipv4"])["backend"] == "iptables-legacy"


def test_auto_backend_defaults_to_nft_on_a_clean_host(lab):
    assert lab.ok(ip_families=["ipv4"])["backend"] == "iptables-nft"


def test_ssh_port_of_the_connection_is_excluded_with_a_warning(lab):
    result = lab.module(env={"SSH_CONNECTION": "10.231.0.2 50000 10.231.0.1 2222"}, inbound_ports_exclude=[15020])
    assert not result.get("failed"), result.get("msg")
    assert result["ssh_port"] == 2222
    assert "2222" in str(result.get("warnings"))
    assert "-A HOSTMESH_INBOUND -p tcp -m tcp --dport 2222 -j RETURN" in lab.nat_listing()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ({"proxy_port": 70000}, "proxy_port"),
        ({"outbound_cidrs_exclude": ["10.0.0.0/40"]}, "outbound_cidrs_exclude"),
        ({"mode": "magic"}, "mode"),
        ({"backend": "pf"}, "backend"),
        ({"proxy_uid": [-3]}, "proxy_uid"),
        ({"proxy_port": 15006}, "inbound_capture_port"),
        ({"chain_prefix": "WAY_TOO_LONG_PREFIX"}, "chain_prefix"),
        ({"inbound_ports": ["http"]}, "inbound_ports"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(lab, args, option):
    lab.ok(chain_prefix="HOSTMESH_")
    before = lab.ruleset()
    result = lab.module(**args)
    assert result.get("failed") is True
    assert option in result["msg"]
    assert str(next(iter(args.values()))).strip("[]'") in result["msg"]
    assert_same(before, lab.ruleset())


def test_missing_owner_match_fails_naming_the_option_and_changes_nothing(lab, tmp_path):
    # An xtables extension directory without libxt_owner stands in for a host
    # whose iptables cannot load the owner match.
    libdir = "/usr/lib/x86_64-linux-gnu/xtables"
    if not os.path.isdir(libdir):
        libdir = next(p for p in ("/usr/lib/xtables", "/usr/lib64/xtables") if os.path.isdir(p))
    for name in os.listdir(libdir):
        if "owner" not in name:
            os.symlink(os.path.join(libdir, name), str(tmp_path / name))
    before = lab.ruleset()
    result = lab.module(backend="iptables-legacy", ip_families=["ipv4", "ipv6"], env={"XTABLES_LIBDIR": str(tmp_path)})
    assert result.get("failed") is True
    assert "proxy_uid/proxy_gid" in result["msg"] and "owner" in result["msg"]
    assert_same(before, lab.ruleset())


def path_with_failing_ip6tables_restore(tmp_path) -> str:
    """A PATH whose ip6tables-nft-restore, found first, fails as on a rule it cannot load."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    broken = fake_bin / "ip6tables-nft-restore"
    broken.write_text("#!/bin/sh\necho 'ip6tables-restore: line 2 failed' >&2\nexit 1\n")
    broken.chmod(0o755)
    return "%s:%s" % (fake_bin, os.environ["PATH"])


def test_ipv6_failure_puts_ipv4_back(lab, tmp_path):
    """Both families apply together: make only ip6tables-restore fail."""
    lab.ok(ip_families=["ipv4", "ipv6"], chain_prefix="HOSTMESH_")
    before = lab.ruleset()
    path = path_with_failing_ip6tables_restore(tmp_path)
    result = lab.module(ip_families=["ipv4", "ipv6"], outbound_ports_exclude=[5432], env={"PATH": path})
    assert result.get("failed") is True
    assert "nothing was changed" in result["msg"]
    assert_same(before, lab.ruleset())


def test_a_failed_first_apply_next_to_docker_leaves_the_host_exactly_as_it_was(lab, tmp_path):
    """Putting IPv4 back also deletes the built-in chain iptables-nft made for our jump, not Docker's."""
    lab.run(lab.host, ["iptables-nft", "-t", "nat", "-N", "DOCKER"])
    lab.run(
        lab.host,
        ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
    )
    before = lab.ruleset()
    result = lab.module(ip_families=["ipv4", "ipv6"], env={"PATH": path_with_failing_ip6tables_restore(tmp_path)})
    assert result.get("failed") is True
    assert "nothing was changed" in result["msg"]
    assert_same(before, lab.ruleset())


def test_rules_file_restores_the_same_state(lab, tmp_path):
    rules_file = str(tmp_path / "capture.rules")
    args = {"rules_file": rules_file, "mode": "tproxy", "ip_families": ["ipv4", "ipv6"], "dns_redirect": True}
    empty = lab.ruleset(ignore_empty=True)
    assert lab.ok(**args)["changed"] is True
    applied = lab.ruleset(ignore_empty=True)
    assert lab.ok(**args)["changed"] is False
    # The script lifts our rules (empty built-in chains may stay: no behaviour).
    lab.run(lab.host, ["sh", rules_file, "remove"])
    assert_same(empty, lab.ruleset(ignore_empty=True))
    lab.run(lab.host, ["sh", rules_file, "apply"])
    assert_same(applied, lab.ruleset(ignore_empty=True))
    lab.run(lab.host, ["sh", rules_file])  # again: still the same, no duplicates
    assert_same(applied, lab.ruleset(ignore_empty=True))
    assert lab.ok(**args)["changed"] is False
    gone = lab.ok(state="absent", rules_file=rules_file)
    assert gone["changed"] is True and not os.path.exists(rules_file)
    assert_same(empty, lab.ruleset(ignore_empty=True))


def test_nftables_backend_applies_once_and_absent_leaves_the_host_as_before(lab):
    lab.run(lab.host, ["nft", "add", "table", "inet", "firewalld"])
    before = lab.ruleset()
    first = lab.ok(backend="nftables", ip_families=["ipv4", "ipv6"])
    assert first["changed"] is True and first["backend"] == "nftables"
    assert "table inet hostmesh" in first["rules"]["inet"]
    assert lab.ok(backend="nftables", ip_families=["ipv4", "ipv6"])["changed"] is False
    assert lab.ok(state="absent")["changed"] is True
    assert_same(before, lab.ruleset())


def test_prefix_naming_an_nft_keyword_still_works_with_iptables(lab):
    result = lab.ok(chain_prefix="TPROXY_", ip_families=["ipv4"])
    assert result["changed"] is True
    assert "-N TPROXY_OUTPUT" in lab.nat_listing()


def test_waits_for_the_xtables_lock_and_says_so_when_it_cannot(lab):
    """Another iptables user holding the lock: we wait up to lock_wait seconds."""
    import contextlib
    import os
    import signal
    import subprocess
    import threading

    # The holder keeps the lock until it is killed (its whole process group: the
    # sleep inherits the locked file), so a slow start of the module run cannot
    # find it already free.
    holder = subprocess.Popen(["flock", "/run/xtables.lock", "sleep", "120"], start_new_session=True)

    def release():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)

    try:
        while subprocess.run(["flock", "-n", "/run/xtables.lock", "true"], check=False).returncode == 0:
            assert holder.poll() is None, "the lock holder could not take the lock"
        before = lab.ruleset()
        refused = lab.module(backend="iptables-legacy", ip_families=["ipv4"], lock_wait=1)
        assert refused.get("failed") is True, refused
        assert "lock" in refused["msg"].lower()
        assert_same(before, lab.ruleset())
        assert holder.poll() is None, "the lock holder ended before the refused run"
        # Freed while the next run waits for it: that run goes ahead.
        threading.Timer(2.0, release).start()
        waited = lab.ok(backend="iptables-legacy", ip_families=["ipv4"], lock_wait=60)
        assert waited["changed"] is True
    finally:
        release()
        holder.wait()


@pytest.mark.parametrize("backend", [*VARIANTS, "nftables"])
def test_tproxy_with_lo_down_fails_once_and_leaves_the_host_as_it_was(lab, backend):
    lab.run(lab.host, ["ip", "link", "set", "lo", "down"])
    before = lab.ruleset()
    result = lab.module(mode="tproxy", backend=backend, ip_families=["ipv4", "ipv6"])
    assert result.get("failed") is True
    message = result["msg"]
    assert "needs the loopback interface up" in message and message.count("Nexthop device is not up") == 1
    assert "also failed" not in message and "No such file" not in message
    assert message.endswith("nothing was changed (every step applied so far was put back)")
    assert_same(before, lab.ruleset())
    # With lo up the same options apply.
    lab.run(lab.host, ["ip", "link", "set", "lo", "up"])
    assert lab.ok(mode="tproxy", backend=backend, ip_families=["ipv4", "ipv6"])["changed"] is True


TODAYS_OPTIONS = [
    dict(
        virtual_interfaces=["docker0", "virbr0"],
        outbound_owner_groups=[0, 1100],
        host_loopback_cidr="127.0.0.1/8",
        dns_redirect=True,
        dns_capture_all=True,
    ),
    dict(
        mode="tproxy",
        virtual_interfaces=["docker0"],
        outbound_owner_groups_exclude=[888, 21],
        outbound_cidrs=["10.0.0.0/8", "127.1.2.3/32", "fd00::/8"],
        outbound_ports_exclude=[3306],
        inbound_tunnel_port=15009,
        dns_redirect=True,
        dns_capture_all=True,
    ),
]


@pytest.mark.parametrize("backend", [*VARIANTS, "nftables"])
@pytest.mark.parametrize("params", TODAYS_OPTIONS, ids=["groups-virtual", "tproxy-exclude-groups"])
def test_todays_options_read_back_and_a_second_run_writes_nothing(lab, backend, params):
    ssh = {"SSH_CONNECTION": "10.231.0.2 40022 10.231.0.1 22"}
    first = lab.module(env=ssh, backend=backend, ip_families=["ipv4", "ipv6"], **params)
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True
    before = lab.ruleset()
    again = lab.module(env=ssh, backend=backend, ip_families=["ipv4", "ipv6"], **params)
    assert again["changed"] is False and again["added"] == [] and again["removed"] == []
    assert_same(before, lab.ruleset())
    assert lab.ok(state="absent")["changed"] is True


def test_a_rules_file_in_a_missing_directory_is_refused_before_anything_changes(lab, tmp_path):
    before = lab.ruleset()
    missing = str(tmp_path / "nowhere" / "capture.rules")
    refused = lab.module(ip_families=["ipv4"], rules_file=missing)
    assert refused.get("failed") is True
    assert refused["msg"] == "rules_file: %r is in a directory that does not exist" % missing
    assert_same(before, lab.ruleset())
    # Check mode only predicts: in a playbook an earlier task creates the directory.
    predicted = lab.module(check_mode=True, ip_families=["ipv4"], rules_file=missing)
    assert not predicted.get("failed"), predicted.get("msg")
    assert predicted["changed"] is True
    assert_same(before, lab.ruleset())
    assert not os.path.exists(os.path.dirname(missing))
