"""The interface every xArm6 driver backend implements (xarm SDK, fake, MuJoCo sim).

The driver node owns the safety filter and calls `command` only with filtered targets; a backend
never sees raw policy output.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


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
    stamp: float  # time.monotonic() when read
    error_code: int = 0  # 0 = no controller error
    error_words: str = ""


class DriverBackend(abc.ABC):
    """One connection to one arm (+ gripper). Methods are called from the driver's servo thread."""

    name: str = "abstract"

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
