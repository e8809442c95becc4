"""Keyboard teleop: which key does what, what a jog key does to the joint target, and reading
single keys from a terminal. ROS-free; the teleop node applies the commands.

    joints   1 2 3 4 5 6  +    q w e r t y  -      (joint1 .. joint6)
    TCP      i/k  +x/-x    j/l  +y/-y    u/o  +z/-z    n/m  yaw +/- (about link_base z)
    gripper  c close   v open
    steps    ] larger  [ smaller
    episode  b begin   x stop, keep   s stop: success   f stop: failure   d discard
    h help
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN
from evo1_ros.teleop.jog import cartesian_jog, joint_jog

HELP = __doc__.split("\n\n")[1]


class Command(NamedTuple):
    kind: str  # joint | cartesian | gripper | scale | episode | help
    arg: object = None  # joint index, Cartesian axis (0-2 x y z, 5 yaw), gripper drive, episode event
    sign: float = 1.0


KEYMAP = {
    **{str(i + 1): Command("joint", i, +1.0) for i in range(6)},
    **{key: Command("joint", i, -1.0) for i, key in enumerate("qwerty")},
    "i": Command("cartesian", 0, +1.0), "k": Command("cartesian", 0, -1.0),
    "j": Command("cartesian", 1, +1.0), "l": Command("cartesian", 1, -1.0),
    "u": Command("cartesian", 2, +1.0), "o": Command("cartesian", 2, -1.0),
    "n": Command("cartesian", 5, +1.0), "m": Command("cartesian", 5, -1.0),
    "c": Command("gripper", GRIPPER_CLOSED), "v": Command("gripper", GRIPPER_OPEN),
    "]": Command("scale", sign=2.0), "[": Command("scale", sign=0.5),
    "b": Command("episode", "start"), "x": Command("episode", "stop"), "s": Command("episode", "success"),
    "f": Command("episode", "failure"), "d": Command("episode", "discard"),
    "h": Command("help"),
}


@dataclass
class JogSteps:
    """Target change per key press; holding a key repeats it at the terminal's repeat rate
    (~30 /s), so 0.005 m per press is ~15 cm/s. The driver's limits bound the arm's motion."""

    joint: float = 0.02  # rad
    linear: float = 0.005  # m
    angular: float = 0.03  # rad

    def scaled(self, factor: float) -> "JogSteps":
        return JogSteps(self.joint * factor, self.linear * factor, self.angular * factor)


def jog(command: Command, q: np.ndarray, gripper: float, steps: JogSteps) -> tuple[np.ndarray, float]:
    """New (joint target (6,), gripper drive) after a joint, cartesian or gripper command."""
    if command.kind == "joint":
        return joint_jog(q, command.arg, command.sign * steps.joint), gripper
    if command.kind == "cartesian":
        twist = np.zeros(6)
        twist[command.arg] = command.sign * (steps.linear if command.arg < 3 else steps.angular)
        return cartesian_jog(q, twist[:3], twist[3:]), gripper
    if command.kind == "gripper":
        return np.array(q, dtype=float), float(command.arg)
    raise ValueError(f"{command.kind} is not a motion command")


class Terminal:
    """stdin in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still interrupts), restored
    on exit. `keys()` yields single characters; escape sequences (arrows, F-keys) are skipped."""

    def __init__(self, stream=sys.stdin):
        self.fd = stream.fileno()

    def __enter__(self) -> "Terminal":
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def keys(self, timeout: float = 0.1) -> Iterator[str | None]:
        """Keys as they come; None after `timeout` s without one, so the reader can check for exit."""
        while True:
            if not select.select([self.fd], [], [], timeout)[0]:
                yield None
                continue
            chunk = os.read(self.fd, 32).decode(errors="ignore")
            if not chunk.startswith("\x1b"):
                yield from chunk
