"""Istio's capture test cases as our data: what each sets, the grid of packets, the fates recorded.

The data lives in ``tests/unit/capture/istio_cases/`` (see its README): ``grid.yaml``
(the host every case assumes and the packets every case is decided for), one
file per case under ``cases/``, and ``differences.yaml`` (where our module decides
otherwise, and why). The unit test, the recorder (``tools/istio_fate_record.py``)
and the real-connection test all read it through here.
"""

import os
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import yaml

from packet_fate.host import IPV4, IPV6, Host, PolicyRoute
from packet_fate.packet import Packet, Process, parse_packet

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DATA = os.path.join(ROOT, "tests", "unit", "capture", "istio_cases")
RECORDED_MARK = "# ---- recorded by tools/istio_fate_record.py from Istio's rules; do not edit below ----"
EVERY_PROCESS = "*"


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    description: str
    istio_flags: Mapping[str, object]
    options: Mapping[str, object]  # traffic_capture options that express the case today
    planned_options: Mapping[str, object]  # what the case also needs, by planned option name
    families: Tuple[str, ...]  # the families Istio writes rules for
    nameservers: Mapping[str, Tuple[str, ...]]
    istio_policy_routes: Tuple[PolicyRoute, ...]
    processes: Mapping[str, Process]
    packets: Tuple[Packet, ...]
    istio_source: Optional[str]  # the istio/istio commit the fates were recorded from
    istio_fates: Optional[Mapping[str, str]]  # packet text -> fate text


@dataclass(frozen=True)
class Difference:
    """Packets of some cases where our fate differs from Istio's, and why."""

    kind: str  # "deliberate" or "pending"
    name: str
    why: str
    cases: Mapping[str, int]  # case -> how many differing packets this entry explains there
    packets: Tuple[str, ...]  # patterns over packet texts; "*" stands for any text
    istio: Optional[str]  # pattern over Istio's fate, when given
    ours: Optional[str]  # pattern over our fate, when given
    option: Optional[str]  # pending: the planned option that will settle it

    def covers(self, case: str, packet: str, istio: str, ours: str) -> bool:
        return (
            case in self.cases
            and any(pattern_matches(p, packet) for p in self.packets)
            and (self.istio is None or pattern_matches(self.istio, istio))
            and (self.ours is None or pattern_matches(self.ours, ours))
        )

    def label(self) -> str:
        return "%s %r" % (self.kind, self.name)


@dataclass(frozen=True)
class Unreached:
    """Rules of ours no grid packet matches because earlier rules take every packet they could."""

    name: str
    why: str
    rules: Tuple[str, ...]  # patterns over "FAMILY TABLE CHAIN: RULE TEXT"
    cases: Mapping[str, int]  # case -> how many of its rules this entry explains

    def covers(self, case: str, rule: str) -> bool:
        return case in self.cases and any(pattern_matches(p, rule) for p in self.rules)

    def label(self) -> str:
        return "unreached %r" % self.name


