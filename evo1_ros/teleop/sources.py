"""Teleop input sources: where an operator's motion comes from. ROS-free.

The teleop node streams a joint target (`ArmTarget`) to the driver at a fixed rate. Every stream
period it asks its source for the next target, given the arm's measured pose; keys the node does
not handle itself (help and episode keys are the node's) go to the source with `press`. A new
device (a leader arm, a SpaceMouse, a joystick) is one more `Source` and one more entry in
`SOURCES`:

- `next_target` runs on the node's timer: it must not block (read a device on a thread of its
  own, or without waiting);
- `hand_guided` sources move the arm by hand: the node asks the driver for teaching mode while
  such a source runs and streams the guided pose as the demonstration's command.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from evo1_ros.teleop.keys import Command, JogSteps, jog


@dataclass(frozen=True)
class ArmTarget:
    joints: np.ndarray  # (6,) rad
    gripper: float  # drive_joint: 0 open .. 0.85 closed


class Source(abc.ABC):
    """An operator's input device (see the module doc)."""

    hand_guided: ClassVar[bool] = False

    @abc.abstractmethod
    def next_target(self, measured: ArmTarget) -> ArmTarget | None:
        """The target to stream next, given the measured pose; None: nothing to stream yet."""

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


SOURCES: dict[str, type[Source]] = {"keyboard": KeyboardSource, "teaching": TeachingSource}
