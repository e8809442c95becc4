"""Jogging the xArm6: joint steps and Cartesian TCP steps on `robot/xarm6.py`'s FK. ROS-free.

A Cartesian jog is a small pose change of link_tcp in link_base (translation in metres, rotation
as a rotation vector in radians), solved by damped least squares on the geometric Jacobian from
the current joint target. Damping keeps steps bounded near singularities, where the TCP simply
moves less than asked instead of the joints flailing. Every result stays `margin` inside the joint
limits, the same margin the driver's safety filter keeps (it would clip the target anyway, and a
target the filter clips makes the next Cartesian step start from a pose the arm never reaches).
"""

from __future__ import annotations

import numpy as np

from evo1_ros.robot.xarm6 import JOINT_LOWER, JOINT_UPPER, forward_kinematics

DEFAULT_MARGIN = 0.05  # rad; the driver's default joint_limit_margin
DAMPING = 1e-4  # lambda^2 of the damped least squares


def clamp(q: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    return np.clip(q, JOINT_LOWER + margin, JOINT_UPPER - margin)


def jacobian(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(6, 6) geometric Jacobian of link_tcp (rows: linear, angular velocity in link_base) and the
    TCP's 4x4 pose. Each joint turns about its own z axis: v = z x (p_tcp - p_joint), w = z."""
    poses = forward_kinematics(q)
    tcp = poses.tcp[:3, 3]
    axes = np.array([link[:3, 2] for link in poses.links])
    origins = np.array([link[:3, 3] for link in poses.links])
    return np.vstack([np.cross(axes, tcp - origins).T, axes.T]), poses.tcp


def joint_jog(q: np.ndarray, joint: int, step: float, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    q = np.array(q, dtype=float)
    q[joint] += step
    return clamp(q, margin)


def cartesian_jog(q: np.ndarray, translation, rotation=(0.0, 0.0, 0.0), margin: float = DEFAULT_MARGIN,
                  iters: int = 5) -> np.ndarray:
    """Joint angles that move link_tcp by `translation` (m) and turn it by the rotation vector
    `rotation` (rad), both in link_base, from joint angles q. A few Newton iterations make a jog
    land where asked (one linearised step drifts by the step's square)."""
    q = np.array(q, dtype=float)
    _, start = jacobian(q)
    goal_p = start[:3, 3] + np.asarray(translation, dtype=float)
    goal_r = _rotvec_matrix(np.asarray(rotation, dtype=float)) @ start[:3, :3]
    for _ in range(iters):
        jac, pose = jacobian(q)
        # orientation error as a rotation vector (small-angle form: jog steps are small)
        error = np.concatenate([goal_p - pose[:3, 3], 0.5 * np.cross(pose[:3, :3], goal_r, axis=0).sum(axis=1)])
        q = clamp(q + jac.T @ np.linalg.solve(jac @ jac.T + DAMPING * np.eye(6), error), margin)
    return q


def _rotvec_matrix(w: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix of the rotation vector w."""
    angle = np.linalg.norm(w)
    if angle < 1e-12:
        return np.eye(3)
    k = w / angle
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * K @ K
