"""Generate docs/variables.md from the roles' meta/argument_specs.yml.

    python3 -m tools.variables_doc           write docs/variables.md
    python3 -m tools.variables_doc --check   exit 1, naming the file, if it is out of date

Run from the repository root. The specs are the source of truth (each role
checks its variables against them); this page only renders them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path("docs") / "variables.md"
COMMAND = "python3 -m tools.variables_doc"

# Ansible's documentation markup: X(content), with L(text,url) taking two parts.
_MARKUP = re.compile(r"\b(RV|[IBCMOVPEU])\(([^)]*)\)|\bL\(([^,)]*),\s*([^)]*)\)|\bHORIZONTALLINE\b")


def _code(text: str) -> str:
    """An inline code span that survives any backticks in ``text``."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _option(content: str) -> str:
    """O(name), O(name=value) or O(fqcn#type:name=value) as code (the plugin is left out)."""
    if "#" in content:
        content = content.partition("#")[2].partition(":")[2]
    return _code(content)


def convert_markup(text: str) -> str:
    """Ansible markup as Markdown: O(), V(), C(), I(), RV(), E(), M(), P() become code,
    B() bold, U() and L() links; anything else is left as it is."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "HORIZONTALLINE":
            return " "
        if match.group(3) is not None:
            return f"[{match.group(3)}]({match.group(4).strip()})"
        kind, content = match.group(1), match.group(2)
        if kind == "O":
            return _option(content)
        if kind == "B":
            return f"**{content}**"
        if kind == "U":
            return f"<{content}>"
        if kind == "P":
            return _code(content.partition("#")[0])
        return _code(content)

    return _MARKUP.sub(replace, text)


def _escape_cell(text: str) -> str:
    """Keep a table cell on one row: no newlines, and pipes escaped (code spans too)."""
    return " ".join(text.split()).replace("|", "\\|")


def _description(spec: Dict[str, Any]) -> str:
    description = spec.get("description", "")
    if isinstance(description, str):
        description = [description]
    return " ".join(convert_markup(str(part).strip()) for part in description)


def _type(spec: Dict[str, Any]) -> str:
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        return "list of %s" % spec["elements"]
    return kind


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return _code(value) if value else '`""`'
    if isinstance(value, bool):
        return _code("true" if value else "false")
    return _code(json.dumps(value, separators=(", ", ": ")))


def _default(spec: Dict[str, Any]) -> str:
    if "default" not in spec:
        return "required" if spec.get("required") else ""
    return _literal(spec["default"])


def _choices(spec: Dict[str, Any]) -> str:
    return ", ".join(_literal(choice) for choice in spec.get("choices", []))


def load_specs(root: Path) -> Dict[str, Dict[str, Any]]:
    """{role: {entry point: spec}} for every role with a meta/argument_specs.yml, by role name."""
    specs = {}
    for path in sorted((root / "roles").glob("*/meta/argument_specs.yml")):
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        specs[path.parent.parent.name] = data.get("argument_specs", {})
    return specs


def render_role(role: str, entry_points: Dict[str, Any]) -> List[str]:
    lines = []
    for entry, spec in entry_points.items():
        title = role if entry == "main" else f"{role}, entry point {entry}"
        summary = _code(f"hostmesh.sidecar.{role}")
        if spec.get("short_description"):
            summary += ": " + convert_markup(spec["short_description"])
        lines += [f"## {title}", "", summary, ""]
        if entry != "main" and spec.get("options") == entry_points.get("main", {}).get("options"):
            lines += ["The same variables as the main entry point.", ""]
            continue
        lines += [
            "| variable | type | default | choices | description |",
            "|---|---|---|---|---|",
        ]
        for name, option in _options(spec.get("options", {})):
            cells = [_code(name), _type(option), _default(option), _choices(option), _description(option)]
            lines.append("| " + " | ".join(_escape_cell(cell) for cell in cells) + " |")
        lines.append("")
    return lines


def _options(options: Dict[str, Any], prefix: str = "") -> List[Any]:
    """(dotted name, spec) of each option, each followed by its sub-options (a dict's keys)."""
    rows = []
    for name, option in options.items():
        rows.append((prefix + name, option))
        rows += _options(option.get("options") or {}, prefix + name + ".")
    return rows


def render(root: Path = ROOT) -> str:
    specs = load_specs(root)
    lines = [
        "# Variables reference",
        "",
        f"<!-- Generated from roles/*/meta/argument_specs.yml by `{COMMAND}`; do not edit. -->",
        "",
        "Every variable each role accepts, as its `meta/argument_specs.yml` declares it;",
        "a role checks its variables against that spec before it changes anything.",
        "Several names are shared by more than one role (the proxy's ids, the Envoy",
        "path, the capture mode, the mesh identity), so an inventory sets them once.",
        "Explanations and examples are in [roles.md](roles.md) and [mesh.md](mesh.md);",
        "`ansible-doc -t role hostmesh.sidecar.<role>` shows the same specs.",
        "",
        "Roles: " + ", ".join(f"[{role}](#{role})" for role in specs) + ".",
        "",
    ]
    for role, entry_points in specs.items():
        lines += render_role(role, entry_points)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: List[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; write nothing")
    args = parser.parse_args(argv)
    target = root / OUTPUT
    text = render(root)
    current = target.read_text(encoding="utf-8") if target.exists() else None
    if args.check:
        if current != text:
            print(f"{OUTPUT} is out of date; regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
