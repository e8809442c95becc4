#!/usr/bin/env python3
"""Record scripted-expert demos in sim: see `evo1_ros.teleop.record_sim` (`--help` for options)."""

import sys

from evo1_ros.teleop.record_sim import main

if __name__ == "__main__":
    sys.exit(main())
