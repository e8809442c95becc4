"""Driver backends: `fake` (kinematic) and `xarm_sdk` (xarm-python-sdk), and those that layers
above register (the ROS layer registers the MuJoCo `sim`), all made by `make_backend(name, **params)`.

Backends never see unfiltered targets: only the driver's servo loop calls `command`, with the
output of the safety filter.
"""

from __future__ import annotations

import collections
import importlib
import math
import threading
import time
from typing import Callable

import numpy as np

from evo1_ros.robot import xarm6
from evo1_ros.robot.backend import BackendError, DriverBackend, RobotState, VelocityEstimate

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
    """A kinematic arm: measured positions follow the command with a first-order lag `tau`.
    Its teaching mode is emulated: the arm stays where `guide` puts it."""

    name = "fake"

    def __init__(self, initial_positions=xarm6.HOME, initial_gripper: float = 0.0, tau: float = 0.03,
                 clock: Callable[[], float] = time.monotonic):
        self.positions = np.array(initial_positions, dtype=float)
        self.gripper = float(initial_gripper)
        self.target_positions, self.target_gripper = self.positions.copy(), self.gripper
        self.tau = tau
        self.clock = clock
        self.teaching = False
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
        # the first-order lag's own velocity: (target - position) / tau
        velocities = np.append(self.target_positions - self.positions, self.target_gripper - self.gripper) / self.tau
        return RobotState(positions=self.positions.copy(), gripper=self.gripper, stamp=self.clock(),
                          velocities=velocities)

    def command(self, positions: np.ndarray, gripper: float) -> None:
        self._advance()
        self.target_positions = np.array(positions, dtype=float)
        self.target_gripper = float(gripper)

    def command_gripper(self, gripper: float) -> None:
        self._advance()
        self.target_gripper = float(gripper)

    def stop(self) -> None:
        self._advance()
        self.target_positions, self.target_gripper = self.positions.copy(), self.gripper

    def recover(self) -> RobotState:
        self.teaching = False
        self.stop()
        return self.read_state()

    def set_teaching(self, on: bool) -> RobotState:
        self.teaching = on
        self.stop()
        return self.read_state()

    def guide(self, positions: np.ndarray) -> None:
        """Move the arm by hand (teaching mode only, as on the real arm)."""
        if not self.teaching:
            raise BackendError(NOT_READY, "the fake arm can be guided by hand in teaching mode only")
        self._advance()
        self.positions = np.array(positions, dtype=float)
        self.target_positions = self.positions.copy()

    def close(self) -> None:
        pass


# SDK API return codes and controller error/warning codes (the ones an xArm6 user meets most), in words.
NOT_CONNECTED, HAS_ERROR, HAS_WARNING, TIMED_OUT, NOT_READY = -1, 1, 2, 3, 9
API_CODE_WORDS = {
    0: "ok",
    NOT_CONNECTED: "not connected to the controller",
    HAS_ERROR: "the controller has an uncleared error",
    HAS_WARNING: "the controller has an uncleared warning",
    TIMED_OUT: "the controller did not answer in time",
    NOT_READY: "the arm is not ready to move (motion not enabled or state not 0)",
}
CONTROLLER_ERROR_WORDS = {
    22: "self-collision detected",
    23: "joint angle exceeds its limit",
    24: "speed exceeds its limit",
    31: "collision caused abnormal current",
    35: "safety boundary limit",
}
CONTROLLER_WARNING_WORDS = {
    11: "the controller's command buffer is full",
    12: "a command's parameters are invalid",
    13: "the controller does not know a command",
    14: "a command has no solution",
    15: "the controller's Modbus command queue is full",
}


def describe_code(code: int, controller_error: int = 0) -> str:
    """SDK return code (+ controller error code, if any) in words a user can act on."""
    words = API_CODE_WORDS.get(code, f"SDK call failed with code {code}")
    if controller_error:
        what = CONTROLLER_ERROR_WORDS.get(controller_error, "see the xArm controller error code table")
        words += f"; controller error C{controller_error}: {what}"
    return words


def describe_warning(code: int) -> str:
    return f"controller warning W{code}: {CONTROLLER_WARNING_WORDS.get(code, 'see the xArm warning code table')}"


WARNING_POLL_S = 0.25  # how often the auxiliary connection asks for the controller's warning code


