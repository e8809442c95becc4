"""The ament Python linters' checks (ament_flake8, ament_pep257), as ruff configured in ruff.toml,
over the whole tree: run with the suite, as a ROS 2 package's ament linter tests are."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
