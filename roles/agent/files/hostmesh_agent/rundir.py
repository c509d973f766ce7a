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


@dataclass(frozen=True)
class RunDir:
    path: str

    def bootstrap(self, epoch: int) -> str:
        return os.path.join(self.path, f"envoy-rev{epoch}.json")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.path, "admin.sock")

    @property
    def dynamic_dir(self) -> str:
        return os.path.join(self.path, "dynamic")

    @property
    def lds(self) -> str:
        return os.path.join(self.dynamic_dir, "lds.json")

    @property
    def cds(self) -> str:
        return os.path.join(self.dynamic_dir, "cds.json")

    @property
    def sds_default(self) -> str:
        return os.path.join(self.dynamic_dir, "sds-default.json")

    @property
    def sds_rootca(self) -> str:
        return os.path.join(self.dynamic_dir, "sds-rootca.json")


def bootstrap_epoch(filename: str) -> int:
    """The epoch in an ``envoy-rev<N>.json`` name, or -1 for any other name."""
    m = _BOOTSTRAP_RE.match(filename)
    return int(m.group(1)) if m else -1
