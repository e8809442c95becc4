"""3Dconnexion SpaceMouse -> `CartesianCommand`, read with pyspacemouse (hidapi underneath). ROS-free.

Needs the system's hidapi library (`apt-get install libhidapi-hidraw0`) and read access to the
device's /dev/hidraw node (a udev rule for vendor 256f / 046d). Puck axes come in the ROS
convention (x forward, y left, z up, rotations about them), as deflections in [-1, 1]: push
the puck away from you and the TCP moves along +x of `frame`.

    with SpaceMouseReader(SpaceMouseConfig(frame="base")) as mouse:
        every control period:
            command = mouse.read()  # DeviceError once the device is unplugged or fails

The puck springs back to centre, so it needs no deadman: by default deflecting it is driving.
With `deadman_button` set, the arm moves only while that button is held. By default the left
button (index 0) closes the gripper and the right one (1) opens it, as on a two-button SpaceMouse
Compact or Wireless; the config picks other button indices for larger models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evo1_ros.teleop.device import (
    TWIST_AXES,
    CartesianCommand,
    DeviceError,
    apply_deadband,
    check_deadband,
    check_keys,
    compose_command,
    read_yaml,
)

# Reports a poll drains at most: the device sends ~60-120 per second, the caller polls at >= 20 Hz.
MAX_REPORTS_PER_READ = 64


@dataclass(frozen=True)
class SpaceMouseConfig:
    device: str | None = None  # pyspacemouse's device name, e.g. "SpaceMouseCompact"; None: the first found
    frame: str = "base"  # axes the puck drives: base (link_base) or tool (link_tcp)
    device_yaw: float = 0.0  # rad: how far the puck's forward is turned from link_base +x, about z
    linear_speed: float = 0.15  # m/s at full deflection
    angular_speed: float = 0.6  # rad/s at full deflection
    deadband: float = 0.1  # deflection read as zero (the puck rarely rests at exactly 0)
    gripper_close_button: int | None = 0
    gripper_open_button: int | None = 1
    deadman_button: int | None = None  # None: deflecting the puck (or a gripper button) is driving

    def __post_init__(self):
        check_deadband(self.deadband, "SpaceMouse")
        for name in ("linear_speed", "angular_speed"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"SpaceMouse: {name} must be > 0, got {getattr(self, name)}")
        if not np.isfinite(self.device_yaw):
            raise ValueError(f"SpaceMouse: device_yaw must be finite, got {self.device_yaw}")
        CartesianCommand(np.zeros(6), self.frame, False)  # refuses an unknown frame

    @classmethod
    def load(cls, path) -> "SpaceMouseConfig":
        """The settings in a YAML file (any of the fields above; the rest keep their defaults)."""
        try:
            data = read_yaml(path, "SpaceMouse")
            check_keys(data, cls.__dataclass_fields__, "SpaceMouse")
            return cls(**data)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error


class SpaceMouseReader:
    """An open SpaceMouse; `read()` drains its pending HID reports and maps the latest state."""

    def __init__(self, config: SpaceMouseConfig = SpaceMouseConfig()):
        self.config = config
        self._device = None
        self._name = config.device or "SpaceMouse"

    def __enter__(self) -> "SpaceMouseReader":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._device is not None

    def open(self) -> None:
        import pyspacemouse

        try:
            self._device = pyspacemouse.open(device=self.config.device, nonblocking=True,
                                             axis_convention=pyspacemouse.AxisConvention.ROS)
        except Exception as error:  # no device, no hidapi library, no permission: all "cannot open"
            raise DeviceError(f"{self._name}: cannot open ({error}); is it plugged in, is libhidapi-hidraw0 "
                              "installed and is its /dev/hidraw node readable?") from error
        self._name = self._device.name
        buttons = len(self._device.info.button_specs)
        cfg = self.config
        for role in ("gripper_close_button", "gripper_open_button", "deadman_button"):
            index = getattr(cfg, role)
            if index is not None and not 0 <= index < buttons:
                self.close()
                raise DeviceError(f"{self._name} has {buttons} buttons; {role} {index} does not exist")

    def close(self) -> None:
        if self._device is not None:
            device, self._device = self._device, None
            try:
                device.close()
            except Exception:  # an unplugged device may fail to close; it is gone either way
                pass

    def read(self) -> CartesianCommand:
        """The command from the newest device state; DeviceError (and the device closed) on a read
        failure, e.g. unplugged."""
        if self._device is None:
            raise DeviceError(f"{self._name} is not open")
        try:
            state = self._device.read()
            for _ in range(MAX_REPORTS_PER_READ):  # a report updates the state's clock; stop when none came
                stamp = state.t
                state = self._device.read()
                if state.t == stamp:
                    break
        except Exception as error:  # easyhid's HIDException when the device goes away
            self.close()
            raise DeviceError(f"{self._name}: read failed ({error}); unplugged?") from error
        return self.command(np.array([getattr(state, axis) for axis in TWIST_AXES]), list(state.buttons))

    def command(self, deflection: np.ndarray, buttons: list[int]) -> CartesianCommand:
        """Map puck deflections (6,) in the ROS convention and button states to a command."""
        cfg = self.config
        shaped = apply_deadband(deflection, cfg.deadband)
        if cfg.frame == "base" and cfg.device_yaw:
            c, s = np.cos(cfg.device_yaw), np.sin(cfg.device_yaw)
            turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            shaped = np.concatenate([turn @ shaped[:3], turn @ shaped[3:]])

        def held(index):
            return index is not None and bool(buttons[index])

        deadman = held(cfg.deadman_button) if cfg.deadman_button is not None else None
        return compose_command(shaped, cfg.linear_speed, cfg.angular_speed, cfg.frame, deadman,
                               held(cfg.gripper_close_button), held(cfg.gripper_open_button))
