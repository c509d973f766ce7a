"""Names of the files the agent keeps in its run directory, in one place.

<run_dir>/envoy-rev<N>.json      bootstrap for restart epoch N
<run_dir>/admin.sock             Envoy's admin API (a Unix socket, mode 0600, the proxy user's)
<run_dir>/dynamic/lds.json       listeners  (standalone; Envoy watches dynamic/)
<run_dir>/dynamic/cds.json       clusters
<run_dir>/dynamic/sds-default.json   workload certificate (SDS from file)
<run_dir>/dynamic/sds-rootca.json    mesh CA
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_BOOTSTRAP_RE = re.compile(r"^envoy-rev(\d+)\.json$")
_DYNAMIC = "dynamic"


def _below(*parts: str) -> property:
    """A read-only path: ``parts`` joined below the run directory."""
    return property(lambda run_dir: os.path.join(run_dir.path, *parts))


@dataclass(frozen=True)
class RunDir:
    """The run directory at ``path`` and the paths of the files in it."""

    path: str

    admin_socket = _below("admin.sock")
    dynamic_dir = _below(_DYNAMIC)
    lds = _below(_DYNAMIC, "lds.json")
    cds = _below(_DYNAMIC, "cds.json")
    sds_default = _below(_DYNAMIC, "sds-default.json")
    sds_rootca = _below(_DYNAMIC, "sds-rootca.json")

    def bootstrap(self, epoch: int) -> str:
        return os.path.join(self.path, f"envoy-rev{epoch}.json")


def bootstrap_epoch(filename: str) -> int:
    """The epoch in an ``envoy-rev<N>.json`` name, or -1 for any other name."""
    m = _BOOTSTRAP_RE.match(filename)
    return int(m.group(1)) if m else -1
