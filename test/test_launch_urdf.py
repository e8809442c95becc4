"""The xArm6 URDF that robot_state_publisher gets when there is no xarm_description."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from evo1_ros.robot import xarm6
from evo1_ros.robot.description import xarm6_urdf


def rotation(axis, angle):
    """Rodrigues' formula: rotation by `angle` about the unit vector `axis`."""
    x, y, z = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def transform(xyz=(0, 0, 0), rotation_matrix=np.eye(3)):
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rotation_matrix, xyz
    return t


def origin(joint):
    element = joint.find("origin")
    xyz = [float(v) for v in element.get("xyz").split()]
    roll, pitch, yaw = (float(v) for v in element.get("rpy").split())
    # URDF: fixed-axis roll about x, then pitch about y, then yaw about z
    return transform(xyz, rotation((0, 0, 1), yaw) @ rotation((0, 1, 0), pitch) @ rotation((1, 0, 0), roll))


def pose(robot, link, q):
    """The link's pose in the root frame, composing the URDF joints up the tree."""
    joints = {j.find("child").get("link"): j for j in robot.iter("joint")}
    chain = np.eye(4)
    while link in joints:
        joint = joints[link]
        motion = np.eye(4)
        if joint.get("type") == "revolute":
            axis = [float(v) for v in joint.find("axis").get("xyz").split()]
            mimic = joint.find("mimic")
            angle = q.get(joint.get("name"), 0.0) if mimic is None else (
                float(mimic.get("multiplier")) * q.get(mimic.get("joint"), 0.0) + float(mimic.get("offset")))
            motion = transform(rotation_matrix=rotation(axis, angle))
        chain = origin(joint) @ motion @ chain
        link = joint.find("parent").get("link")
    return chain


@pytest.fixture(scope="module")
def robot():
    return ET.fromstring(xarm6_urdf().split("\n", 1)[1])  # ElementTree wants no XML declaration


def test_frames_joints_and_limits(robot):
    links = {link.get("name") for link in robot.iter("link")}
    assert {"link_base", "link_eef", "link_tcp"} | {f"link{i}" for i in range(1, 7)} <= links
    joints = {joint.get("name"): joint for joint in robot.iter("joint")}
    for i, name in enumerate(xarm6.JOINT_NAMES):
        joint = joints[name]
        assert joint.get("type") == "revolute"
        assert (joint.find("parent").get("link"), joint.find("child").get("link")) == (
            "link_base" if i == 0 else f"link{i}", f"link{i + 1}")
        limit = joint.find("limit")
        assert float(limit.get("lower")) == pytest.approx(xarm6.JOINT_LOWER[i], abs=1e-8)
        assert float(limit.get("upper")) == pytest.approx(xarm6.JOINT_UPPER[i], abs=1e-8)
        assert float(limit.get("velocity")) == xarm6.URDF_MAX_VELOCITY
    gripper = joints[xarm6.GRIPPER_JOINT].find("limit")
    assert (float(gripper.get("lower")), float(gripper.get("upper"))) == (xarm6.GRIPPER_OPEN, xarm6.GRIPPER_CLOSED)
    # one tree: every link but the root is some joint's child exactly once
    children = [joint.find("child").get("link") for joint in robot.iter("joint")]
    assert sorted(children) == sorted(links - {"link_base"})


def test_chain_matches_forward_kinematics(robot):
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(xarm6.JOINT_LOWER, xarm6.JOINT_UPPER)
        fk = xarm6.forward_kinematics(q)
        angles = dict(zip(xarm6.JOINT_NAMES, q))
        for i, expected in enumerate(fk.links):
            np.testing.assert_allclose(pose(robot, f"link{i + 1}", angles), expected, atol=1e-8)
        np.testing.assert_allclose(pose(robot, "link_eef", angles), fk.links[-1], atol=1e-8)
        np.testing.assert_allclose(pose(robot, "link_tcp", angles), fk.tcp, atol=1e-8)


def test_ghost_hangs_off_the_real_base():
    ghost = ET.fromstring(xarm6_urdf("ghost/").split("\n", 1)[1])
    links = {link.get("name") for link in ghost.iter("link")}
    assert "link_base" in links and "ghost/link_tcp" in links and "link_tcp" not in links
    # same joint names, so the predicted JointState drives it; same kinematics below the mount
    assert {j.get("name") for j in ghost.iter("joint")} >= set(xarm6.JOINT_NAMES) | {xarm6.GRIPPER_JOINT}
    q = dict(zip(xarm6.JOINT_NAMES, xarm6.HOME))
    np.testing.assert_allclose(pose(ghost, "ghost/link_tcp", q), xarm6.forward_kinematics(xarm6.HOME).tcp, atol=1e-8)


def test_gripper_closes_as_drive_joint_rises(robot):
    def gap(drive):
        q = {xarm6.GRIPPER_JOINT: drive}
        tip = np.array([0, 0, 0.06, 1.0])  # the fingertips, in each finger's frame
        return np.linalg.norm(pose(robot, "left_finger", q) @ tip - pose(robot, "right_finger", q) @ tip)

    assert gap(xarm6.GRIPPER_OPEN) > gap(xarm6.GRIPPER_CLOSED / 2) > gap(xarm6.GRIPPER_CLOSED)
