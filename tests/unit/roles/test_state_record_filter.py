"""A role's record is keyed on what it renders and installs: whatever changes that changes the digest."""

from __future__ import annotations

import copy

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.state_record import RECORD_FORMAT, state_record, wanted_digest

WANTED = {
    "directories": [{"path": "/etc/hostmesh", "owner": "root", "group": "hostmesh-proxy", "mode": "0750"}],
    "files": [
        {
            "path": "/etc/hostmesh/agent.json",
            "owner": "root",
            "group": "hostmesh-proxy",
            "mode": "0640",
            "content": "{}\n",
        },
        {"paths": ["/lib/a.py", "/lib/b.py"], "owner": "root", "group": "root", "mode": "0644"},
    ],
    "large_files": [{"path": "/usr/local/bin/envoy"}],
    "users": [{"name": "hostmesh-proxy", "uid": 1337, "shell": "/usr/sbin/nologin"}],
    "groups": [{"name": "hostmesh-proxy", "gid": 1337}],
    "units": [{"name": "hostmesh-agent.service", "enabled": True, "state": "started"}],
    "settings": {"envoy": "wheel 1.40.0", "certificates": ["-----BEGIN CERTIFICATE-----"]},
}


def test_the_record_lists_what_host_state_fingerprints() -> None:
    record = state_record(WANTED, "/etc/hostmesh/agent.state")
    assert record == {
        "path": "/etc/hostmesh/agent.state",
        "digest": wanted_digest(WANTED),
        "paths": ["/etc/hostmesh", "/etc/hostmesh/agent.json", "/lib/a.py", "/lib/b.py"],
        "large_files": ["/usr/local/bin/envoy"],
        "users": ["hostmesh-proxy"],
        "groups": ["hostmesh-proxy"],
        "units": ["hostmesh-agent.service"],
    }
    assert len(record["digest"]) == 40
    assert state_record({}, "/x")["paths"] == []


def _changed(edit) -> dict:
    wanted = copy.deepcopy(WANTED)
    edit(wanted)
    return wanted


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w["files"][0].update(content='{"ports": {}}\n'),
        lambda w: w["files"][0].update(mode="0600"),
        lambda w: w["files"][0].update(owner="hostmesh-proxy"),
        lambda w: w["files"][1].update(mode="0640"),
        lambda w: w["files"][1]["paths"].append("/lib/c.py"),
        lambda w: w["directories"][0].update(group="root"),
        lambda w: w["users"][0].update(shell="/bin/false"),
        lambda w: w["groups"][0].update(gid=1338),
        lambda w: w["units"][0].update(state="stopped"),
        lambda w: w["settings"].update(envoy="wheel 1.40.1"),
        lambda w: w["settings"]["certificates"].append("rotated"),
        lambda w: w["large_files"][0].update(path="/opt/envoy"),
    ],
)
def test_a_change_of_what_the_host_should_have_changes_the_digest(edit) -> None:
    assert wanted_digest(_changed(edit)) != wanted_digest(WANTED)


def test_key_order_does_not_change_the_digest_and_contents_are_hashed() -> None:
    reordered = {key: WANTED[key] for key in reversed(list(WANTED))}
    reordered["files"] = [dict(reversed(list(entry.items()))) for entry in WANTED["files"]]
    assert wanted_digest(reordered) == wanted_digest(WANTED)
    assert wanted_digest(WANTED) == state_record(WANTED, "/s")["digest"]
    assert RECORD_FORMAT >= 1


@pytest.mark.parametrize(
    ("wanted", "path", "message"),
    [
        ({"file": []}, "/s", "expected a mapping with some of directories, files"),
        ({"files": [{"path": "relative/agent.json"}]}, "/s", 'files: got {"path": "relative/agent.json"}'),
        ({"files": [{"paths": "/a"}]}, "/s", "an absolute path (or paths)"),
        ({"users": [{"uid": 1}]}, "/s", 'users: got {"uid": 1}; expected a mapping with a name'),
        ({"units": "hostmesh-agent.service"}, "/s", "units: expected a list"),
        ({}, "agent.state", "the stamp path must be absolute"),
    ],
)
def test_a_bad_description_is_refused(wanted, path, message) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        state_record(wanted, path)
    assert message in str(error.value)
