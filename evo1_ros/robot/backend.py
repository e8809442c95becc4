"""The interface every xArm6 driver backend implements (xarm SDK, fake, MuJoCo sim).

The driver node owns the safety filter and calls `command` only with filtered targets; a backend
never sees raw policy output.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


NO_SUCH_COMMAND = -4  # the SDK's code for a command that does not exist


class BackendError(RuntimeError):
    """The robot refused or failed a call. `code` is the SDK/controller code, `words` explains it."""

    def __init__(self, code: int, words: str):
        super().__init__(f"[code {code}] {words}")
        self.code = code
        self.words = words


@dataclass
class RobotState:
    positions: np.ndarray  # (6,) joint angles, rad
    gripper: float  # drive_joint, 0 open .. 0.85 closed
    stamp: float  # time.monotonic() when measured (not when read)
    velocities: np.ndarray  # (7,) joints rad/s, then the gripper drive per second
    error_code: int = 0  # 0 = no controller error
    error_words: str = ""
    warning_words: str = ""  # an uncleared controller warning in words ("" = none); the arm keeps moving


class DriverBackend(abc.ABC):
    """One connection to one arm (+ gripper). Methods are called from the driver's servo thread."""

    name: str = "abstract"
    # Whether the arm stands still at the last command when the servo loop stalls (a blocked call):
    # true of an xArm in servo mode and of anything that moves on a real clock. A simulation whose
    # physics waits for the servo loop (lockstep) is still in motion when the loop goes on.
    stalls_stop_the_arm: bool = True

    @abc.abstractmethod
    def connect(self) -> RobotState:
        """Bring the arm up ready to take servo targets; returns the state it starts from."""

    @abc.abstractmethod
    def read_state(self) -> RobotState:
        """Latest measured joint positions and gripper."""

    @abc.abstractmethod
    def command(self, positions: np.ndarray, gripper: float) -> None:
        """Send one servo target (6 joint angles, rad; gripper drive 0..0.85). Raises BackendError."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Halt motion now and hold position."""

    @abc.abstractmethod
    def recover(self) -> RobotState:
        """Clear a controller error and make the arm ready for servo targets again."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def set_teaching(self, on: bool) -> RobotState:
        """Enter (True) or leave hand-guiding: while on, the arm is moved by hand and `command` is not
        called (`command_gripper` is); leaving it, the arm holds where it was put. Backends that
        cannot refuse."""
        raise BackendError(NO_SUCH_COMMAND, f"the {self.name} backend has no teaching mode")

    def set_servo_period(self, period: float) -> None:
        """The servo loop commands every `period` s (of its trajectory clock): a backend whose time
        waits for the loop (a lockstep simulation) advances by one period per command."""

    def command_gripper(self, gripper: float) -> None:
        """Send a gripper target alone (drive 0..0.85), in teaching mode: the joints are in the
        operator's hands. Backends with a teaching mode implement it."""
        raise BackendError(NO_SUCH_COMMAND, f"the {self.name} backend cannot command the gripper alone")

    def helper_threads(self) -> list[int]:
        """Native ids of threads that `command` and `read_state` wait on (e.g. a socket's receiver):
        the servo loop gives them its own real-time priority."""
        return []

    def diagnostics(self) -> dict[str, str]:
        """Backend figures worth showing on /diagnostics (called from another thread: read only)."""
        return {}


class VelocityEstimate:
    """Velocities from successive measurements: a finite difference over a smoothed sample period,
    so jitter in when samples arrive does not show up as jitter in the velocity."""

    def __init__(self, size: int):
        self.velocities = np.zeros(size)
        self._last: tuple[float, np.ndarray] | None = None
        self._period: float | None = None

    def update(self, stamp: float, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        if self._last is not None and stamp > self._last[0]:
            interval = stamp - self._last[0]
            self._period = interval if self._period is None else 0.9 * self._period + 0.1 * interval
            self.velocities = (values - self._last[1]) / max(self._period, 1e-4)
        self._last = (stamp, values)
        return self.velocities
