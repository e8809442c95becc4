"""A leader arm's joint positions -> follower (xArm6) joint targets. ROS-free.

A leader is read one of two ways, and both give a `LeaderReading` (six joint angles in the
follower's convention + the gripper's drive_joint):

- a GELLO-style leader on Dynamixel servos: `teleop/dynamixel.py` reads the raw positions and
  `LeaderConfig` (a YAML file written by `evo1-ros leader-calibrate`) maps them;
- any `sensor_msgs/JointState` topic (GELLO's ROS 2 publisher, a second arm): `JointStateMapping`
  picks the joints by name.

`LeaderFollower` then turns readings into the joint targets the teleop source sends the driver:
each joint moves at most `max_step` per control step (GELLO's xArm driver clamps 0.05 rad at 50 Hz),
and at the start, until the follower has caught up with the leader, at most `start_step`.

    config = LeaderConfig.load("leader.yaml")
    follower = LeaderFollower(measured_joints, measured_gripper)
    with DynamixelLeader(config.port, config.baudrate, config.servo_ids) as bus:
        every control period:
            joints, gripper = follower.step(config.reading(bus.read_positions()))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evo1_ros.robot.xarm6 import (
    GRIPPER_CLOSED,
    GRIPPER_JOINT,
    GRIPPER_OPEN,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_UPPER,
    NUM_JOINTS,
)
from evo1_ros.teleop.device import check_keys, read_yaml

TICKS_PER_TURN = 4096  # Dynamixel X series: Present Position counts per revolution
RADIANS_PER_TICK = 2.0 * math.pi / TICKS_PER_TURN
MAX_SERVO_ID = 252  # Protocol 2.0: 253 and 254 (broadcast) are reserved
# Every xArm6 joint's range is narrower than a turn, so a leader angle is read within half a turn
# of its range's middle: one reading per pose, whatever turn count a servo reports.
RANGE_MIDDLE = 0.5 * (JOINT_LOWER + JOINT_UPPER)


def gripper_drive(value: float, open_value: float, closed_value: float) -> float:
    """drive_joint for a leader gripper at `value` on its scale from `open_value` to `closed_value`
    (clipped to that stroke)."""
    closed = (value - open_value) / (closed_value - open_value)
    return GRIPPER_OPEN + float(np.clip(closed, 0.0, 1.0)) * (GRIPPER_CLOSED - GRIPPER_OPEN)


@dataclass(frozen=True)
class LeaderReading:
    joints: np.ndarray  # (6,) rad, the follower's joint convention
    gripper: float | None  # drive_joint 0 (open) .. 0.85 (closed); None: the leader has no gripper


@dataclass(frozen=True)
class LeaderConfig:
    """A Dynamixel leader: the bus, and how each servo's raw position maps to a follower joint:
    joint = sign * (raw * 2 pi / 4096 - offset). The gripper servo's raw position runs from
    `gripper_open` to `gripper_closed` (either order)."""

    port: str  # e.g. /dev/serial/by-id/usb-FTDI_..., stable across replugging
    baudrate: int = 57600
    joint_ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    joint_signs: tuple[int, ...] = (1, 1, 1, 1, 1, 1)
    joint_offsets: tuple[float, ...] = (0.0,) * NUM_JOINTS  # rad
    gripper_id: int | None = 7
    gripper_open: int | None = None  # raw Present Position with the leader's gripper open
    gripper_closed: int | None = None  # ... and squeezed shut

    def __post_init__(self):
        if not isinstance(self.port, str) or not self.port:
            raise ValueError(f"leader: port must name a serial device, got {self.port!r}")
        if not _is_int(self.baudrate) or self.baudrate <= 0:
            raise ValueError(f"leader: baudrate must be a positive integer, got {self.baudrate!r}")
        for name in ("joint_ids", "joint_signs", "joint_offsets"):
            if len(getattr(self, name)) != NUM_JOINTS:
                raise ValueError(f"leader: {name} needs {NUM_JOINTS} values, got {list(getattr(self, name))}")
        ids = self.servo_ids
        if not all(_is_int(i) and 0 <= i <= MAX_SERVO_ID for i in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"leader: servo ids must be distinct integers in 0..{MAX_SERVO_ID}, got {list(ids)}")
        if any(sign not in (1, -1) for sign in self.joint_signs):
            raise ValueError(f"leader: joint_signs must be 1 or -1, got {list(self.joint_signs)}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.joint_offsets):
            raise ValueError(f"leader: joint_offsets must be finite numbers (rad), got {list(self.joint_offsets)}")
        if self.gripper_id is not None:
            if not (_is_int(self.gripper_open) and _is_int(self.gripper_closed)):
                raise ValueError("leader: gripper_open and gripper_closed (raw positions) are needed with a "
                                 "gripper_id; `evo1-ros leader-calibrate` records them")
            if self.gripper_open == self.gripper_closed:
                raise ValueError(f"leader: gripper_open and gripper_closed are both {self.gripper_open}; "
                                 "was the gripper squeezed during calibration?")

    @property
    def servo_ids(self) -> tuple[int, ...]:
        """The ids read each period: the joints in order, then the gripper."""
        return tuple(self.joint_ids) + ((self.gripper_id,) if self.gripper_id is not None else ())

    def reading(self, raw: Sequence[int]) -> LeaderReading:
        """Map raw Present Positions (in `servo_ids` order) to a reading."""
        raw = np.asarray(raw, dtype=float)
        if raw.shape != (len(self.servo_ids),):
            raise ValueError(f"leader: expected {len(self.servo_ids)} raw positions, got shape {raw.shape}")
        angles = np.asarray(self.joint_signs) * (raw[:NUM_JOINTS] * RADIANS_PER_TICK - np.asarray(self.joint_offsets))
        joints = RANGE_MIDDLE + (angles - RANGE_MIDDLE + math.pi) % (2.0 * math.pi) - math.pi
        gripper = None
        if self.gripper_id is not None:
            gripper = gripper_drive(raw[NUM_JOINTS], self.gripper_open, self.gripper_closed)
        return LeaderReading(joints=joints, gripper=gripper)

    def to_dict(self) -> dict:
        return {"port": self.port, "baudrate": self.baudrate, "joint_ids": list(self.joint_ids),
                "joint_signs": list(self.joint_signs), "joint_offsets": [float(v) for v in self.joint_offsets],
                "gripper_id": self.gripper_id, "gripper_open": self.gripper_open,
                "gripper_closed": self.gripper_closed}

    @classmethod
    def from_dict(cls, data: dict) -> LeaderConfig:
        check_keys(data, cls.__dataclass_fields__, "leader")
        if "port" not in data:
            raise ValueError("leader: `port` is required")
        lists = {k: tuple(data[k]) for k in ("joint_ids", "joint_signs", "joint_offsets")
                 if isinstance(data.get(k), (list, tuple))}
        return cls(**{**data, **lists})

    @classmethod
    def load(cls, path) -> LeaderConfig:
        try:
            return cls.from_dict(read_yaml(path, "leader"))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error

    def save(self, path) -> None:
        import yaml

        with open(path, "w") as stream:
            stream.write("# Dynamixel leader arm for evo1_ros (evo1_ros/teleop/leader.py), "
                         "written by `evo1-ros leader-calibrate`.\n"
                         "# joint = sign * (raw * 2 pi / 4096 - offset); gripper raw runs open -> closed.\n")
            yaml.safe_dump(self.to_dict(), stream, sort_keys=False)


def calibration_offsets(raw_joints: Sequence[int], signs: Sequence[int], pose: Sequence[float]) -> tuple[float, ...]:
    """The joint_offsets that make the six raw joint positions `raw_joints` read as the follower
    joint angles `pose` (rad) with these signs."""
    raw_joints, pose = np.asarray(raw_joints, dtype=float), np.asarray(pose, dtype=float)
    if raw_joints.shape != (NUM_JOINTS,) or pose.shape != (NUM_JOINTS,) or len(signs) != NUM_JOINTS:
        raise ValueError(f"leader: calibration needs {NUM_JOINTS} raw positions, signs and pose angles")
    if not np.isfinite(pose).all() or (pose < JOINT_LOWER).any() or (pose > JOINT_UPPER).any():
        raise ValueError(f"leader: calibration pose {pose.tolist()} is outside the xArm6's joint limits")
    return tuple((raw_joints * RADIANS_PER_TICK - np.asarray(signs) * pose).tolist())


@dataclass(frozen=True)
class JointStateMapping:
    """A leader published as a JointState: which names are the follower's joints, in order, and
    the gripper joint's positions when open and closed (in the publisher's units)."""

    joint_names: tuple[str, ...] = JOINT_NAMES
    gripper_name: str | None = GRIPPER_JOINT
    gripper_open: float = GRIPPER_OPEN
    gripper_closed: float = GRIPPER_CLOSED

    def __post_init__(self):
        if len(self.joint_names) != NUM_JOINTS or len(set(self.joint_names)) != NUM_JOINTS:
            raise ValueError(f"leader: joint_names needs {NUM_JOINTS} distinct names, got {list(self.joint_names)}")
        if not (math.isfinite(self.gripper_open) and math.isfinite(self.gripper_closed)) \
                or self.gripper_open == self.gripper_closed:
            raise ValueError("leader: gripper_open and gripper_closed must be finite and differ")

    def reading(self, names: Sequence[str], positions: Sequence[float]) -> LeaderReading:
        """The reading of one JointState (its `name` and `position`); ValueError in words if the
        message lacks a joint or has a non-finite position."""
        if len(names) != len(positions):
            raise ValueError(f"leader JointState has {len(names)} names but {len(positions)} positions")
        index = {name: i for i, name in enumerate(names)}
        wanted = list(self.joint_names) + ([self.gripper_name] if self.gripper_name else [])
        missing = [name for name in wanted if name not in index]
        if missing:
            raise ValueError(f"leader JointState lacks {missing} (it has {list(names)})")
        values = np.array([positions[index[name]] for name in wanted], dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"leader JointState positions must be finite, got {dict(zip(wanted, values.tolist()))}")
        gripper = None
        if self.gripper_name:
            gripper = gripper_drive(values[NUM_JOINTS], self.gripper_open, self.gripper_closed)
        return LeaderReading(joints=values[:NUM_JOINTS], gripper=gripper)


@dataclass(frozen=True)
class FollowLimits:
    max_step: float = 0.05  # rad per control step, every joint (GELLO's xArm driver: 0.05 at 50 Hz)
    start_step: float = 0.005  # rad per step until the follower has caught up (0.25 rad/s at 50 Hz)
    caught_up: float = 0.05  # rad: the slow start ends once every joint is this close to the leader
    max_leader_jump: float = 0.5  # rad in one step: faster than a hand, so a glitch: slow down again
    gripper_max_step: float = 0.05  # drive units per step: a full stroke in 0.34 s at 50 Hz
    joint_limit_margin: float = 0.05  # rad: leader angles are clipped this far inside the limits (the driver's)

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0) and not (name == "joint_limit_margin" and value == 0):
                raise ValueError(f"follow limits: {name} must be > 0, got {value}")
        if self.start_step > self.max_step:
            raise ValueError("follow limits: start_step must not exceed max_step")


class LeaderFollower:
    """Follower targets that chase the leader, bounded per control step (see the module docstring).
    Start it, and `restart` it (e.g. after a device error or between episodes), from the follower's
    measured joints and gripper so the first targets are where the arm is."""

    def __init__(self, joints: np.ndarray, gripper: float, limits: FollowLimits = FollowLimits()):
        self.limits = limits
        self.restart(joints, gripper)

    def restart(self, joints: np.ndarray, gripper: float) -> None:
        joints = np.asarray(joints, dtype=float)
        if joints.shape != (NUM_JOINTS,) or not np.isfinite(joints).all() or not math.isfinite(gripper):
            raise ValueError(f"follower state must be {NUM_JOINTS} finite joints and a finite gripper")
        self.joints, self.gripper = joints.copy(), float(gripper)
        self.catching_up = True
        self._leader: np.ndarray | None = None

    def step(self, reading: LeaderReading) -> tuple[np.ndarray, float]:
        """Next (joint targets (6,), gripper drive) toward the leader's reading."""
        lim = self.limits
        leader = np.asarray(reading.joints, dtype=float)
        if leader.shape != (NUM_JOINTS,) or not np.isfinite(leader).all():
            raise ValueError(f"leader reading must be {NUM_JOINTS} finite joint angles, got {leader.tolist()}")
        leader = np.clip(leader, JOINT_LOWER + lim.joint_limit_margin, JOINT_UPPER - lim.joint_limit_margin)
        if self._leader is not None and np.abs(leader - self._leader).max() > lim.max_leader_jump:
            self.catching_up = True
        self._leader = leader
        step = lim.start_step if self.catching_up else lim.max_step
        self.joints = self.joints + np.clip(leader - self.joints, -step, step)
        if self.catching_up and np.abs(leader - self.joints).max() <= lim.caught_up:
            self.catching_up = False
        if reading.gripper is not None:
            if not math.isfinite(reading.gripper):
                raise ValueError(f"leader gripper reading must be finite, got {reading.gripper}")
            target = min(max(reading.gripper, GRIPPER_OPEN), GRIPPER_CLOSED)
            self.gripper += min(max(target - self.gripper, -lim.gripper_max_step), lim.gripper_max_step)
        return self.joints.copy(), self.gripper


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
