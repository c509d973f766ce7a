# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a role left on a host, as a record it can compare a later run with.

A role that has just converged records a stamp: the digest of everything it
was asked to do (computed on the controller) and a fingerprint of each path,
account and unit it manages, as they are on the host. A re-run asks for the
same digest and compares the host with the stamp; when nothing differs the
role can skip its tasks. The fingerprints are pure functions of os.stat
results and file contents; the module does the reading.
"""

import hashlib
import json
import stat

STAMP_VERSION = 1


def path_fingerprint(st, content=None):
    """A path's kind, mode, owner and (for a regular file) the sha1 of its content; None when missing."""
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        kind = "directory"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "link"
    else:
        kind = "other"
    record = {"kind": kind, "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if kind == "file":
        record["sha1"] = hashlib.sha1(content or b"").hexdigest()
        record["size"] = st.st_size
    return record


def big_file_fingerprint(st):
    """A large binary by size and modification time (hashing it on every run costs too much)."""
    record = path_fingerprint(st, b"")
    if record is not None and record["kind"] == "file":
        del record["sha1"]
        record["mtime_ns"] = st.st_mtime_ns
    return record


def stamp(digest, paths, accounts, units):
    """The record of a converged host."""
    return {"version": STAMP_VERSION, "digest": digest, "paths": paths, "accounts": accounts, "units": units}


def stamp_text(record):
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def parse_stamp(text):
    """The stamp written earlier, or None when it is missing, unreadable or from another version."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("version") != STAMP_VERSION:
        return None
    return record


def differences(recorded, digest, paths, accounts, units):
    """Why the host no longer matches the stamp (empty when it does)."""
    if recorded is None:
        return ["no record of an earlier run"]
    found = []
    if recorded.get("digest") != digest:
        found.append("the wanted state changed since the last run")
    for section, now in (("paths", paths), ("accounts", accounts), ("units", units)):
        before = recorded.get(section) or {}
        for name in sorted(set(now) | set(before)):
            if name not in before:
                found.append("%s: not recorded by the last run" % name)
            elif name not in now:
                found.append("%s: no longer managed" % name)
            elif now[name] != before[name]:
                found.append("%s: %s, was %s" % (name, _short(now[name]), _short(before[name])))
    return found


def user_fingerprint(entry):
    """A passwd entry's ids, home and shell; None when the user does not exist."""
    if entry is None:
        return None
    return {"uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir, "shell": entry.pw_shell}


def group_fingerprint(entry):
    """A group entry's id and members; None when the group does not exist."""
    if entry is None:
        return None
    return {"gid": entry.gr_gid, "members": sorted(entry.gr_mem)}


def _short(value):
    return "missing" if value is None else json.dumps(value, sort_keys=True)
