# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A role's record for host_state, keyed on what the role renders and installs.

A role describes what the host should have - each file with its owner, group,
mode and content, each directory, account and unit, and any other setting
it applies - and this filter turns that into the record
``hostmesh.sidecar.host_state`` compares the host with: the list of what to
fingerprint, and a digest of the description. The role's tasks install from
the same description, so whatever changes what the host should have (new
variables, or a new collection version that renders, installs or owns
something differently) changes the digest, and the next run converges; a
path a new version adds is one the last stamp does not have, which converges
too. Documentation lives next to this file, in ``state_record.yml``.
"""

import hashlib
import json

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._plain_data import plain

# Bump when the meaning of a description changes, so every host converges once.
RECORD_FORMAT = 1
SECTIONS = ("directories", "files", "large_files", "users", "groups", "units", "settings")
# Sections of named entries, and the key that names an entry; a path entry
# may name several paths that share its owner, group and mode with "paths".
NAME_KEYS = {
    "directories": "path",
    "files": "path",
    "large_files": "path",
    "users": "name",
    "groups": "name",
    "units": "name",
}


def _sha1(text):
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def _names(section, entry):
    """What one entry names: its name or path, or the paths it lists."""
    key = NAME_KEYS[section]
    if not isinstance(entry, dict):
        names = None
    elif key == "path" and "paths" in entry and "path" not in entry:
        names = entry["paths"] if isinstance(entry["paths"], list) else None
    else:
        names = [entry.get(key)]
    if names is None or not all(
        isinstance(name, str) and name and (key != "path" or name.startswith("/")) for name in names
    ):
        raise AnsibleFilterError(
            "state_record: %s: got %s; expected a mapping with %s"
            % (
                section,
                json.dumps(entry, default=str, sort_keys=True),
                "an absolute path (or paths)" if key == "path" else "a name",
            )
        )
    return names


def _entries(wanted, section):
    entries = wanted.get(section) or []
    if not isinstance(entries, list):
        raise AnsibleFilterError(
            "state_record: %s: expected a list; got %s" % (section, json.dumps(entries, default=str))
        )
    for entry in entries:
        _names(section, entry)
    return entries


def _described(entry):
    """An entry as the digest sees it: a file's content by its sha1, the rest as given."""
    described = dict(entry)
    if described.get("content") is not None:
        described["content"] = _sha1(str(described["content"]))
    return described


def wanted_digest(wanted) -> str:
    """The sha1 of what the host should have (file contents by their own sha1), whatever the key order."""
    wanted = plain(wanted)
    described = {"format": RECORD_FORMAT, "settings": wanted.get("settings") or {}}
    for section in NAME_KEYS:
        described[section] = [_described(entry) for entry in _entries(wanted, section)]
    return _sha1(json.dumps(described, sort_keys=True, separators=(",", ":")))


def state_record(wanted, path) -> dict:
    """host_state's record, with stamp file ``path``, for the description ``wanted``."""
    wanted = plain(wanted)
    if not isinstance(wanted, dict) or set(wanted) - set(SECTIONS):
        raise AnsibleFilterError(
            "state_record: expected a mapping with some of %s; got %s"
            % (", ".join(SECTIONS), json.dumps(sorted(wanted) if isinstance(wanted, dict) else wanted, default=str))
        )
    if not isinstance(path, str) or not path.startswith("/"):
        raise AnsibleFilterError(
            "state_record: the stamp path must be absolute; got %s" % json.dumps(path, default=str)
        )
    names = {
        section: [name for entry in _entries(wanted, section) for name in _names(section, entry)]
        for section in NAME_KEYS
    }
    return {
        "path": path,
        "digest": wanted_digest(wanted),
        "paths": names["directories"] + names["files"],
        "large_files": names["large_files"],
        "users": names["users"],
        "groups": names["groups"],
        "units": names["units"],
    }


class FilterModule:
    """hostmesh.sidecar host_state record filter."""

    def filters(self):
        return {"state_record": state_record}