def _load_xarm_api():
    from xarm.wrapper import XArmAPI

    return XArmAPI


class AuxiliaryLink:
    """The backend's second connection to the controller, on a thread of its own: the gripper
    (commands and position reads through the RS-485 pass-through, each a round trip of several ms)
    and the controller's error and warning codes, polled. Every SDK call on a connection holds
    that connection's lock until its reply arrives, so none of this may share the servo stream's.
    The servo thread only hands over gripper targets and reads what this thread found out."""

    def __init__(self, arm, use_gripper: bool, deadband: float, period: float):
        self.arm = arm
        self.use_gripper = use_gripper
        self.deadband, self.period = deadband, period
        self.target: float | None = None  # SDK units, newest wins; set by the servo thread
        self.gripper = 0.0  # measured position, SDK units
        self.gripper_velocity = VelocityEstimate(1)
        self.warning = 0
        self.fault: BackendError | None = None
        self.round_trips: collections.deque = collections.deque(maxlen=50)  # gripper round trips, s
        self._sent: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _check(self, code: int, action: str) -> None:
        if code not in (0, HAS_WARNING):
            raise BackendError(code, f"{action}: {describe_code(code)}")

    def start(self) -> None:
        """Bring the gripper up (raises BackendError), then poll on a thread of its own."""
        self.stop()
        self.fault, self.warning = None, 0
        if self.use_gripper:
            self._check(self.arm.clean_gripper_error(), "gripper clean_error")
            self._check(self.arm.set_gripper_mode(0), "set_gripper_mode(0)")
            self._check(self.arm.set_gripper_enable(True), "set_gripper_enable")
            self._read_gripper()
        self._sent = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="xarm_auxiliary", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _read_gripper(self) -> None:
        result = self.arm.get_gripper_position()
        if not isinstance(result, tuple):  # the SDK returns a bare code when the gripper reports a fault
            raise BackendError(result, f"the gripper reports a fault (gripper error {self.arm.gripper_error_code})")
        code, position = result
        self._check(code if position is not None else TIMED_OUT, "get_gripper_position")
        self.gripper = float(position)
        self.gripper_velocity.update(time.monotonic(), [xarm6.sdk_to_gripper(position)])

    def _run(self) -> None:
        next_codes = 0.0
        while not self._stop.wait(self.period):
            try:
                if self.use_gripper:
                    target = self.target
                    if target is not None and (self._sent is None or abs(target - self._sent) >= self.deadband):
                        start = time.monotonic()
                        # no_check: one round trip (no wait for motion, no baud or error reads)
                        self._check(self.arm.set_gripper_position(target, wait=False, no_check=True),
                                    "set_gripper_position")
                        self.round_trips.append(time.monotonic() - start)
                        self._sent = target
                    else:
                        self._read_gripper()
                if time.monotonic() >= next_codes:
                    code, codes = self.arm.get_err_warn_code()
                    self._check(code, "get_err_warn_code")
                    self.warning = codes[1]
                    next_codes = time.monotonic() + WARNING_POLL_S
            except BackendError as e:
                self.fault = BackendError(e.code, f"gripper/status connection: {e.words}")
                return
            except Exception as e:  # an SDK or socket error: reported, like a failed call
                self.fault = BackendError(NOT_CONNECTED, f"gripper/status connection: {type(e).__name__}: {e}")
                return


