"""The monitoring tests render the agent's metrics with the agent package from the role's files."""

import sys
from pathlib import Path

AGENT_PATH = Path(__file__).resolve().parents[3] / "roles" / "agent" / "files"
if str(AGENT_PATH) not in sys.path:
    sys.path.insert(0, str(AGENT_PATH))
