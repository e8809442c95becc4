"""Shared test setup: keep DDS traffic on this machine and rendering offscreen; and in CI, no
passing by skipping.

A test module skips when a heavy dependency is missing (`pytest.importorskip`), so a partial
setup can still run the rest. CI must not: `.ci/run` sets EVO1_ROS_REQUIRE_ALL=1, and then a
required package that does not import is an error at the start of the run, and any skip because
one of them could not be imported fails its test.
"""

import importlib
import os
import random
import re

import pytest

# Set before rclpy or mujoco is imported anywhere in the session.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

REQUIRE_ALL = os.environ.get("EVO1_ROS_REQUIRE_ALL") == "1"
REQUIRED = ("rclpy", "mujoco", "onnxruntime", "cv2", "torch", "rosbags")  # what the test extra installs
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_required_skip(outcome.get_result())
