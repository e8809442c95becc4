"""UFACTORY xArm6: joint names, limits and forward kinematics.

Numbers come from xarm_description's default kinematics and the xArm SDK documentation. Every
joint rotates about its local z axis; each joint's origin is given in its parent frame as
xyz (metres) and roll-pitch-yaw (radians), as in the URDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

JOINT_NAMES = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
GRIPPER_JOINT = "drive_joint"
NUM_JOINTS = len(JOINT_NAMES)
# What a JointState of this arm carries, in order; also the policy's state and action dims.
JOINT_STATE_NAMES = (*JOINT_NAMES, GRIPPER_JOINT)

# (xyz, rpy) of each joint origin in its parent link's frame.
JOINT_ORIGINS = (
    ((0.0, 0.0, 0.267), (0.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (-math.pi / 2, 0.0, 0.0)),
    ((0.0535, -0.2845, 0.0), (0.0, 0.0, 0.0)),
    ((0.0775, 0.3425, 0.0), (-math.pi / 2, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (math.pi / 2, 0.0, 0.0)),
    ((0.076, 0.097, 0.0), (-math.pi / 2, 0.0, 0.0)),
)

# link_tcp sits this far along link6's z axis when the xArm gripper is mounted.
TCP_OFFSET_WITH_GRIPPER = 0.172

JOINT_LOWER = np.array([-0.99 * math.pi, -2.059, -3.927, -0.99 * math.pi, -1.693, -0.99 * math.pi])
JOINT_UPPER = np.array([0.99 * math.pi, 2.094, 0.192, 0.99 * math.pi, math.pi, 0.99 * math.pi])
URDF_MAX_VELOCITY = 3.14  # rad/s, every joint
MOVEIT_MAX_VELOCITY = 2.14  # rad/s, what MoveIt plans with
MOVEIT_MAX_ACCELERATION = 10.0  # rad/s^2

# Gripper: the ROS joint `drive_joint` runs 0 (open) .. 0.85 (closed); the SDK position runs
# 0 (closed) .. 850 (open). Policies see the ROS convention.
GRIPPER_OPEN = 0.0
GRIPPER_CLOSED = 0.85
SDK_GRIPPER_OPEN = 850.0

# A folded, collision-free pose the arm starts from in sim and returns to on reset.
HOME = np.array([0.0, -0.35, -0.55, 0.0, 0.9, 0.0])


def gripper_to_sdk(drive: float) -> float:
    """ROS `drive_joint` (0 open .. 0.85 closed) -> SDK gripper position (850 open .. 0 closed)."""
    drive = min(max(float(drive), GRIPPER_OPEN), GRIPPER_CLOSED)
    return SDK_GRIPPER_OPEN * (1.0 - drive / GRIPPER_CLOSED)


def sdk_to_gripper(position: float) -> float:
    """SDK gripper position (850 open .. 0 closed) -> ROS `drive_joint` (0 open .. 0.85 closed)."""
    position = min(max(float(position), 0.0), SDK_GRIPPER_OPEN)
    return GRIPPER_CLOSED * (1.0 - position / SDK_GRIPPER_OPEN)


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    # URDF convention: R = Rz(yaw) @ Ry(pitch) @ Rx(roll).
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


_ORIGIN_TRANSFORMS = []
for _xyz, _rpy in JOINT_ORIGINS:
    _t = np.eye(4)
    _t[:3, :3] = _rpy_matrix(*_rpy)
    _t[:3, 3] = _xyz
    _ORIGIN_TRANSFORMS.append(_t)


@dataclass(frozen=True)
class LinkPoses:
    """World (link_base) poses of link1..link6 as 4x4 homogeneous matrices, plus the TCP."""

    links: tuple[np.ndarray, ...]
    tcp: np.ndarray


def forward_kinematics(q: np.ndarray, tcp_offset: float = TCP_OFFSET_WITH_GRIPPER) -> LinkPoses:
    """Poses of link1..link6 and link_tcp in `link_base` for joint angles q (6,), radians."""
    q = np.asarray(q, dtype=float)
    if q.shape != (NUM_JOINTS,):
        raise ValueError(f"expected {NUM_JOINTS} joint angles, got shape {q.shape}")
    pose = np.eye(4)
    links = []
    for origin, angle in zip(_ORIGIN_TRANSFORMS, q):
        c, s = math.cos(angle), math.sin(angle)
        rot_z = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        pose = pose @ origin @ rot_z
        links.append(pose)
    tcp = pose.copy()
    tcp[:3, 3] = pose[:3, 3] + pose[:3, 2] * tcp_offset
    return LinkPoses(links=tuple(links), tcp=tcp)


def tcp_positions(joint_path: np.ndarray, tcp_offset: float = TCP_OFFSET_WITH_GRIPPER) -> np.ndarray:
    """TCP positions (N, 3) in `link_base` along a joint path (N, 6): the predicted EE path."""
    return np.stack([forward_kinematics(q, tcp_offset).tcp[:3, 3] for q in np.asarray(joint_path)])
