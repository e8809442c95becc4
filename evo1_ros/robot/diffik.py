"""Differential inverse kinematics for the xArm6: a TCP twist in, joint targets one control period
ahead out. ROS-free; built on `robot/xarm6.py`'s forward kinematics.

A Cartesian teleop source (SpaceMouse, gamepad, a Twist topic) calls it once per control period,
from the last joint target it sent (at the start, the measured joint angles):

    ik = DifferentialIK(DiffIKConfig(period=0.02))
    q = measured_joints
    every 20 ms:
        q = ik.step(q, twist, frame="tool")  # twist: vx vy vz (m/s), wx wy wz (rad/s) of link_tcp
        send q + gripper to the driver, whose safety filter still bounds what reaches the arm

`frame="base"` expresses the twist in link_base axes, `"tool"` in link_tcp's own axes; either way
the linear part is the velocity of the TCP point and rotations turn about the TCP.

Method. Each step integrates the twist into a goal pose, then asks for the joint velocity that
reaches the goal in one period by damped least squares on the geometric Jacobian. Steering to an
integrated goal (instead of integrating joint velocities open loop) keeps the orientation from
drifting while the TCP translates. The damping is zero away from singularities (exact tracking)
and grows as the smallest singular value falls below `singular_value_threshold`, so the arm slows
down there instead of flailing; a step that would take it below `min_singular_value` (e.g. the
arm stretched straight, from where it could hardly be pulled back) is not taken. A joint that
would cross its limit (kept `joint_limit_margin` inside, as the driver's safety filter does) is
stopped at it and the others re-solved, so the TCP still moves as far along the command as the
free joints allow. Finally the whole joint velocity is scaled down uniformly to
`max_joint_velocity`, which keeps the TCP on the commanded direction. When the arm cannot follow
(a limit, a singularity, the speed bound), the goal is re-anchored to where the arm got, so
nothing winds up and releasing the device stops the arm at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evo1_ros.robot.xarm6 import (
    JOINT_LOWER,
    JOINT_UPPER,
    MOVEIT_MAX_VELOCITY,
    NUM_JOINTS,
    TCP_OFFSET_WITH_GRIPPER,
    URDF_MAX_VELOCITY,
    forward_kinematics,
)

FRAMES = ("base", "tool")


def jacobian(q: np.ndarray, tcp_offset: float = TCP_OFFSET_WITH_GRIPPER) -> tuple[np.ndarray, np.ndarray]:
    """(6, 6) geometric Jacobian of link_tcp (rows: linear, then angular velocity, in link_base)
    and the TCP's 4x4 pose. Each joint turns about its own z axis: v = z x (p_tcp - p_joint), w = z."""
    poses = forward_kinematics(q, tcp_offset)
    tcp = poses.tcp[:3, 3]
    axes = np.array([link[:3, 2] for link in poses.links])
    origins = np.array([link[:3, 3] for link in poses.links])
    return np.vstack([np.cross(axes, tcp - origins).T, axes.T]), poses.tcp


def pose_error(pose: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """(6,) error from the 4x4 `pose` to the 4x4 `goal` in link_base: position difference, then
    orientation as a rotation vector in its small-angle form (sin(angle) * axis)."""
    return np.concatenate([goal[:3, 3] - pose[:3, 3], 0.5 * np.cross(pose[:3, :3], goal[:3, :3], axis=0).sum(axis=1)])


def rotation_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector `rotvec` (Rodrigues)."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = np.asarray(rotvec, dtype=float) / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Rotation vector of the rotation matrix `rotation` (angles below pi)."""
    cos_angle = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    axis_sin = 0.5 * np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0],
                               rotation[1, 0] - rotation[0, 1]])
    if angle < 1e-6:
        return axis_sin  # sin(angle) ~ angle
    return axis_sin * angle / np.sin(angle)


