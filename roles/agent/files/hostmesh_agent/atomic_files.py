"""Writing files so that readers (Envoy's watchers) only ever see whole ones."""

from __future__ import annotations

import json
import os
from typing import Any


def write_atomic(path: str, data: bytes, mode: int = 0o640) -> bool:
    """Write ``data`` to ``path`` via a rename in the same directory.

    The temporary name starts with a dot in the same (watched) directory, so the
    only event Envoy acts on is the final rename. Returns False when the file
    already holds exactly ``data`` (nothing written, no reload triggered).
    """
    try:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    # No fsync: readers need whole files, which the rename gives; durability does not
    # matter, since the agent rewrites every file at start (and /run is tmpfs anyway).
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.rename(tmp, path)
    return True


def dump_json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