def pattern_matches(pattern: str, text: str) -> bool:
    """Glob with ``*`` only (packet texts hold IPv6 brackets, which fnmatch would read as sets)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text) is not None


def load_host(data: str = DATA) -> Host:
    grid = _read(os.path.join(data, "grid.yaml"))
    spec = grid["host"]
    return Host.build(spec["interfaces"], spec.get("default_interface"), (), spec.get("groups"), spec.get("users"))


def load_cases(data: str = DATA) -> Tuple[Case, ...]:
    grid = _read(os.path.join(data, "grid.yaml"))
    directory = os.path.join(data, "cases")
    names = sorted(name for name in os.listdir(directory) if name.endswith(".yaml"))
    return tuple(_case(os.path.join(directory, name), grid["packets"]) for name in names)


def load_differences(data: str = DATA) -> Tuple[Difference, ...]:
    spec = _read(os.path.join(data, "differences.yaml"))
    out = []
    for kind in ("deliberate", "pending"):
        for entry in spec.get(kind) or ():
            unknown = set(entry) - {"name", "why", "cases", "packets", "istio", "ours", "option"}
            if unknown or not all(entry.get(key) for key in ("name", "why", "cases", "packets")):
                raise ValueError(
                    "differences.yaml %s entry %r: needs name, why, cases, packets (unknown: %s)"
                    % (kind, entry, unknown)
                )
            out.append(
                Difference(
                    kind,
                    entry["name"],
                    " ".join(entry["why"].split()),
                    dict(entry["cases"]),
                    tuple(entry["packets"]),
                    entry.get("istio"),
                    entry.get("ours"),
                    entry.get("option"),
                )
            )
    return tuple(out)


def load_unreached(data: str = DATA) -> Tuple[Unreached, ...]:
    spec = _read(os.path.join(data, "differences.yaml"))
    out = []
    for entry in spec.get("unreached") or ():
        if set(entry) != {"name", "why", "rules", "cases"}:
            raise ValueError("differences.yaml unreached entry %r: needs exactly name, why, rules, cases" % entry)
        out.append(
            Unreached(entry["name"], " ".join(entry["why"].split()), tuple(entry["rules"]), dict(entry["cases"]))
        )
    return tuple(out)


def expand_packets(templates, processes: Mapping[str, Process]) -> Tuple[Packet, ...]:
    """The grid's lines as packets: a line starting with ``*`` is sent by every process."""
    packets = []
    for line in templates:
        words = line.split(None, 1)
        if words[0] == EVERY_PROCESS:
            packets += [parse_packet("%s %s" % (role, words[1]), processes) for role in processes]
        else:
            packets.append(parse_packet(line, processes))
    texts = [p.text for p in packets]
    duplicates = sorted({t for t in texts if texts.count(t) > 1})
    if duplicates:
        raise ValueError("packets listed twice: %s" % ", ".join(duplicates))
    return tuple(packets)


def _case(path, grid_packets):
    spec = _read(path)
    name = spec["name"]
    if name + ".yaml" != os.path.basename(path):
        raise ValueError("%s: name %r does not match the file name" % (path, name))
    processes = {
        role: Process(ids["uid"], ids["gid"], tuple(ids.get("groups", ()))) for role, ids in spec["processes"].items()
    }
    host = spec.get("host") or {}
    families = (IPV4, IPV6) if host.get("ipv6") else (IPV4,)
    nameservers = {family: tuple((host.get("nameservers") or {}).get(family) or ()) for family in (IPV4, IPV6)}
    routes = tuple(
        PolicyRoute(family, route["fwmark"], route["table"])
        for route in spec.get("istio_policy_routes") or ()
        for family in families
    )
    recorded = spec.get("istio_fates")
    fates = None
    if recorded is not None:
        fates = {}
        for fate, texts in recorded.items():
            for text in texts:
                if text in fates:
                    raise ValueError("%s: %r recorded twice" % (path, text))
                fates[text] = fate
    return Case(
        name=name,
        path=path,
        description=" ".join(spec["description"].split()),
        istio_flags=spec.get("istio_flags") or {},
        options=spec.get("options") or {},
        planned_options=spec.get("planned_options") or {},
        families=families,
        nameservers=nameservers,
        istio_policy_routes=routes,
        processes=processes,
        packets=expand_packets(list(grid_packets) + list(spec.get("extra_packets") or ()), processes),
        istio_source=spec.get("istio_source"),
        istio_fates=fates,
    )


def write_recorded_fates(case: Case, fates: Mapping[str, str], source: str) -> bool:
    """Replace the recorded part of the case's file; returns whether it changed."""
    with open(case.path) as handle:
        text = handle.read()
    head = text.split(RECORDED_MARK)[0].rstrip("\n") + "\n"
    by_fate: Dict[str, list] = {}
    for packet in case.packets:  # grid order within each fate
        by_fate.setdefault(fates[packet.text], []).append(packet.text)
    body = yaml.dump(
        {"istio_source": source, "istio_fates": dict(sorted(by_fate.items()))},
        Dumper=_IndentedDumper,
        default_flow_style=False,
        sort_keys=False,
        width=120,
    )
    new = "%s\n%s\n%s" % (head, RECORDED_MARK, body)
    if new == text:
        return False
    with open(case.path, "w") as handle:
        handle.write(new)
    return True


class _IndentedDumper(yaml.SafeDumper):
    """Indents a list under its key, as the collection's YAML linter expects."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _read(path):
    with open(path) as handle:
        return yaml.safe_load(handle)
