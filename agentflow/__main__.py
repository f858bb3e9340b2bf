"""`python -m agentflow` (the engine spawns processes: keep the main guard)."""

import sys

from agentflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
