"""Teleop without ROS: key mapping, joint and Cartesian jog math, the terminal key reader."""

import os

import numpy as np
import pytest

from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN, HOME, JOINT_LOWER, JOINT_UPPER, forward_kinematics
from evo1_ros.teleop.jog import DEFAULT_MARGIN, cartesian_jog
from evo1_ros.teleop.keys import KEYMAP, Command, JogSteps, Terminal, jog

STEPS = JogSteps()
# a pose with the TCP in front of the robot, gripper pointing down: where demonstrations happen
WORK = np.array([0.0, 0.2, -1.0, 0.0, 0.8, 0.0])


def tcp(q):
    pose = forward_kinematics(q).tcp
    return pose[:3, 3], pose[:3, :3]


@pytest.mark.parametrize("key, joint, sign", [("1", 0, 1), ("q", 0, -1), ("4", 3, 1), ("y", 5, -1)])
def test_joint_keys_move_one_joint_by_one_step(key, joint, sign):
    q, gripper = jog(KEYMAP[key], HOME, 0.3, STEPS)
    expected = HOME.copy()
    expected[joint] += sign * STEPS.joint
    np.testing.assert_allclose(q, expected)
    assert gripper == 0.3


def test_joint_jog_stops_short_of_the_limit():
    q = JOINT_UPPER - DEFAULT_MARGIN - 0.01
    for _ in range(5):
        q, _ = jog(KEYMAP["1"], q, 0.0, STEPS)
    assert q[0] == pytest.approx(JOINT_UPPER[0] - DEFAULT_MARGIN)
    assert np.all(q <= JOINT_UPPER - DEFAULT_MARGIN + 1e-12)


@pytest.mark.parametrize("key, axis, sign", [("i", 0, 1), ("k", 0, -1), ("j", 1, 1), ("l", 1, -1),
                                             ("u", 2, 1), ("o", 2, -1)])
def test_cartesian_keys_move_the_tcp_along_one_axis_keeping_its_orientation(key, axis, sign):
    p0, r0 = tcp(WORK)
    q, _ = jog(KEYMAP[key], WORK, 0.0, STEPS)
    p1, r1 = tcp(q)
    expected = p0.copy()
    expected[axis] += sign * STEPS.linear
    np.testing.assert_allclose(p1, expected, atol=1e-5)
    np.testing.assert_allclose(r1, r0, atol=1e-4)


def test_repeated_x_jog_travels_in_a_straight_line():
    p0, _ = tcp(WORK)
    q = WORK
    for _ in range(20):  # 10 cm in 5 mm presses
        q, _ = jog(KEYMAP["i"], q, 0.0, STEPS)
    p1, _ = tcp(q)
    np.testing.assert_allclose(p1 - p0, [20 * STEPS.linear, 0.0, 0.0], atol=1e-4)


def test_yaw_keys_turn_the_tcp_about_base_z_in_place():
    p0, r0 = tcp(WORK)
    q, _ = jog(KEYMAP["n"], WORK, 0.0, STEPS)
    p1, r1 = tcp(q)
    np.testing.assert_allclose(p1, p0, atol=1e-5)
    a = STEPS.angular
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    np.testing.assert_allclose(r1, rz @ r0, atol=1e-4)


@pytest.mark.parametrize("direction", [(-1, 0, 0), (0, 0, -1)])
def test_cartesian_jog_never_leaves_the_joint_limits(direction):
    # 60 cm back toward the base or down through the table: unclamped, the IK would drive joint2
    # or joint5 past its limit (checked when this test was written)
    q = WORK
    for _ in range(60):
        q = cartesian_jog(q, 0.01 * np.array(direction))
        assert np.all(q >= JOINT_LOWER + DEFAULT_MARGIN - 1e-12)
        assert np.all(q <= JOINT_UPPER - DEFAULT_MARGIN + 1e-12)
    assert np.isclose(q, JOINT_LOWER + DEFAULT_MARGIN).any() or np.isclose(q, JOINT_UPPER - DEFAULT_MARGIN).any()


def test_gripper_and_scale_keys():
    assert jog(KEYMAP["c"], HOME, GRIPPER_OPEN, STEPS)[1] == GRIPPER_CLOSED
    assert jog(KEYMAP["v"], HOME, GRIPPER_CLOSED, STEPS)[1] == GRIPPER_OPEN
    assert STEPS.scaled(KEYMAP["]"].sign).linear == 2 * STEPS.linear
    assert STEPS.scaled(KEYMAP["["].sign).joint == STEPS.joint / 2


def test_episode_keys_and_no_motion_for_them():
    assert {k: c.arg for k, c in KEYMAP.items() if c.kind == "episode"} == {
        "b": "start", "x": "stop", "s": "success", "f": "failure", "d": "discard"}
    with pytest.raises(ValueError):
        jog(Command("episode", "start"), HOME, 0.0, STEPS)


def test_terminal_reads_single_keys_and_skips_escape_sequences():
    controller, device = os.openpty()
    with os.fdopen(device) as stream, Terminal(stream) as terminal:
        keys = terminal.keys(timeout=0.05)
        assert next(keys) is None  # nothing typed yet
        os.write(controller, b"i")
        assert next(keys) == "i"
        os.write(controller, b"\x1b[A")  # an arrow key
        assert next(keys) is None
        os.write(controller, b"bs")
        assert [next(keys), next(keys)] == ["b", "s"]
    os.close(controller)


