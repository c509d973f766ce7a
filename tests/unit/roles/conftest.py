"""The role filter tests import the agent package (its own config parser) from the role's files."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
AGENT_PATH = ROOT / "roles" / "agent" / "files"
if str(AGENT_PATH) not in sys.path:
    sys.path.insert(0, str(AGENT_PATH))
