"""A URDF for the xArm6 written from `robot/xarm6.py`, for robot_state_publisher and rviz.

Users with xarm_description (xacro) can use theirs; this one needs nothing but this package. The
kinematics, limits and frame names match xarm_description's defaults; the geometry is plain
cylinders (one per link from its joint to the next) and boxes for the gripper.
"""

from __future__ import annotations

import math

import numpy as np

from evo1_ros.robot.xarm6 import (
    GRIPPER_CLOSED,
    GRIPPER_JOINT,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_ORIGINS,
    JOINT_UPPER,
    TCP_OFFSET_WITH_GRIPPER,
    URDF_MAX_VELOCITY,
)

LINK_RADIUS = 0.045
GRIPPER_BODY = (0.06, 0.12, 0.08)  # box size along link_eef's x, y, z
FINGER = (0.02, 0.015, 0.06)


def _origin(xyz, rpy=(0.0, 0.0, 0.0)) -> str:
    return (f'<origin xyz="{" ".join(f"{v:.9g}" for v in xyz)}" '
            f'rpy="{" ".join(f"{v:.9g}" for v in rpy)}"/>')


def _link(name: str, shapes=(), color: str = "0.85 0.85 0.85 1") -> str:
    """shapes: (geometry xml, origin xml) pairs, drawn in `color`."""
    visuals = "".join(f'<visual>{origin}<geometry>{geometry}</geometry>'
                      f'<material name="{name}_color"><color rgba="{color}"/></material></visual>'
                      for geometry, origin in shapes)
    return f'<link name="{name}">{visuals}</link>'


def _joint(name: str, kind: str, parent: str, child: str, origin: str, limit: str = "", axis: str = "0 0 1",
           mimic: str = "") -> str:
    axis = f'<axis xyz="{axis}"/>' if kind != "fixed" else ""
    mimic = f'<mimic joint="{mimic}" multiplier="1" offset="0"/>' if mimic else ""
    return (f'<joint name="{name}" type="{kind}"><parent link="{parent}"/><child link="{child}"/>'
            f'{origin}{axis}{limit}{mimic}</joint>')


def _bone(to) -> tuple[str, str]:
    """A cylinder from this link's origin to `to` (the next joint's origin), as (geometry, origin)."""
    to = np.asarray(to, dtype=float)
    length = float(np.linalg.norm(to))
    # URDF cylinders run along their z: tilt z onto the segment (pitch), then turn it (yaw).
    pitch = math.atan2(math.hypot(to[0], to[1]), to[2])
    yaw = math.atan2(to[1], to[0])
    return f'<cylinder radius="{LINK_RADIUS * 0.8:.4g}" length="{length:.9g}"/>', _origin(to / 2, (0.0, pitch, yaw))


def xarm6_urdf(prefix: str = "", color: str = "0.85 0.85 0.85 1") -> str:
    """The xArm6 + gripper as a URDF string.

    prefix: put in front of every link name (joint names stay, so the same JointState drives it);
    a prefixed robot hangs off an unprefixed `link_base` by a fixed joint, which lets a second
    robot_state_publisher show a "ghost" arm in the same TF tree without a static transform.
    """
    links = ["link_base"] + [f"link{i + 1}" for i in range(len(JOINT_NAMES))]
    # The joint housing of every link, plus a bone to the next joint (link6's bone is the flange).
    housing = (f'<cylinder radius="{LINK_RADIUS}" length="{2 * LINK_RADIUS}"/>', _origin((0, 0, 0)))
    next_origin = [xyz for xyz, _ in JOINT_ORIGINS[1:]] + [(0.0, 0.0, 0.02)]
    parts = [_link(prefix + "link_base", [(f'<cylinder radius="0.06" length="{JOINT_ORIGINS[0][0][2]:.9g}"/>',
                                          _origin((0, 0, JOINT_ORIGINS[0][0][2] / 2)))], color)]
    for i, (joint, (xyz, rpy)) in enumerate(zip(JOINT_NAMES, JOINT_ORIGINS)):
        bone = [_bone(next_origin[i])] if np.linalg.norm(next_origin[i]) > 0 else []
        parts.append(_link(prefix + links[i + 1], [housing] + bone, color))
        limit = (f'<limit lower="{JOINT_LOWER[i]:.9g}" upper="{JOINT_UPPER[i]:.9g}" effort="50" '
                 f'velocity="{URDF_MAX_VELOCITY}"/>')
        parts.append(_joint(joint, "revolute", prefix + links[i], prefix + links[i + 1], _origin(xyz, rpy), limit))

    # Gripper: link_eef is link6's frame; the fingers swing closed as drive_joint goes 0 -> 0.85.
    body_z = GRIPPER_BODY[2] / 2
    finger_y = GRIPPER_BODY[1] / 2 - FINGER[1]
    finger_shape = (f'<box size="{" ".join(map(str, FINGER))}"/>', _origin((0, 0, FINGER[2] / 2)))
    gripper_limit = f'<limit lower="0" upper="{GRIPPER_CLOSED}" effort="10" velocity="2"/>'
    parts += [
        _link(prefix + "link_eef"),
        _joint("joint_eef", "fixed", prefix + "link6", prefix + "link_eef", _origin((0, 0, 0))),
        _link(prefix + "xarm_gripper_base_link",
              [(f'<box size="{" ".join(map(str, GRIPPER_BODY))}"/>', _origin((0, 0, body_z)))], color),
        _joint("gripper_fix", "fixed", prefix + "link_eef", prefix + "xarm_gripper_base_link", _origin((0, 0, 0))),
        _link(prefix + "left_finger", [finger_shape], color),
        _link(prefix + "right_finger", [finger_shape], color),
        # The fingers tilt about x, tips towards each other (+x moves the +y finger's tip to -y);
        # the right one mirrors drive_joint.
        _joint(GRIPPER_JOINT, "revolute", prefix + "xarm_gripper_base_link", prefix + "left_finger",
               _origin((0, finger_y, 2 * body_z)), gripper_limit, axis="1 0 0"),
        _joint("right_finger_joint", "revolute", prefix + "xarm_gripper_base_link", prefix + "right_finger",
               _origin((0, -finger_y, 2 * body_z)), gripper_limit, axis="-1 0 0", mimic=GRIPPER_JOINT),
        _link(prefix + "link_tcp"),
        _joint("joint_tcp", "fixed", prefix + "link_eef", prefix + "link_tcp",
               _origin((0, 0, TCP_OFFSET_WITH_GRIPPER))),
    ]
    if prefix:
        parts.insert(0, _link("link_base"))
        parts.append(_joint(f"{prefix}mount", "fixed", "link_base", prefix + "link_base", _origin((0, 0, 0))))
    return f'<?xml version="1.0"?>\n<robot name="{prefix}xarm6">\n' + "\n".join(parts) + "\n</robot>\n"
