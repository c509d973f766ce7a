"""_host_files: readers that answer None, and the one atomic writer every module uses."""

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import (
    read_bytes,
    read_existing,
    read_text,
    staged_copy,
    write_atomic,
)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_and_unreadable_files_read_as_none(tmp_path: Path) -> None:
    assert read_bytes(tmp_path / "missing") is None
    assert read_text(tmp_path / "missing") is None
    # A directory cannot be read as a file either.
    assert read_text(tmp_path) is None


def test_text_that_is_not_utf8_is_replaced_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "stamp"
    path.write_bytes(b"digest \xff\xfe\n")
    assert read_bytes(path) == b"digest \xff\xfe\n"
    assert read_text(path) == "digest \ufffd\ufffd\n"


def test_read_existing_is_none_only_for_a_missing_file(tmp_path: Path) -> None:
    assert read_existing(str(tmp_path / "missing")) is None
    (tmp_path / "there").write_bytes(b"x")
    assert read_existing(str(tmp_path / "there")) == b"x"
    with pytest.raises(IsADirectoryError):
        read_existing(str(tmp_path))


@pytest.mark.parametrize("umask", [0o000, 0o077])
@pytest.mark.parametrize("wanted", [0o600, 0o644])
def test_a_new_file_gets_exactly_the_mode_asked_whatever_the_umask(tmp_path: Path, umask: int, wanted: int) -> None:
    path = tmp_path / "file"
    old = os.umask(umask)
    try:
        assert write_atomic(str(path), "text\n", wanted) is True
    finally:
        os.umask(old)
    assert path.read_bytes() == b"text\n" and mode(path) == wanted
    assert os.listdir(tmp_path) == ["file"]


def test_replacing_gives_a_new_file_and_never_writes_into_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    path.write_bytes(b"old\n")
    path.chmod(0o600)
    with open(path, "rb") as before:
        assert write_atomic(str(path), b"new\n", 0o644) is True
        # A reader that opened the old file still reads it whole: the new one was renamed over the name.
        assert before.read() == b"old\n"
    assert path.read_bytes() == b"new\n" and mode(path) == 0o644
    assert os.listdir(tmp_path) == ["rules"]


def test_readers_see_the_old_or_the_new_content_never_a_part(tmp_path: Path) -> None:
    path = tmp_path / "big"
    versions = [bytes([ord("a") + n]) * 4_000_000 for n in range(3)]
    write_atomic(str(path), versions[0], 0o644)
    seen = set()
    errors = []
    done = threading.Event()

    def read_until_done():
        while not done.is_set():
            try:
                seen.add(path.read_bytes())
            except OSError as error:  # the name must never be missing, not even for a moment
                errors.append(error)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for round_ in range(12):
            write_atomic(str(path), versions[(round_ + 1) % 3], 0o644)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not errors and seen <= set(versions)
    assert len(seen) > 1, "the reader ran during the writes"


def test_the_same_content_is_not_written_again(tmp_path: Path) -> None:
    path = tmp_path / "stamp"
    write_atomic(str(path), "same\n", 0o600)
    before = os.stat(path)
    assert write_atomic(str(path), b"same\n", 0o600) is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_same_content_with_another_mode_only_has_its_mode_put_right(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_atomic(str(path), b"secret\n", 0o600)
    path.chmod(0o644)
    inode = os.stat(path).st_ino
    assert write_atomic(str(path), b"secret\n", 0o600) is True
    assert mode(path) == 0o600 and os.stat(path).st_ino == inode


def test_a_symlink_is_replaced_by_a_file_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"same\n")
    target.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert write_atomic(str(link), b"same\n", 0o600) is True
    assert not link.is_symlink() and link.read_bytes() == b"same\n" and mode(link) == 0o600
    assert target.read_bytes() == b"same\n" and mode(target) == 0o644


def test_a_failed_replace_leaves_what_was_there_and_no_temporary_file(tmp_path: Path) -> None:
    # A directory where the file should go: the rename fails.
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "inside").write_bytes(b"kept\n")
    with pytest.raises(IsADirectoryError):
        write_atomic(str(tmp_path / "rules"), b"new\n", 0o644)
    assert os.listdir(tmp_path) == ["rules"]
    assert (tmp_path / "rules" / "inside").read_bytes() == b"kept\n"


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    """A real short write: the process may write files of 4 KiB at most (RLIMIT_FSIZE), and writes 64 KiB."""
    path = tmp_path / "stamp"
    path.write_bytes(b"old\n")
    script = """
import resource, signal, sys
from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_atomic(sys.argv[1], b"x" * 65536, 0o600)
except OSError as error:
    print(error.errno)
    sys.exit(3)
"""
    collections = Path(__file__).resolve().parents[3] / ".build" / "collections"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(collections)),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert int(proc.stdout) == errno.EFBIG
    assert path.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["stamp"]


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "absent" / "file"), b"x", 0o644)
    assert os.listdir(tmp_path) == []


def test_staged_copy_is_complete_with_its_mode_and_gone_unless_moved(tmp_path: Path) -> None:
    path = tmp_path / "ca-key.pem"
    with staged_copy(str(path), b"key\n", 0o600) as temp:
        assert os.path.dirname(temp) == str(tmp_path) and Path(temp).read_bytes() == b"key\n"
        assert mode(temp) == 0o600
        os.link(temp, path)
    assert os.listdir(tmp_path) == ["ca-key.pem"] and path.read_bytes() == b"key\n"
    with pytest.raises(RuntimeError), staged_copy(str(path), b"other\n", 0o600):
        raise RuntimeError("the caller failed")
    assert os.listdir(tmp_path) == ["ca-key.pem"]
