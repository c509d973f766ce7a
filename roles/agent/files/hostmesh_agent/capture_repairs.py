"""``hostmesh_capture_repairs_total``: capture put back by the capture role's reconciler.

The reconciler (roles/capture/files/capture_heal.py) runs as root and keeps
its count in a file of its runtime directory; the agent, unprivileged, only
reads it and serves it with its merged metrics.
"""

from __future__ import annotations

REPAIRS_FILE = "/run/hostmesh-capture-heal/repairs"


def capture_repairs(path: str = REPAIRS_FILE) -> str:
    """The counter in Prometheus text; "" while no reconciler runs (no file)."""
    try:
        with open(path, encoding="ascii") as fh:
            total = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return ""
    name = "hostmesh_capture_repairs_total"
    return (
        f"# HELP {name} Times capture was found removed by something else and put back.\n"
        f"# TYPE {name} counter\n{name} {total}\n"
    )
