"""``hostmesh-agent admin WHAT``: the usual reads of Envoy's admin API, through its socket.

The socket (``<run_dir>/admin.sock``, mode 0600) belongs to the proxy user, so this works
for that user and for root; anyone else is told so before anything is sent.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, Optional, Tuple
from urllib.parse import quote

from hostmesh_agent.admin import AdminError, EnvoyAdmin

# What an operator asks for -> the admin path.
READS: Dict[str, str] = {
    "config_dump": "/config_dump",
    "stats": "/stats",
    "clusters": "/clusters",
    "listeners": "/listeners",
    "ready": "/ready",
    "certs": "/certs",
    "server_info": "/server_info",
}


class AdminCommandError(RuntimeError):
    """The socket cannot be used by this user, or Envoy does not answer."""


def admin_path(what: str, stats_filter: Optional[str] = None) -> str:
    path = READS[what]
    if what == "stats" and stats_filter:
        path += "?filter=" + quote(stats_filter, safe="")
    return path


def check_access(socket_path: str, euid: int) -> None:
    """Refuse with the reason, before connecting, when this user cannot use the socket."""
    try:
        st = os.stat(socket_path)
    except PermissionError:
        raise AdminCommandError(
            f"permission denied on {socket_path}: Envoy's admin socket is for the proxy user; "
            "run this as root or as that user"
        ) from None
    except FileNotFoundError:
        raise AdminCommandError(
            f"no admin socket at {socket_path}: is hostmesh-agent running (with this run dir)?"
        ) from None
    if euid not in (0, st.st_uid):
        raise AdminCommandError(
            f"permission denied on {socket_path}: Envoy's admin socket belongs to uid {st.st_uid} "
            f"(the proxy user), mode {st.st_mode & 0o777:04o}; run this as root or as uid {st.st_uid}"
        )


def run_admin(socket_path: str, what: str, stats_filter: Optional[str], euid: int) -> Tuple[int, bytes]:
    """(HTTP status, body) of one admin read."""
    check_access(socket_path, euid)
    try:
        return EnvoyAdmin(socket_path, timeout=10.0).request("GET", admin_path(what, stats_filter))
    except AdminError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise AdminCommandError(f"Envoy does not answer on {socket_path}: is it running?") from None
        raise AdminCommandError(str(exc)) from None
