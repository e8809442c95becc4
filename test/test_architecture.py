"""The layering holds (docs/ARCHITECTURE.md): import-linter's contracts, and the ROS-free core
imported for real in a Python where ROS cannot be imported at all.

Like a ROS 2 package's ament linter tests, these run with the rest of the suite."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROS_LAYER = ("evo1_ros.nodes", "evo1_ros.graphs")


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_import_contracts_are_kept():
    """Layers (ROS layer above the core, no import back up), no ROS in the core, no cycles."""
    proc = run_python("""
        import sys
        from importlinter.cli import lint_imports
        sys.exit(lint_imports(config_filename=".importlinter", no_cache=True, no_logo=True))
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


# A child Python in which every ROS package fails to import, as on a machine without ROS: rclpy,
# the rcl/rosidl/launch/ament machinery, and every message, service and action package.
BLOCK_ROS = """
    import importlib.abc, sys

    ROS_PREFIXES = ("rclpy", "rcl_", "rcl", "rmw", "rosidl", "rpyutils", "launch", "ament_", "ros2")
    ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces", "_actions")

    class NoRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top.startswith(ROS_PREFIXES) or top.endswith(ROS_SUFFIXES):
                raise ImportError(f"{name}: ROS is not importable in this test")
            return None

    sys.meta_path.insert(0, NoRos())
    for name in [m for m in sys.modules if m.split(".")[0].startswith(ROS_PREFIXES)]:
        del sys.modules[name]
"""


def test_every_core_module_imports_without_ros():
    proc = run_python(BLOCK_ROS + f"""
    import importlib, pkgutil
    for name in ("rclpy", "sensor_msgs.msg", "std_srvs.srv", "rcl_interfaces.msg"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise SystemExit(f"the blocker let {{name}} through")

    import evo1_ros
    core = [m.name for m in pkgutil.walk_packages(evo1_ros.__path__, "evo1_ros.")
            if not m.name.startswith({ROS_LAYER!r})]
    for name in core:
        importlib.import_module(name)
    print(len(core), "core modules imported:", " ".join(core))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = proc.stdout.split(":", 1)[1].split()
    # every package of the core is among them (a walk that found nothing would prove nothing)
    for package in ("robot", "model", "runtime", "data", "train", "sim", "teleop"):
        assert f"evo1_ros.{package}" in imported and any(m.startswith(f"evo1_ros.{package}.") for m in imported)


def test_the_cli_starts_without_ros():
    """`evo1-ros --help` loads every subcommand's module, ROS commands included: they import ROS
    only when they run."""
    proc = run_python(BLOCK_ROS + """
    from evo1_ros.cli import build_parser
    build_parser().parse_args(["launch", "-p", "xarm6_inference"])
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
