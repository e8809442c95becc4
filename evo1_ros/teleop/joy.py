"""Gamepads, pedals and Twist streams -> `CartesianCommand`. ROS-free: plain lists in (the ROS
adapter passes a `sensor_msgs/Joy`'s `axes` and `buttons`, or a `geometry_msgs/Twist`'s
`linear` and `angular`), so the mapping is tested without a topic.

A Joy map is a YAML file (`config/teleop_joy_xbox.yaml` is one for an Xbox pad on Linux's joy node):

    frame: base            # twist axes: base (link_base) or tool (link_tcp)
    linear_speed: 0.15     # m/s at full deflection
    angular_speed: 0.6     # rad/s at full deflection
    deadband: 0.1          # stick deflection read as zero
    timeout_ms: 500        # no Joy message for this long: the pad is silent (joy node: autorepeat_rate > 2 Hz)
    axes:                  # twist component: a Joy axis (and sign), or a [plus, minus] button pair
      x: {axis: 1}
      z: {buttons: [5, 2]}
    buttons:               # role: Joy button index
      deadman: 4           # held to move; without one, any deflection counts as driving
      gripper_close: 0
      start: 7

Components and roles not listed are unused: a foot pedal's map has only `buttons: {start: 0,
stop: 1}`. Episode buttons fire once per press (on the press, not while held; a button already
held when the first message arrives does not fire); the deadman gates motion and the gripper.

    mapper = JoyMapper(JoyMap.load("config/teleop_joy_xbox.yaml"))
    silence = SilenceDetector("joy", mapper.map.timeout_ms / 1e3)
    on each Joy message:   command = mapper.command(msg.axes, msg.buttons); silence.heard(now)
    on the control timer:  silence.check(now)  # DeviceError once the pad has gone quiet

A Twist stream (e.g. the spacenav node) maps through `twist_command(linear, angular, TwistInput(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from evo1_ros.teleop.device import (
    EPISODE_EVENTS,
    TWIST_AXES,
    CartesianCommand,
    apply_deadband,
    check_deadband,
    check_keys,
    compose_command,
    read_yaml,
)

BUTTON_ROLES = ("deadman", "gripper_close", "gripper_open", *EPISODE_EVENTS)


@dataclass(frozen=True)
class AxisBinding:
    """Where one twist component comes from: Joy axis `axis` times `sign`, or the button pair
    `buttons` = (plus, minus) reading +1, -1 or 0."""

    axis: int | None = None
    sign: float = 1.0
    buttons: tuple[int, int] | None = None

    def __post_init__(self):
        if (self.axis is None) == (self.buttons is None):
            raise ValueError("an axis binding needs exactly one of `axis` or `buttons`")
        if self.axis is not None:
            _check_index(self.axis, "axis")
        if self.buttons is not None:
            if len(self.buttons) != 2:
                raise ValueError(f"`buttons` must be [plus, minus], got {list(self.buttons)}")
            for button in self.buttons:
                _check_index(button, "button")
        if self.sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {self.sign}")


@dataclass(frozen=True)
class JoyMap:
    frame: str = "base"
    linear_speed: float = 0.15  # m/s at full deflection
    angular_speed: float = 0.6  # rad/s at full deflection
    deadband: float = 0.1
    timeout_ms: float = 500.0
    axes: dict[str, AxisBinding] = field(default_factory=dict)  # twist component -> binding
    buttons: dict[str, int] = field(default_factory=dict)  # role -> Joy button index

    def __post_init__(self):
        check_keys(self.axes, TWIST_AXES, "Joy map axes")
        check_keys(self.buttons, BUTTON_ROLES, "Joy map buttons")
        for role, index in self.buttons.items():
            _check_index(index, f"button for {role}")
        check_deadband(self.deadband, "Joy map")
        for name in ("linear_speed", "angular_speed", "timeout_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"Joy map: {name} must be > 0, got {value!r}")
        CartesianCommand(np.zeros(6), self.frame, False)  # refuses an unknown frame

    @classmethod
    def from_dict(cls, data: dict) -> "JoyMap":
        check_keys(data, cls.__dataclass_fields__, "Joy map")
        axes = data.get("axes") or {}
        if not isinstance(axes, dict) or not all(isinstance(b, dict) for b in axes.values()):
            raise ValueError("Joy map: `axes` must map twist components to {axis: i} or {buttons: [plus, minus]}")
        try:
            bindings = {name: AxisBinding(**{k: tuple(v) if k == "buttons" else v for k, v in binding.items()})
                        for name, binding in axes.items()}
        except TypeError as error:  # an unknown key in a binding
            raise ValueError(f"Joy map axes: {error}") from error
        buttons = data.get("buttons") or {}
        if not isinstance(buttons, dict):
            raise ValueError("Joy map: `buttons` must map roles to button indices")
        return cls(**{**data, "axes": bindings, "buttons": buttons})

    @classmethod
    def load(cls, path) -> "JoyMap":
        try:
            return cls.from_dict(read_yaml(path, "Joy map"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


class JoyMapper:
    """Joy messages -> CartesianCommand, remembering the last buttons to fire events on presses."""

    def __init__(self, joy_map: JoyMap):
        self.map = joy_map
        self._pressed: np.ndarray | None = None
        self._need_axes = 1 + max([b.axis for b in joy_map.axes.values() if b.axis is not None], default=-1)
        self._need_buttons = 1 + max([*joy_map.buttons.values(),
                                      *(i for b in joy_map.axes.values() if b.buttons for i in b.buttons)], default=-1)

    def command(self, axes: Sequence[float], buttons: Sequence[int]) -> CartesianCommand:
        """The command of one Joy message; ValueError in words for one the map cannot read."""
        axes = np.asarray(axes, dtype=float)
        pressed = np.asarray(buttons) != 0
        if axes.ndim != 1 or len(axes) < self._need_axes:
            raise ValueError(f"Joy message has {axes.size} axes; the map reads axis {self._need_axes - 1}")
        if pressed.ndim != 1 or len(pressed) < self._need_buttons:
            raise ValueError(f"Joy message has {pressed.size} buttons; the map reads button {self._need_buttons - 1}")
        if not np.isfinite(axes).all():
            raise ValueError(f"Joy message axes must be finite, got {axes.tolist()}")
        joy_map = self.map
        deflection = np.zeros(6)
        for i, name in enumerate(TWIST_AXES):
            binding = joy_map.axes.get(name)
            if binding is None:
                continue
            if binding.axis is not None:
                deflection[i] = binding.sign * axes[binding.axis]
            else:
                deflection[i] = binding.sign * (float(pressed[binding.buttons[0]]) - float(pressed[binding.buttons[1]]))
        deflection = apply_deadband(deflection, joy_map.deadband)

        def held(role):
            return role in joy_map.buttons and bool(pressed[joy_map.buttons[role]])

        previous = self._pressed if self._pressed is not None else pressed
        events = tuple(e for e in EPISODE_EVENTS
                       if e in joy_map.buttons and pressed[joy_map.buttons[e]] and not previous[joy_map.buttons[e]])
        self._pressed = pressed
        deadman = held("deadman") if "deadman" in joy_map.buttons else None
        return compose_command(deflection, joy_map.linear_speed, joy_map.angular_speed, joy_map.frame, deadman,
                               held("gripper_close"), held("gripper_open"), events)


@dataclass(frozen=True)
class TwistInput:
    """A Twist stream: velocities taken as m/s and rad/s times the scales (spacenav publishes
    deflections of about +-1: scale them to the speeds you want). A zero twist is not engaged."""

    frame: str = "base"
    linear_scale: float = 1.0
    angular_scale: float = 1.0
    timeout_ms: float = 500.0

    def __post_init__(self):
        for name in ("linear_scale", "angular_scale", "timeout_ms"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"Twist input: {name} must be > 0, got {value!r}")
        CartesianCommand(np.zeros(6), self.frame, False)


def twist_command(linear: Sequence[float], angular: Sequence[float], config: TwistInput) -> CartesianCommand:
    """The command of one Twist message (linear x y z, angular x y z); ValueError for non-finite values.
    Speeds beyond the IK's maxima are scaled down there (DiffIKConfig)."""
    twist = np.concatenate([np.asarray(linear, dtype=float) * config.linear_scale,
                            np.asarray(angular, dtype=float) * config.angular_scale])
    if twist.shape != (6,) or not np.isfinite(twist).all():
        raise ValueError(f"Twist must be 3 finite linear and 3 finite angular values, got {twist.tolist()}")
    return CartesianCommand(twist=twist, frame=config.frame, engaged=bool(twist.any()))


def _check_index(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} index must be an integer >= 0, got {value!r}")