# --- sources ---------------------------------------------------------------------------------------

def test_keyboard_source_jogs_from_the_measured_pose_and_holds_its_target():
    from evo1_ros.teleop.sources import ArmTarget, KeyboardSource

    source = KeyboardSource(STEPS)
    assert source.press(KEYMAP["1"]) == "no joint state yet: nothing to jog from"
    measured = ArmTarget(HOME.copy(), 0.1)
    assert source.next_target(measured) is measured
    source.press(KEYMAP["1"])
    source.press(KEYMAP["c"])
    moved = ArmTarget(HOME + 0.5, 0.4)  # the arm lags: the target stays the jogged one, not the measured
    target = source.next_target(moved)
    np.testing.assert_allclose(target.joints, HOME + [STEPS.joint, 0, 0, 0, 0, 0])
    assert target.gripper == GRIPPER_CLOSED
    assert "jog steps" in source.press(KEYMAP["]"]) and source.steps.joint == 2 * STEPS.joint


def test_teaching_source_follows_the_hand_and_the_gripper_keys():
    from evo1_ros.teleop.sources import ArmTarget, SourceSettings, make_source

    source = make_source("teaching", SourceSettings(period=0.02))
    assert source.hand_guided
    guided = ArmTarget(WORK.copy(), 0.3)
    assert source.next_target(guided) is guided
    assert "by hand" in source.press(KEYMAP["i"])
    source.press(KEYMAP["v"])
    target = source.next_target(guided)
    np.testing.assert_array_equal(target.joints, WORK)
    assert target.gripper == GRIPPER_OPEN


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_streamed_input_is_silent_before_the_first_value_and_after_the_timeout():
    from evo1_ros.teleop.device import DeviceError
    from evo1_ros.teleop.inputs import StreamedInput

    clock = Clock()
    pad = StreamedInput("Joy topic", 0.5, clock)
    with pytest.raises(DeviceError, match="Joy topic: no input received yet"):
        pad.read()
    pad.put("first")
    clock.now = 0.4
    assert pad.read() == "first"
    clock.now = 1.0
    with pytest.raises(DeviceError, match="Joy topic: no input for 1000 ms"):
        pad.reconnect()
    pad.put("back")
    pad.reconnect()
    assert pad.read() == "back"


def cartesian(twist=(0, 0, 0, 0, 0, 0), engaged=True, gripper=None, frame="base"):
    from evo1_ros.teleop.device import CartesianCommand

    return CartesianCommand(np.array(twist, dtype=float), frame, engaged, gripper)


def test_cartesian_source_moves_through_the_ik_only_while_engaged_and_restarts_from_the_arm():
    from evo1_ros.teleop.inputs import StreamedInput
    from evo1_ros.teleop.sources import ArmTarget, SourceSettings, make_source

    settings = SourceSettings(period=0.02)
    source = make_source("twist", settings)
    assert source.feed is not None and source.engaged() is False
    measured = ArmTarget(WORK.copy(), 0.3)
    source.feed.put(cartesian((0.1, 0, 0, 0, 0, 0)))
    for _ in range(25):  # 0.5 s at 0.1 m/s along base x
        target = source.next_target(measured)  # the arm lags: targets go on from the last target
    assert source.engaged() and target.gripper == 0.3
    np.testing.assert_allclose(tcp(target.joints)[0] - tcp(WORK)[0], [0.05, 0, 0], atol=1e-4)
    source.feed.put(cartesian((0.1, 0, 0, 0, 0, 0), engaged=False))  # deadman released: the target holds
    np.testing.assert_array_equal(source.next_target(measured).joints, target.joints)
    assert source.engaged() is False
    source.feed.put(cartesian(engaged=True, gripper=GRIPPER_CLOSED))
    assert source.next_target(measured).gripper == GRIPPER_CLOSED
    source.restart()  # e.g. the operator takes over again: from where the arm is
    np.testing.assert_array_equal(source.next_target(measured).joints, WORK)
    assert isinstance(source.feed, StreamedInput) and "keys do nothing" in source.press(KEYMAP["i"])


def test_leader_source_starts_slowly_from_the_arm_and_again_after_a_restart():
    from evo1_ros.teleop.leader import FollowLimits, LeaderReading
    from evo1_ros.teleop.sources import ArmTarget, SourceSettings, make_source

    limits = FollowLimits()
    source = make_source("leader", SourceSettings(period=0.02, follow=limits))
    leader = LeaderReading(HOME + 0.3, GRIPPER_CLOSED)
    source.feed.put(leader)
    measured = ArmTarget(HOME.copy(), 0.0)
    first = source.next_target(measured)
    np.testing.assert_allclose(first.joints - HOME, limits.start_step)
    for _ in range(200):
        target = source.next_target(measured)
    np.testing.assert_allclose(target.joints, leader.joints, atol=1e-12)
    source.restart()
    np.testing.assert_allclose(source.next_target(measured).joints - HOME, limits.start_step)


def test_sources_refuse_wrong_settings_in_words():
    from evo1_ros.teleop.sources import SourceSettings, make_source

    with pytest.raises(ValueError, match="period must be > 0 s"):
        SourceSettings(period=0.0)
    with pytest.raises(ValueError, match=r"source must be one of \['keyboard', .*'twist'\], not 'mouse'"):
        make_source("mouse", SourceSettings(period=0.02))