class XArmSdkBackend(DriverBackend):
    """A real xArm6 (or the emulator of `evo1_ros.xarm_emulator`) through xarm-python-sdk, in servo
    mode (mode 1, `set_servo_angle_j` every tick).

    Joint states come from the report stream (`report_type="real"`: 100 Hz or 250 Hz), stamped
    with when each report arrived; reading them costs no round trip. A stream silent for
    `report_timeout` s is a fault. Errors the controller raises show in the next command's reply,
    and a stop (state 4) in the next report. Two connections (the controller takes several
    clients, as xArm Studio beside the SDK): this one streams servo targets, an `AuxiliaryLink`
    does the gripper and the warning codes on a thread of its own, so a slow or lost gripper
    reply never holds up the servo stream. Gripper targets are sent when they moved by
    `gripper_deadband` (SDK units), at most every `gripper_period` s.
    """

    name = "xarm_sdk"

    def __init__(self, robot_ip: str, use_gripper: bool = True, report_type: str = "real",
                 gripper_deadband: float = 5.0, gripper_period: float = 0.1, command_timeout: float = 0.5,
                 report_timeout: float = 0.2, api_class=None):
        """command_timeout: longest wait for a command's reply (more than the 190 ms stalls the
        controller is known for); api_class: `xarm.wrapper.XArmAPI` unless given."""
        if not robot_ip:
            raise ValueError("xarm_sdk backend needs robot_ip")
        self.robot_ip = robot_ip
        self.api_class = api_class or _load_xarm_api()
        self.report_type = report_type
        self.use_gripper = use_gripper
        self.gripper_deadband, self.gripper_period = gripper_deadband, gripper_period
        self.command_timeout, self.report_timeout = command_timeout, report_timeout
        self.arm = None
        self.auxiliary: AuxiliaryLink | None = None
        self._report: tuple[float, np.ndarray, np.ndarray] | None = None  # arrival, joints, velocities
        self._joint_velocity = VelocityEstimate(xarm6.NUM_JOINTS)
        self._servoing = False  # we made the arm ready: a stop (state 4) from elsewhere is a fault

    def _check(self, code, action: str) -> None:
        if code in (0, HAS_WARNING):  # a warning does not stop the arm; the auxiliary link reports it
            return
        if not self.arm.connected:  # the SDK gives a timeout (3) when the socket closed under the call
            raise BackendError(NOT_CONNECTED, f"{action}: lost the connection to the controller at {self.robot_ip}")
        raise BackendError(code, f"{action}: {describe_code(code, self._controller_error() if code == 1 else 0)}")

    def _controller_error(self) -> int:
        """Ask the controller (one round trip, only after a failed call or a stop): the real-time
        report stream that keeps `angles` fresh does not carry the error code."""
        code, errors = self.arm.get_err_warn_code()  # errors: [error, warning] only when code is 0
        return errors[0] if code == 0 else 0

    def _open(self, **kwargs):
        try:
            arm = self.api_class(self.robot_ip, is_radian=True, **kwargs)
        except Exception as e:  # the SDK raises a bare Exception when the socket does not connect
            raise BackendError(NOT_CONNECTED, f"cannot reach the xArm controller at {self.robot_ip}: {e}") from None
        if not arm.connected:
            raise BackendError(NOT_CONNECTED, f"cannot reach the xArm controller at {self.robot_ip}")
        arm.set_timeout(self.command_timeout)
        return arm

    def _on_report(self, report: dict) -> None:
        """Called by the SDK's report thread for every report."""
        now = time.monotonic()
        joints = np.array(report["joints"][: xarm6.NUM_JOINTS], dtype=float)
        self._report = (now, joints, self._joint_velocity.update(now, joints))

    def _await_report(self, condition, what: str, timeout: float = 2.0) -> None:
        """Wait until a report that arrived after now satisfies `condition()`; BackendError if none."""
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            if self._report is not None and self._report[0] > since and condition():
                return
            time.sleep(0.005)
        error = self._controller_error()
        raise BackendError(HAS_ERROR if error else NOT_READY,
                           f"{what}: not seen in the report stream within {timeout:g} s (state {self.arm.state}, "
                           f"mode {self.arm.mode}); {describe_code(HAS_ERROR if error else NOT_READY, error)}")

    def _enter_mode(self, mode: int) -> None:
        self._check(self.arm.set_mode(mode), f"set_mode({mode})")
        self._check(self.arm.set_state(0), "set_state(0)")
        self._await_report(lambda: self.arm.mode == mode and self.arm.state in (1, 2), f"mode {mode}, ready")

    def _make_ready(self) -> None:
        """The SDK's bring-up sequence, also the recovery after an error (the arm falls to mode 0,
        state 4): clear the error, enable motion, servo mode, ready state; then the gripper."""
        self._servoing = False
        self._check(self.arm.clean_error(), "clean_error")  # answers "warning" while one is left: fine
        self._check(self.arm.clean_warn(), "clean_warn")  # answers "error" while one is left: first the error
        self.arm.get_err_warn_code()  # the SDK caches the last codes it read; read them afresh
        self._check(self.arm.motion_enable(enable=True), "motion_enable")
        self._enter_mode(1)
        self._servoing = True
        self.auxiliary.start()

    def connect(self) -> RobotState:
        self.close()  # what a failed attempt left open
        self.arm = self._open(report_type=self.report_type)
        self.arm.register_report_location_callback(self._on_report, report_cartesian=False, report_joints=True)
        self._await_report(lambda: True, "joint report")
        # the gripper and status connection: no report stream of its own, no pause check (a state read)
        self.auxiliary = AuxiliaryLink(self._open(enable_report=False, check_is_pause=False), self.use_gripper,
                                       self.gripper_deadband, self.gripper_period)
        self._make_ready()
        return self.read_state()

    def read_state(self) -> RobotState:
        if not self.arm.connected:
            raise BackendError(NOT_CONNECTED, f"lost the connection to the controller at {self.robot_ip}")
        stamp, joints, velocities = self._report
        age = time.monotonic() - stamp
        if age > self.report_timeout:
            raise BackendError(TIMED_OUT, f"the report stream is silent: no joint state for {age * 1e3:.0f} ms")
        if self._servoing and self.arm.state == 4:  # stopped by an error, the teach pendant or an E-stop
            error = self._controller_error()
            code = HAS_ERROR if error else NOT_READY
            raise BackendError(code, f"the controller stopped the arm: {describe_code(code, error)}")
        aux = self.auxiliary
        if aux.fault is not None:
            raise aux.fault
        if self.use_gripper:
            gripper, gripper_velocity = xarm6.sdk_to_gripper(aux.gripper), float(aux.gripper_velocity.velocities[0])
        else:
            gripper, gripper_velocity = 0.0, 0.0
        return RobotState(positions=joints, gripper=gripper, stamp=stamp,
                          velocities=np.append(velocities, gripper_velocity),
                          warning_words=describe_warning(aux.warning) if aux.warning else "")

    def command(self, positions: np.ndarray, gripper: float) -> None:
        self._check(self.arm.set_servo_angle_j([float(a) for a in positions], is_radian=True), "set_servo_angle_j")
        self.command_gripper(gripper)

    def command_gripper(self, gripper: float) -> None:
        """Handed to the auxiliary link's thread (the gripper's own path, also in teaching mode)."""
        if self.use_gripper:
            self.auxiliary.target = xarm6.gripper_to_sdk(gripper)

    def stop(self) -> None:
        """State 4 (stop): the controller halts the arm; `recover` makes it ready again."""
        self._servoing = False
        if self.arm is not None:
            self._check(self.arm.set_state(4), "set_state(4)")

    def recover(self) -> RobotState:
        if not (self.arm.connected and self.auxiliary.arm.connected):
            self.close()
            return self.connect()
        self._make_ready()
        return self.read_state()

    def set_teaching(self, on: bool) -> RobotState:
        """Joint teaching (mode 2): the arm is moved by hand; back in servo mode it holds there."""
        self._enter_mode(2 if on else 1)
        return self.read_state()

    def helper_threads(self) -> list[int]:
        # The SDK hands each reply from its command socket's receiver thread to the caller through a
        # queue, and the reports from the report socket's receiver to its report thread: at normal
        # priority they delay set_servo_angle_j and the joint states on a busy CPU, whatever the
        # servo thread's priority (benchmarks/control_loop.py --backend xarm_sdk).
        sdk = getattr(self.arm, "_arm", None)
        threads = [getattr(sdk, name, None) for name in ("_stream", "_stream_report", "_report_thread")]
        return [t.native_id for t in threads if isinstance(t, threading.Thread) and t.native_id]

    def diagnostics(self) -> dict[str, str]:
        values = {}
        if self._report is not None:
            values["report_age_ms"] = f"{(time.monotonic() - self._report[0]) * 1e3:.1f}"
        if self.auxiliary is not None and self.auxiliary.round_trips:
            values["gripper_round_trip_max_ms"] = f"{max(self.auxiliary.round_trips) * 1e3:.1f}"
        return values

    def close(self) -> None:
        self._servoing = False
        if self.auxiliary is not None:
            self.auxiliary.stop()
            self.auxiliary.arm.disconnect()
            self.auxiliary = None
        if self.arm is not None:
            self.arm.release_report_location_callback(self._on_report)
            self.arm.disconnect()
            self.arm = None
            self._report = None