@dataclass(frozen=True)
class DiffIKConfig:
    period: float = 0.02  # s, one control period: each step moves the TCP by twist * period
    max_joint_velocity: float = MOVEIT_MAX_VELOCITY  # rad/s, every joint
    joint_limit_margin: float = 0.05  # rad kept clear of every joint limit: pass the driver's value
    max_linear_speed: float = 0.25  # m/s; a faster command is scaled down to it
    max_angular_speed: float = 1.0  # rad/s; likewise
    damping: float = 0.04  # damping factor reached at a singularity (smallest singular value 0)
    singular_value_threshold: float = 0.04  # damping starts below this smallest singular value
    min_singular_value: float = 0.02  # a step that would bring it below this (and lower) is not taken
    max_lag: float = 1e-3  # m (and rad): a goal the step misses by more is re-anchored
    tcp_offset: float = TCP_OFFSET_WITH_GRIPPER  # m along link6's z

    def __post_init__(self):
        values = [getattr(self, name) for name in self.__dataclass_fields__]
        if not np.isfinite(values).all():
            raise ValueError(f"DiffIKConfig values must be finite, got {self}")
        widest_margin = 0.5 * float(np.min(JOINT_UPPER - JOINT_LOWER))
        checks = [
            (self.period > 0.0, "period must be > 0 s"),
            (0.0 < self.max_joint_velocity <= URDF_MAX_VELOCITY,
             f"max_joint_velocity must be in (0, {URDF_MAX_VELOCITY}] rad/s"),
            (0.0 <= self.joint_limit_margin < widest_margin,
             f"joint_limit_margin must be in [0, {widest_margin:.3f}) rad"),
            (self.max_linear_speed > 0.0, "max_linear_speed must be > 0 m/s"),
            (self.max_angular_speed > 0.0, "max_angular_speed must be > 0 rad/s"),
            (self.damping > 0.0, "damping must be > 0"),
            (self.singular_value_threshold > 0.0, "singular_value_threshold must be > 0"),
            (0.0 <= self.min_singular_value < self.singular_value_threshold,
             "min_singular_value must be in [0, singular_value_threshold)"),
            (self.max_lag > 0.0, "max_lag must be > 0"),
            (self.tcp_offset >= 0.0, "tcp_offset must be >= 0 m"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def lower(self) -> np.ndarray:
        return JOINT_LOWER + self.joint_limit_margin

    @property
    def upper(self) -> np.ndarray:
        return JOINT_UPPER - self.joint_limit_margin


def damped_least_squares(jac: np.ndarray, twist: np.ndarray, damping: float, threshold: float) -> np.ndarray:
    """Joint velocities whose TCP twist is closest to `twist`, damped near singularities: no damping
    while the smallest singular value is above `threshold`, rising to `damping` as it reaches 0
    (Nakamura and Hanafusa's variable damping), so the gain 1/sigma stays bounded."""
    u, sigma, vt = np.linalg.svd(jac, full_matrices=False)
    ratio = sigma[-1] / threshold if len(sigma) else 1.0
    damping_sq = 0.0 if ratio >= 1.0 else (1.0 - ratio**2) * damping**2
    return vt.T @ (sigma / (sigma**2 + damping_sq) * (u.T @ twist))


class DifferentialIK:
    """Turns TCP twists into joint targets, one control period at a time (see the module docstring).

    It keeps the goal pose between steps while it is fed its own previous result; any other `q`
    (the arm was moved by something else, the source restarted) starts from that pose afresh."""

    def __init__(self, config: DiffIKConfig = DiffIKConfig()):
        self.config = config
        self._goal: np.ndarray | None = None
        self._last_target: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the goal: the next step starts from the pose of the q it is given."""
        self._goal = self._last_target = None

    def step(self, q: np.ndarray, twist: np.ndarray, frame: str = "base") -> np.ndarray:
        """Joint targets (6,) one period after joint angles `q` (6,) for the TCP twist `twist`
        (6,: linear m/s, angular rad/s) expressed in `frame` ("base" or "tool"). Raises ValueError
        for a wrong shape, a non-finite value or an unknown frame."""
        cfg = self.config
        q = _finite_vector(q, NUM_JOINTS, "joint angles")
        twist = _finite_vector(twist, 6, "twist")
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        jac, pose = jacobian(q, cfg.tcp_offset)
        if self._goal is None or self._last_target is None or not np.array_equal(q, self._last_target):
            self._goal = pose
        linear, angular = self._speed_limited(twist)
        if frame == "tool":
            linear, angular = self._goal[:3, :3] @ linear, self._goal[:3, :3] @ angular
        goal = np.eye(4)
        goal[:3, 3] = self._goal[:3, 3] + linear * cfg.period
        goal[:3, :3] = rotation_matrix(angular * cfg.period) @ self._goal[:3, :3]
        dq = self._joint_velocity(jac, pose_error(pose, goal) / cfg.period, q)
        # The clip only absorbs float rounding (dq already keeps every joint inside): no target
        # ever lands outside the margined limits, and a joint already outside never moves further out.
        target = np.clip(q + dq * cfg.period, np.minimum(cfg.lower, q), np.maximum(cfg.upper, q))
        reach_jac, reached = jacobian(target, cfg.tcp_offset)
        closer = _smallest_singular_value(reach_jac)
        if closer < cfg.min_singular_value and closer < _smallest_singular_value(jac):
            target, reached = q, pose  # halt short of the singularity; moving away stays possible
        missed = np.abs(pose_error(reached, goal)).max() > cfg.max_lag
        self._goal = reached if missed else goal
        self._last_target = target
        return target.copy()

    def _speed_limited(self, twist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        linear, angular = twist[:3], twist[3:]
        linear = linear * min(1.0, self.config.max_linear_speed / max(np.linalg.norm(linear), 1e-12))
        angular = angular * min(1.0, self.config.max_angular_speed / max(np.linalg.norm(angular), 1e-12))
        return linear, angular

    def _joint_velocity(self, jac: np.ndarray, twist: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Joint velocity for the base-frame `twist` that keeps every joint inside its margined
        limits over one period (a joint already outside may only move back in) and under the
        velocity bound."""
        cfg = self.config
        low = (np.minimum(cfg.lower, q) - q) / cfg.period
        high = (np.maximum(cfg.upper, q) - q) / cfg.period
        dq = np.zeros(NUM_JOINTS)
        free = np.ones(NUM_JOINTS, dtype=bool)
        while free.any():
            rest = twist - jac[:, ~free] @ dq[~free]
            dq[free] = damped_least_squares(jac[:, free], rest, cfg.damping, cfg.singular_value_threshold)
            over = free & ((dq < low) | (dq > high))
            if not over.any():
                break
            dq[over] = np.clip(dq[over], low[over], high[over])  # stop at the limit, re-solve the rest
            free &= ~over
        # Uniform scaling keeps dq inside [low, high], an interval around 0.
        return dq * min(1.0, cfg.max_joint_velocity / max(np.abs(dq).max(), 1e-12))


def _smallest_singular_value(jac: np.ndarray) -> float:
    return float(np.linalg.svd(jac, compute_uv=False)[-1])


def _finite_vector(values, size: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.shape != (size,):
        raise ValueError(f"{what}: expected {size} values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite, got {array.tolist()}")
    return array
