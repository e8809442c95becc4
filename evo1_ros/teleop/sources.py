"""Teleop input sources: where an operator's motion comes from. ROS-free.

The teleop node streams a joint target (`ArmTarget`) to the driver at a fixed rate. Every stream
period it asks its source for the next target, given the arm's measured pose; keys the node does
not handle itself (help and episode keys are the node's) go to the source with `press`. A new
device is one more `Source` and one more entry in `SOURCES`:

- `next_target` runs on the node's timer: it must not block (read a device on a thread of its
  own, or without waiting); a failed device raises `DeviceError` (teleop/device.py), naming it;
- `engaged()` says whether the operator is driving (a deadman held, a puck deflected): None for
  sources without such a notion (then a pedal's deadman decides, when the operator takes over
  from a policy);
- `restart()`: the next target starts over from the measured pose (the operator takes the arm
  over from a policy, a device came back); `reconnect()` tries to get a failed device back;
- `feed`: an input the node fills from a topic (a leader's JointState, Joy, Twist), or None;
- `hand_guided` sources move the arm by hand: the node asks the driver for teaching mode while
  such a source runs and streams the guided pose as the demonstration's command.

Sources (`make_source(name, SourceSettings)`):
    keyboard    jog keys (teleop/keys.py)
    teaching    the arm moved by hand in the xArm's teaching mode; gripper keys
    leader      a leader arm's joints (Dynamixel bus, or a JointState topic), step-clamped with a
                slow start (teleop/leader.py)
    spacemouse  a 3Dconnexion SpaceMouse, differential IK (robot/diffik.py)
    joy         a gamepad's sensor_msgs/Joy through a YAML map (teleop/joy.py), differential IK
    twist       a geometry_msgs/Twist stream (e.g. the spacenav node), differential IK
"""

from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import numpy as np

from evo1_ros.robot.diffik import DiffIKConfig, DifferentialIK
from evo1_ros.teleop.device import CartesianCommand
from evo1_ros.teleop.inputs import DynamixelInput, SpaceMouseInput, StreamedInput
from evo1_ros.teleop.keys import Command, JogSteps, jog
from evo1_ros.teleop.leader import FollowLimits, LeaderConfig, LeaderFollower, LeaderReading
from evo1_ros.teleop.spacemouse import SpaceMouseConfig


@dataclass(frozen=True)
class ArmTarget:
    joints: np.ndarray  # (6,) rad
    gripper: float  # drive_joint: 0 open .. 0.85 closed


class Source(abc.ABC):
    """An operator's input device (see the module doc)."""

    hand_guided: ClassVar[bool] = False
    feed: StreamedInput | None = None

    @abc.abstractmethod
    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        """The target to stream next, given the measured pose; None: nothing to stream yet.
        Raises DeviceError when the device failed."""

    def engaged(self) -> bool | None:
        """Whether the operator is driving (None: the source cannot tell)."""
        return None

    def restart(self) -> None:
        """Start over from the measured pose at the next target."""

    def reconnect(self) -> None:
        """Try to get a failed device back; DeviceError while it is not."""

    def press(self, command: Command) -> str | None:
        """A key command (joint, cartesian, gripper, scale); a note for the operator, or None."""
        return f"{command.kind} keys do nothing with this source"

    def close(self) -> None:
        """Release the device."""


class KeyboardSource(Source):
    """Jog keys move the target, which starts from where the arm is: joint steps, Cartesian TCP
    steps, gripper."""

    def __init__(self, steps: JogSteps = JogSteps()):
        self.steps = steps
        self.target: ArmTarget | None = None
        self._lock = threading.Lock()  # keys come on the key reader's thread, the timer reads on another

    def press(self, command: Command) -> str | None:
        if command.kind == "scale":
            self.steps = self.steps.scaled(command.sign)
            return f"jog steps {self.steps}"
        with self._lock:
            if self.target is None:
                return "no joint state yet: nothing to jog from"
            self.target = ArmTarget(*jog(command, self.target.joints, self.target.gripper, self.steps))
        return None

    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        with self._lock:
            self.target = self.target or measured
            return self.target

    def restart(self) -> None:
        with self._lock:
            self.target = None


class TeachingSource(Source):
    """The arm is moved by hand (the driver's teaching mode); the gripper keys still work. The
    target is the guided pose the driver measures, with the gripper the keys asked for."""

    hand_guided = True

    def __init__(self):
        self._gripper: float | None = None  # None: as measured, until a gripper key

    def press(self, command: Command) -> str | None:
        if command.kind != "gripper":
            return "teaching mode: move the arm by hand (only the gripper keys apply)"
        self._gripper = float(command.arg)
        return None

    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        return measured if self._gripper is None else replace(measured, gripper=self._gripper)


