"""The mesh tests import their helpers and, to check their output, the agent's config parser."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.join(HERE, "..", "..", "..", "roles", "agent", "files")
for path in (HERE, os.path.normpath(AGENT)):
    if path not in sys.path:
        sys.path.insert(0, path)
