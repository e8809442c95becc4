"""Driver backends: `fake` (kinematic) and `xarm_sdk` (xarm-python-sdk), and those that layers
above register (the ROS layer registers the MuJoCo `sim`), all made by `make_backend(name, **params)`.

Backends never see unfiltered targets: only the driver's servo loop calls `command`, with the
output of the safety filter.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Callable

import numpy as np

from evo1_ros.robot import xarm6
from evo1_ros.robot.backend import BackendError, DriverBackend, RobotState

# name -> "module:Class"; imported only when asked for, so `fake` needs neither the SDK nor MuJoCo.
# The robot layer lists its own; a backend from a layer above is added with `register_backend` by
# the code that composes the layers (evo1_ros.nodes registers the sim's).
BACKENDS = {
    "fake": "evo1_ros.robot.backends:FakeBackend",
    "xarm_sdk": "evo1_ros.robot.backends:XArmSdkBackend",
}


def register_backend(name: str, target: str) -> None:
    """Let `make_backend(name)` build `target`, a DriverBackend given as "module:Class"."""
    BACKENDS[name] = target


def make_backend(name: str, **params) -> DriverBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**params)


class FakeBackend(DriverBackend):
    """A kinematic arm: measured positions follow the command with a first-order lag `tau`."""

    name = "fake"

    def __init__(self, initial_positions=xarm6.HOME, initial_gripper: float = 0.0, tau: float = 0.03,
                 clock: Callable[[], float] = time.monotonic):
        self.positions = np.array(initial_positions, dtype=float)
        self.gripper = float(initial_gripper)
        self.target_positions, self.target_gripper = self.positions.copy(), self.gripper
        self.tau = tau
        self.clock = clock
        self._last_update = clock()

    def _advance(self) -> None:
        now = self.clock()
        follow = 1.0 - math.exp(-max(now - self._last_update, 0.0) / self.tau)
        self._last_update = now
        self.positions += follow * (self.target_positions - self.positions)
        self.gripper += follow * (self.target_gripper - self.gripper)

    def connect(self) -> RobotState:
        self._last_update = self.clock()
        return self.read_state()

    def read_state(self) -> RobotState:
        self._advance()
        return RobotState(positions=self.positions.copy(), gripper=self.gripper, stamp=self.clock())

    def command(self, positions: np.ndarray, gripper: float) -> None:
        self._advance()
        self.target_positions = np.array(positions, dtype=float)
        self.target_gripper = float(gripper)

    def stop(self) -> None:
        self._advance()
        self.target_positions, self.target_gripper = self.positions.copy(), self.gripper

    def recover(self) -> RobotState:
        self.stop()
        return self.read_state()

    def close(self) -> None:
        pass


# SDK API return codes and controller error codes (the ones an xArm6 user meets most), in words.
API_CODE_WORDS = {
    0: "ok",
    -1: "not connected to the controller",
    1: "the controller has an uncleared error",
    2: "the controller has an uncleared warning",
    9: "the arm is not ready to move (motion not enabled or state not 0)",
}
CONTROLLER_ERROR_WORDS = {
    22: "self-collision detected",
    23: "joint angle exceeds its limit",
    24: "speed exceeds its limit",
    31: "collision caused abnormal current",
    35: "safety boundary limit",
}
UNCLEARED_ERROR = 1


def describe_code(code: int, controller_error: int = 0) -> str:
    """SDK return code (+ controller error code, if any) in words a user can act on."""
    words = API_CODE_WORDS.get(code, f"SDK call failed with code {code}")
    if controller_error:
        what = CONTROLLER_ERROR_WORDS.get(controller_error, "see the xArm controller error code table")
        words += f"; controller error C{controller_error}: {what}"
    return words


def _load_xarm_api():
    from xarm.wrapper import XArmAPI

    return XArmAPI


class XArmSdkBackend(DriverBackend):
    """A real xArm6 through xarm-python-sdk in servo mode (mode 1, `set_servo_angle_j`).

    `api_class` is `xarm.wrapper.XArmAPI` unless given (tests pass an in-process stand-in). Joint
    states come from the SDK's report stream (`report_type="real"`), so reading them costs no
    round trip. The gripper takes a Modbus round trip per command, so it is sent only when it
    moved by `gripper_deadband` (SDK units) and at most every `gripper_period` seconds; its
    reported state is the last command sent (the SDK's position read is a round trip too).
    """

    name = "xarm_sdk"

    def __init__(self, robot_ip: str, api_class=None, report_type: str = "real", use_gripper: bool = True,
                 gripper_deadband: float = 5.0, gripper_period: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        if not robot_ip:
            raise ValueError("xarm_sdk backend needs robot_ip")
        self.robot_ip = robot_ip
        self.api_class = api_class or _load_xarm_api()
        self.report_type = report_type
        self.use_gripper = use_gripper
        self.gripper_deadband = gripper_deadband
        self.gripper_period = gripper_period
        self.clock = clock
        self.arm = None
        self.gripper = 0.0
        self._sent_gripper_sdk = None
        self._sent_gripper_time = -math.inf

    def _check(self, code, action: str) -> None:
        if code != 0:
            raise BackendError(code, f"{action}: {describe_code(code, self._controller_error())}")

    def _controller_error(self) -> int:
        """Ask the controller (one round trip, only after a failed call): the real-time report
        stream that keeps `angles` fresh does not carry the error code."""
        code, errors = self.arm.get_err_warn_code()  # errors: [error, warning] only when code is 0
        return errors[0] if code == 0 else self.arm.error_code

    def _make_ready(self) -> None:
        """The SDK's bring-up sequence, also the recovery after an error (the arm falls to mode 0,
        state 4): clear the error, enable motion, servo mode, ready state."""
        self._check(self.arm.clean_error(), "clean_error")
        self._check(self.arm.motion_enable(enable=True), "motion_enable")
        self._check(self.arm.set_mode(1), "set_mode(1)")
        self._check(self.arm.set_state(0), "set_state(0)")
        if self.use_gripper:
            self._check(self.arm.set_gripper_mode(0), "set_gripper_mode(0)")
            self._check(self.arm.set_gripper_enable(True), "set_gripper_enable")
            code, position = self.arm.get_gripper_position()
            self._check(code, "get_gripper_position")
            self.gripper = xarm6.sdk_to_gripper(position)
        self._sent_gripper_sdk = None

    def connect(self) -> RobotState:
        self.arm = self.api_class(self.robot_ip, is_radian=True, report_type=self.report_type)
        if not self.arm.connected:
            raise BackendError(-1, f"cannot reach the xArm controller at {self.robot_ip}")
        self._make_ready()
        return self.read_state()

    def read_state(self) -> RobotState:
        error = self.arm.error_code
        return RobotState(
            positions=np.array(self.arm.angles[: xarm6.NUM_JOINTS], dtype=float),
            gripper=self.gripper,
            stamp=self.clock(),
            error_code=error,
            error_words=describe_code(UNCLEARED_ERROR, error) if error else "",
        )

    def command(self, positions: np.ndarray, gripper: float) -> None:
        self._check(self.arm.set_servo_angle_j([float(a) for a in positions], is_radian=True), "set_servo_angle_j")
        if not self.use_gripper:
            return
        target = xarm6.gripper_to_sdk(gripper)
        now = self.clock()
        moved = self._sent_gripper_sdk is None or abs(target - self._sent_gripper_sdk) >= self.gripper_deadband
        if moved and now - self._sent_gripper_time >= self.gripper_period:
            self._check(self.arm.set_gripper_position(target, wait=False), "set_gripper_position")
            self._sent_gripper_sdk, self._sent_gripper_time = target, now
            self.gripper = xarm6.sdk_to_gripper(target)

    def stop(self) -> None:
        """State 4 (stop): the controller halts the arm; `recover` makes it ready again."""
        if self.arm is not None:
            self._check(self.arm.set_state(4), "set_state(4)")

    def recover(self) -> RobotState:
        self._make_ready()
        return self.read_state()

    def close(self) -> None:
        if self.arm is not None:
            self.arm.disconnect()
            self.arm = None
