"""Prometheus text exposition (format 0.0.4) for labelled metrics (pure).

The agent's own unlabelled gauges and counters are in metrics.py; this is what the
labelled families (Istio's service metrics, RBAC counters) share: escaping label
values, and the HELP/TYPE header written once per family.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

Labels = Sequence[Tuple[str, str]]


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def open_labels(labels: Labels) -> str:
    """``{a="1",b="2"`` without its closing brace: a series renders it once, then closes it
    (``}``) or adds a bucket's ``le`` to it for each of its lines."""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)


def label_text(labels: Labels) -> str:
    """``{a="1",b="2"}``, or nothing for no labels."""
    return open_labels(labels) + "}" if labels else ""


def number(value: float) -> str:
    """A sample value: integers without a decimal point, as Prometheus writes them."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[Tuple[Labels, float]]) -> List[str]:
    """The lines of one metric family; none at all when it has no samples."""
    lines = [f"{name}{label_text(labels)} {number(value)}" for labels, value in samples]
    if not lines:
        return []
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def histogram_lines(name: str, labels: str, bounds: Sequence[str], counts: Sequence[int], total: float) -> List[str]:
    """One histogram's ``_bucket`` (cumulative), ``_sum`` and ``_count`` lines; ``labels`` as
    ``open_labels`` gives them (not empty), ``bounds`` already written as numbers.

    ``counts`` holds one count per bound plus the overflow above the last one, not cumulated.
    """
    lines = []
    running = 0
    for bound, count in zip(bounds, counts):
        running += count
        lines.append(f'{name}_bucket{labels},le="{bound}"}} {running}')
    running += counts[len(bounds)]
    lines.append(f'{name}_bucket{labels},le="+Inf"}} {running}')
    lines.append(f"{name}_sum{labels}}} {number(total)}")
    lines.append(f"{name}_count{labels}}} {running}")
    return lines
