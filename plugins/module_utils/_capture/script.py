# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rules file: a POSIX shell script that puts capture back, or lifts it.

A boot-time unit runs ``sh FILE apply`` (the default) to restore exactly what
traffic_capture applied, and ``sh FILE remove`` to lift it. Both are safe to
run again: ``apply`` removes our rules first, ``remove`` ignores what is gone.
Operators can read it to see every rule and command involved.
"""

HEADER = """#!/bin/sh
# Traffic capture for hostmesh.sidecar, written by hostmesh.sidecar.traffic_capture.
# Usage: sh {path} [apply|remove]    (default: apply)
# apply: remove our rules, then restore them; remove: lift capture.
# Only our own chains, the jumps into them and our policy routing are touched.
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
"""

_MARKER = "HOSTMESH_RULES"


def render_script(path, iptables_parts, nft_part, routing, lock_wait):
    """The script text.

    ``iptables_parts``: list of (iptables_cmd, restore_cmd, tables, restore_text)
    where ``tables`` is {table: TableState} (our desired state for that family).
    ``nft_part``: None or (table_name, nft_script_that_creates_table).
    ``routing``: list of (add_argv, del_argv) for ip rules and routes, as words.
    """
    remove = []
    apply = ["  remove"]
    for iptables_cmd, restore_cmd, tables, restore_text in iptables_parts:
        for table in sorted(tables):
            state = tables[table]
            for builtin in sorted(state.jumps):
                for text in state.jumps[builtin]:
                    remove.append(
                        "  while %s -w %d -t %s -D %s %s 2>/dev/null; do :; done"
                        % (iptables_cmd, lock_wait, table, builtin, text)
                    )
            for verb in ("-F", "-X"):
                for chain in sorted(state.chains):
                    remove.append("  %s -w %d -t %s %s %s 2>/dev/null" % (iptables_cmd, lock_wait, table, verb, chain))
        apply.append("  %s --noflush --wait %d <<'%s' || return 1" % (restore_cmd, lock_wait, _MARKER))
        apply.append(restore_text.rstrip("\n"))
        apply.append(_MARKER)
    if nft_part is not None:
        name, script = nft_part
        remove.append("  nft delete table inet %s 2>/dev/null" % name)
        apply.append("  nft -f - <<'%s' || return 1" % _MARKER)
        apply.append(script.rstrip("\n"))
        apply.append(_MARKER)
    for add_argv, del_argv in routing:
        remove.append("  %s 2>/dev/null" % " ".join(del_argv))
        apply.append("  %s || return 1" % " ".join(add_argv))
    remove.append("  return 0")
    apply.append("  return 0")
    body = [
        HEADER.format(path=path),
        "remove() {",
        *remove,
        "}",
        "",
        "apply() {",
        *apply,
        "}",
        "",
        'case "${1:-apply}" in',
        "  apply) apply ;;",
        "  remove) remove ;;",
        '  *) echo "usage: $0 [apply|remove]" >&2; exit 2 ;;',
        "esac",
        "",
    ]
    return "\n".join(body)
