# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether the proxy user and group can be made as asked on a host, from its getent facts.

The agent role creates a system user and group with fixed ids; an existing
account of that name with another id, or another account holding that id,
would be silently taken over. Documentation lives next to this file, in
``proxy_account_problems.yml``.
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain

# getent database -> (what its entries are, the role's variables for the name and the id).
KINDS = (
    ("group", "group", "hostmesh_proxy_group", "gid", "hostmesh_proxy_gid"),
    ("passwd", "user", "hostmesh_proxy_user", "uid", "hostmesh_proxy_uid"),
)


def _entry_id(entry):
    """The id field of a getent entry ([password, id, ...]), or None when it has none."""
    if isinstance(entry, list) and len(entry) > 1 and str(entry[1]).isdigit():
        return int(entry[1])
    return None


def _clashes(database, kind, name, id_kind, id_variable, wanted_id):
    found = []
    if name in database and _entry_id(database[name]) != wanted_id:
        found.append(
            "%s %s exists with %s %s but %s is %d" % (kind, name, id_kind, database[name][1], id_variable, wanted_id)
        )
    for other in sorted(database):
        if other != name and _entry_id(database[other]) == wanted_id:
            found.append("%s %d (%s) belongs to %s %s" % (id_kind, wanted_id, id_variable, kind, other))
    return found


def proxy_account_problems(getent, user, uid, group, gid) -> list:
    """Every clash of the wanted proxy group and user with the host's accounts, groups first; [] when none."""
    getent = plain(getent)
    if not isinstance(getent, dict) or not all(isinstance(getent.get(db), dict) for db in ("passwd", "group")):
        raise AnsibleFilterError(
            "proxy_account_problems: expected {passwd: ansible_facts.getent_passwd, group: ansible_facts.getent_group}"
        )
    wanted = {"group": (str(group), gid), "passwd": (str(user), uid)}
    problems = []
    for database, kind, name_variable, id_kind, id_variable in KINDS:
        name, wanted_id = wanted[database]
        try:
            wanted_id = int(wanted_id)
        except (TypeError, ValueError):
            raise AnsibleFilterError(
                "proxy_account_problems: %s: got %r; expected an integer %s" % (id_variable, wanted_id, id_kind)
            ) from None
        if not name:
            raise AnsibleFilterError("proxy_account_problems: %s is empty; expected a %s name" % (name_variable, kind))
        problems += _clashes(getent[database], kind, name, id_kind, id_variable, wanted_id)
    return problems


class FilterModule:
    """hostmesh.sidecar agent role filter."""

    def filters(self):
        return {"proxy_account_problems": proxy_account_problems}
