"""_host_files: a file that cannot be read is None; text that is not UTF-8 is read, not an error."""

from pathlib import Path

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host_files import read_bytes, read_text


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