class LeaderSource(Source):
    """The arm follows a leader arm (GELLO-style, or a second arm): each target moves at most
    `FollowLimits.max_step` per period toward the leader's joints, and at most `start_step` until
    the arm has caught up (at the start, after a restart, after a jump in the readings). `leader`
    reads the leader (DynamixelInput, or a StreamedInput of LeaderReadings the node feeds)."""

    def __init__(self, leader: DynamixelInput | StreamedInput, limits: FollowLimits = FollowLimits()):
        self.leader, self.limits = leader, limits
        self.feed = leader if isinstance(leader, StreamedInput) else None
        self._follower: LeaderFollower | None = None

    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        reading: LeaderReading = self.leader.read()
        if self._follower is None:
            self._follower = LeaderFollower(measured.joints, measured.gripper, self.limits)
        return ArmTarget(*self._follower.step(reading))

    def restart(self) -> None:
        self._follower = None

    def reconnect(self) -> None:
        self.leader.reconnect()

    def press(self, command: Command) -> str | None:
        return "the leader arm drives: move it (keys do nothing)"

    def close(self) -> None:
        self.leader.close()


class CartesianSource(Source):
    """A Cartesian device (SpaceMouse, gamepad, Twist stream): each period its twist moves the
    target through differential IK, from the last target (from the measured pose after a
    restart); while the operator is not driving the target holds. `device` gives a
    CartesianCommand per `read()` (SpaceMouseInput, or a StreamedInput the node feeds)."""

    def __init__(self, device: SpaceMouseInput | StreamedInput, ik: DifferentialIK):
        self.device, self.ik = device, ik
        self.feed = device if isinstance(device, StreamedInput) else None
        self.target: ArmTarget | None = None
        self._engaged = False

    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        command: CartesianCommand = self.device.read()
        target = self.target or measured
        joints = target.joints
        if command.engaged and command.twist.any():
            joints = self.ik.step(joints, command.twist, command.frame)
        gripper = target.gripper if command.gripper is None else command.gripper
        self.target, self._engaged = ArmTarget(joints, gripper), command.engaged
        return self.target

    def engaged(self) -> bool | None:
        return self._engaged

    def restart(self) -> None:
        self.target = None
        self.ik.reset()

    def reconnect(self) -> None:
        self.device.reconnect()

    def press(self, command: Command) -> str | None:
        return "the device drives: keys do nothing with it"

    def close(self) -> None:
        self.device.close()


@dataclass(frozen=True)
class SourceSettings:
    """What the sources are made from (the teleop node fills it from its parameters)."""

    period: float  # s between targets
    joint_limit_margin: float = 0.05  # rad kept clear of the joint limits (the driver's)
    timeout_s: float = 0.5  # a leader or Twist input silent this long has failed
    jog_steps: JogSteps = field(default_factory=JogSteps)
    leader_config: LeaderConfig | None = None  # a Dynamixel leader; None: a JointState leader
    follow: FollowLimits = FollowLimits()
    spacemouse: SpaceMouseConfig = SpaceMouseConfig()
    joy_timeout_s: float = 0.5  # the Joy map's timeout_ms

    def __post_init__(self):
        for name in ("period", "timeout_s", "joy_timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")

    def ik(self) -> DifferentialIK:
        return DifferentialIK(DiffIKConfig(period=self.period, joint_limit_margin=self.joint_limit_margin))


def _leader(s: SourceSettings) -> Source:
    follow = replace(s.follow, joint_limit_margin=s.joint_limit_margin)
    if s.leader_config is not None:
        return LeaderSource(DynamixelInput(s.leader_config, s.period, s.timeout_s), follow)
    return LeaderSource(StreamedInput("leader JointState topic", s.timeout_s), follow)


SOURCES: dict[str, Callable[[SourceSettings], Source]] = {
    "keyboard": lambda s: KeyboardSource(s.jog_steps),
    "teaching": lambda s: TeachingSource(),
    "leader": _leader,
    "spacemouse": lambda s: CartesianSource(SpaceMouseInput(s.spacemouse), s.ik()),
    "joy": lambda s: CartesianSource(StreamedInput("Joy topic", s.joy_timeout_s), s.ik()),
    "twist": lambda s: CartesianSource(StreamedInput("Twist topic", s.timeout_s), s.ik()),
}


def make_source(name: str, settings: SourceSettings) -> Source:
    if name not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, not {name!r}")
    return SOURCES[name](settings)
