"""``python3 -m hostmesh_agent``: the hostmesh-agent command."""

import sys

from hostmesh_agent.cli import main

sys.exit(main())
