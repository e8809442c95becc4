"""Shared test setup: keep DDS traffic on this machine and rendering offscreen."""

import os
import random

# Set before rclpy or mujoco is imported anywhere in the session.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


# --- the xArm controller emulator ----------------------------------------------------------------

import itertools  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402

# Every emulated controller gets an address of its own in 127/8 (all loopback on Linux): random per
# session, so test runs of several engineers on one machine do not meet on the same address.
_addresses = itertools.count(1)
_network = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}"


def free_loopback_address() -> str:
    """A loopback address whose controller ports are free here; skips without the right to port 502."""
    for _ in range(20):
        ip = f"{_network}.{next(_addresses) % 254 + 1}"
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, 502))
            return ip
        except PermissionError:
            pytest.skip("the xArm emulator listens on port 502: needs root or CAP_NET_BIND_SERVICE (README)")
        except OSError:  # taken: try the next address
            continue
        finally:
            probe.close()
    raise RuntimeError("no free loopback address for an emulated controller")


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
