"""Every Python file the collection ships as code carries the collection's licence, or none.

galaxy.yml and LICENSE say GPL-3.0-or-later; a file under plugins/ or roles/
whose header names another licence (or no SPDX identifier) would contradict
them. Files without a licence header fall under the collection's LICENSE.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_CODE = ("plugins", "roles")
SPDX = "SPDX-License-Identifier: GPL-3.0-or-later"
# The lines of the collection's header that speak of the licence.
OWN_LICENSE_LINES = (
    "GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)",
    SPDX,
)


def header_lines(text: str) -> list:
    """The comment lines a file starts with (shebang and coding lines included), without their '#'."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        lines.append(stripped.lstrip("#").strip())
    return lines


def license_problem(text: str):
    """Why this file's licence header is not the collection's, or None (no header, or the right one)."""
    header = header_lines(text)
    about_license = [line for line in header if "licen" in line.lower() or "spdx" in line.lower()]
    if not about_license:
        return None
    others = [line for line in about_license if line not in OWN_LICENSE_LINES]
    if others:
        return "its header says %r; the collection is %s" % (others[0], SPDX)
    if SPDX not in header:
        return "its licence header has no %r line" % SPDX
    return None


def shipped_python_files() -> list:
    """Python files under plugins/ and roles/, wherever other changes put them."""
    files = []
    for top in SHIPPED_CODE:
        files.extend(path for path in (ROOT / top).rglob("*.py") if "__pycache__" not in path.parts)
    return sorted(files)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "# Copyright: contributors to hostmesh.sidecar\n# GNU General Public License v3.0+"
            " (see https://www.gnu.org/licenses/gpl-3.0.txt)\n# " + SPDX + "\nimport os\n",
            None,
        ),
        ("#!/usr/bin/python\n# -*- coding: utf-8 -*-\n# " + SPDX + "\n", None),
        ('"""No header at all: the collection\'s LICENSE covers it."""\n# License: MIT, further down\n', None),
        (
            '# Copyright: contributors to hostmesh.sidecar\n# Apache License 2.0\n"""Doc."""\n',
            "its header says 'Apache License 2.0'; the collection is " + SPDX,
        ),
        (
            "# SPDX-License-Identifier: Apache-2.0\n",
            "its header says 'SPDX-License-Identifier: Apache-2.0'; the collection is " + SPDX,
        ),
        (
            "# " + SPDX + "\n# SPDX-License-Identifier: MIT\n",
            "its header says 'SPDX-License-Identifier: MIT'; the collection is " + SPDX,
        ),
        (
            "# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)\n",
            "its licence header has no %r line" % SPDX,
        ),
    ],
)
def test_license_problem_tells_a_foreign_or_incomplete_header(text, expected):
    assert license_problem(text) == expected


def test_the_scan_finds_the_shipped_code():
    names = {path.relative_to(ROOT).as_posix() for path in shipped_python_files()}
    assert "plugins/modules/traffic_capture.py" in names
    assert any(name.startswith("roles/agent/files/") for name in names)


def test_every_shipped_python_file_is_under_the_collections_license():
    problems = []
    for path in shipped_python_files():
        problem = license_problem(path.read_text(encoding="utf-8", errors="replace"))
        if problem:
            problems.append("%s: %s" % (path.relative_to(ROOT), problem))
    assert not problems, "\n".join(problems)
