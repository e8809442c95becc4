"""What the teleop input devices share. ROS-free.

- `DeviceError`: what a device raises when it fails (unplugged, a read error, silent). A teleop
  source catches it, holds the arm (it sends no further target, so the driver's watchdog stops
  the arm), marks the episode interrupted and names the device from the message.
- `SilenceDetector`: for inputs that stream (a leader arm's JointState topic, Joy, Twist): no
  input for `timeout_s` -> `check` raises DeviceError.
- `CartesianCommand`: what a Cartesian device (SpaceMouse, gamepad, Twist topic) produces each
  control period; `robot/diffik.py` turns its twist into joint targets.
- `apply_deadband`: stick and puck shaping shared by those devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from evo1_ros.robot.diffik import FRAMES
from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN

# Episode control, one set for keys, device buttons and the recorder's services: start an episode;
# stop it and keep it (outcome not marked); stop it and discard it; stop it, keep it and mark it a
# success or a failure.
EPISODE_EVENTS = ("start", "stop", "discard", "success", "failure")
# Twist components in order: linear x y z (m/s), angular x y z (rad/s) about those axes.
TWIST_AXES = ("x", "y", "z", "roll", "pitch", "yaw")


class DeviceError(RuntimeError):
    """A teleop device failed; the message says which device and what happened."""


class SilenceDetector:
    """Tells when a streaming input has gone quiet: `heard(now)` on every message, `check(now)` on
    the control timer. Times are seconds on one monotonic clock of the caller's choosing."""

    def __init__(self, device: str, timeout_s: float):
        if not (math.isfinite(timeout_s) and timeout_s > 0.0):
            raise ValueError(f"{device}: silence timeout must be > 0 s, got {timeout_s}")
        self.device, self.timeout_s = device, timeout_s
        self._last: float | None = None

    def heard(self, now: float) -> None:
        self._last = now

    def silent(self, now: float) -> bool:
        return self._last is None or now - self._last > self.timeout_s

    def check(self, now: float) -> None:
        """Raise DeviceError if the input is silent."""
        if self._last is None:
            raise DeviceError(f"{self.device}: no input received yet")
        if now - self._last > self.timeout_s:
            raise DeviceError(f"{self.device}: no input for {(now - self._last) * 1e3:.0f} ms "
                              f"(timeout {self.timeout_s * 1e3:.0f} ms)")


@dataclass(frozen=True)
class CartesianCommand:
    """One control period's request from a Cartesian device."""

    twist: np.ndarray  # (6,) vx vy vz (m/s), wx wy wz (rad/s); zero while `engaged` is False
    frame: str  # "base" or "tool": the axes the twist is expressed in (robot/diffik.py)
    engaged: bool  # the operator is driving: deadman held, or (devices without one) the device deflected
    gripper: float | None = None  # drive_joint target (0 open .. 0.85 closed); None: leave it
    events: tuple[str, ...] = field(default=())  # EPISODE_EVENTS pressed this period

    def __post_init__(self):
        if self.frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {self.frame!r}")


def apply_deadband(values, width: float) -> np.ndarray:
    """Deflections in [-1, 1] with |v| <= width read as 0; the rest rescaled so output still runs
    continuously from 0 to +-1 (no jump at the deadband's edge). Values beyond +-1 are clipped."""
    values = np.clip(np.asarray(values, dtype=float), -1.0, 1.0)
    return np.sign(values) * np.maximum(np.abs(values) - width, 0.0) / (1.0 - width)


def check_deadband(width: float, device: str) -> None:
    if not (math.isfinite(width) and 0.0 <= width < 1.0):
        raise ValueError(f"{device}: deadband must be in [0, 1), got {width}")


def read_yaml(path, what: str) -> dict:
    """The mapping in the YAML file `path`; ValueError in words for a missing file, bad YAML or
    anything but a mapping at the top."""
    import yaml

    try:
        with open(path) as stream:
            data = yaml.safe_load(stream)
    except OSError as error:
        raise ValueError(f"{what}: cannot read {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{what}: {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def check_keys(data: dict, allowed, what: str) -> None:
    """Refuse settings nobody reads (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown setting(s) {unknown}; known: {sorted(allowed)}")


def compose_command(deflection: np.ndarray, linear_speed: float, angular_speed: float, frame: str,
                    deadman: bool | None, close: bool, release: bool, events: tuple[str, ...] = ()) -> CartesianCommand:
    """The command of shaped deflections (6,) in [-1, 1] and button states. `deadman` None: the
    device has none, and any deflection or gripper button counts as driving. Nothing moves, the
    gripper included, unless the operator is driving; both gripper buttons at once ask for nothing."""
    engaged = deadman if deadman is not None else bool(np.any(deflection)) or close or release
    gripper = None
    if engaged and close != release:
        gripper = GRIPPER_CLOSED if close else GRIPPER_OPEN
    twist = deflection * np.repeat([linear_speed, angular_speed], 3) if engaged else np.zeros(6)
    return CartesianCommand(twist=twist, frame=frame, engaged=bool(engaged), gripper=gripper, events=events)
