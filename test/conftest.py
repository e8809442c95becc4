"""Shared test setup: keep DDS traffic on this machine and rendering offscreen; and in CI, no
passing by skipping.

A test module skips when a heavy dependency is missing (`pytest.importorskip`), so a partial
setup can still run the rest. CI must not: `.ci/run` sets EVO1_ROS_REQUIRE_ALL=1, and then a
required package that does not import is an error at the start of the run, and any skip because
one of them could not be imported fails its test.
"""

import gc
import importlib
import importlib.util
import os
import random
import re

import pytest

# Set before rclpy or mujoco is imported anywhere in the session.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Without a GPU, Triton kernels (runtime/head_kernels.py) run on Triton's CPU interpreter; read
# when triton is first imported.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton before anything loads MuJoCo's OSMesa, as evo1_ros/sim/__init__.py does: a test module
# that imports mujoco first (pytest.importorskip) would otherwise crash the run once torch loads Triton.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

REQUIRE_ALL = os.environ.get("EVO1_ROS_REQUIRE_ALL") == "1"
REQUIRED = ("triton", "rclpy", "mujoco", "onnxruntime", "cv2", "torch", "rosbags")  # what the test extra installs
SKIPPED_IMPORT = re.compile(r"could not import '([\w.]+)'")


def pytest_configure(config):
    if not REQUIRE_ALL:
        return
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except Exception as e:  # an ImportError, or a library that fails to load
            missing.append(f"{name} ({type(e).__name__}: {e})")
    if missing:
        raise pytest.UsageError(f"EVO1_ROS_REQUIRE_ALL=1 and these do not import: {'; '.join(missing)}")


def _required_import_skip(report) -> str | None:
    """The required package a skip report says could not be imported, if any."""
    match = SKIPPED_IMPORT.search(str(report.longrepr))
    return match.group(1) if match and match.group(1).split(".")[0] in REQUIRED else None


def _fail_required_skip(report) -> None:
    if REQUIRE_ALL and report.skipped and (name := _required_import_skip(report)):
        report.outcome = "failed"
        report.longrepr = f"EVO1_ROS_REQUIRE_ALL=1: skipped because {name} could not be imported"


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests():
    """Run the finalizers of a test's graph (nodes, SDK clients, renderers) before the next test:
    on CPython < 3.12, a finalizer that imports while the garbage collector interrupts another
    import on the same thread corrupts the import lock's bookkeeping (KeyError <thread id> from
    importlib._bootstrap, python/cpython#87712), failing whatever test is importing then."""
    yield
    gc.collect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_required_skip(outcome.get_result())


# --- the xArm controller emulator ----------------------------------------------------------------

def free_loopback_address() -> str:
    """A loopback address of its own for an emulated controller (drawn at random in 127/8, so that
    test runs of several engineers on one machine do not meet); skips without the right to port 502."""
    from evo1_ros.xarm_emulator import free_loopback_address as draw

    try:
        return draw()
    except PermissionError as e:
        if REQUIRE_ALL:  # CI runs as root: there, the emulator tests must run
            pytest.fail(f"EVO1_ROS_REQUIRE_ALL=1: {e}")
        pytest.skip(str(e))


@pytest.fixture
def xarm_emulator():
    """start(**EmulatorConfig fields but ip) -> a running EmulatorProcess on an address of its own."""
    from evo1_ros.xarm_emulator import EmulatorConfig, EmulatorProcess

    started = []

    def start(**config):
        emulator = EmulatorProcess(EmulatorConfig(ip=free_loopback_address(), **config)).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()
