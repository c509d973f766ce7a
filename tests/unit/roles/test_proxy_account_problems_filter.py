"""The agent role refuses to take an existing account or id over; the messages name both sides."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.proxy_accounts import proxy_account_problems

# ansible.builtin.getent facts: passwd [password, uid, gid, gecos, home, shell]; group [password, gid, members].
PASSWD = {
    "root": ["x", "0", "0", "root", "/root", "/bin/bash"],
    "builder": ["x", "1400", "1400", "", "/home/builder", "/bin/sh"],
}
GROUP = {"root": ["x", "0", ""], "builders": ["x", "1400", ""]}


def problems(passwd=None, group=None, user="hostmesh-proxy", uid=1337, group_name="hostmesh-proxy", gid=1337):
    getent = {"passwd": PASSWD if passwd is None else passwd, "group": GROUP if group is None else group}
    return proxy_account_problems(getent, user, uid, group_name, gid)


def test_a_fresh_host_and_a_host_that_already_has_them_are_fine() -> None:
    assert problems() == []
    mine_passwd = {**PASSWD, "hostmesh-proxy": ["x", "1337", "1337", "", "/nonexistent", "/usr/sbin/nologin"]}
    mine_group = {**GROUP, "hostmesh-proxy": ["x", "1337", ""]}
    assert problems(mine_passwd, mine_group) == []
    # Ids as strings, as an INI inventory gives them.
    assert problems(mine_passwd, mine_group, uid="1337", gid="1337") == []


def test_an_id_held_by_another_account() -> None:
    assert problems(uid=1400) == ["uid 1400 (hostmesh_proxy_uid) belongs to user builder"]
    assert problems(gid=1400) == ["gid 1400 (hostmesh_proxy_gid) belongs to group builders"]


def test_a_name_with_another_id_and_groups_first() -> None:
    passwd = {**PASSWD, "hostmesh-proxy": ["x", "999", "999", "", "/", "/bin/false"]}
    group = {**GROUP, "hostmesh-proxy": ["x", "999", ""], "other": ["x", "1337", ""]}
    assert problems(passwd, group) == [
        "group hostmesh-proxy exists with gid 999 but hostmesh_proxy_gid is 1337",
        "gid 1337 (hostmesh_proxy_gid) belongs to group other",
        "user hostmesh-proxy exists with uid 999 but hostmesh_proxy_uid is 1337",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uid": "abc"}, "hostmesh_proxy_uid: got 'abc'; expected an integer uid"),
        ({"gid": None}, "hostmesh_proxy_gid: got None; expected an integer gid"),
        ({"user": ""}, "hostmesh_proxy_user is empty"),
    ],
)
def test_bad_variables_are_named(kwargs, message) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        problems(**kwargs)
    assert message in str(error.value)


def test_the_facts_must_be_given() -> None:
    with pytest.raises(AnsibleFilterError, match=r"expected \{passwd: ansible_facts\.getent_passwd"):
        proxy_account_problems({"passwd": PASSWD}, "u", 1, "g", 1)
