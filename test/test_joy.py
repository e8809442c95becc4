"""Joy and Twist mapping (plain lists, as a sensor_msgs/Joy or geometry_msgs/Twist carries them),
the shipped Xbox map, episode buttons, the silence detector and refusals of wrong maps and messages."""

from pathlib import Path

import numpy as np
import pytest

from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN
from evo1_ros.teleop.device import DeviceError, SilenceDetector, apply_deadband
from evo1_ros.teleop.joy import JoyMap, JoyMapper, TwistInput, twist_command

XBOX = Path(__file__).resolve().parents[1] / "config" / "teleop_joy_xbox.yaml"
LB, A, B, X, Y, BACK, START, GUIDE = 4, 0, 1, 2, 3, 6, 7, 8


def pad(axes=None, pressed=()):
    """An Xbox Joy message at rest (8 axes, 11 buttons) with some axes moved and buttons pressed."""
    values = [0.0] * 8
    for index, value in (axes or {}).items():
        values[index] = value
    return values, [int(i in pressed) for i in range(11)]


@pytest.fixture
def xbox():
    return JoyMapper(JoyMap.load(XBOX))


def test_xbox_map_moves_only_while_the_deadman_is_held(xbox):
    speed = xbox.map.linear_speed
    idle = xbox.command(*pad({1: 1.0}))
    assert not idle.engaged and not idle.twist.any()
    forward = xbox.command(*pad({1: 1.0}, [LB]))
    np.testing.assert_allclose(forward.twist, [speed, 0, 0, 0, 0, 0])
    assert forward.engaged and forward.frame == "base"
    left_up_turn = xbox.command(*pad({0: 1.0, 4: 1.0, 3: -1.0}, [LB]))
    turn = xbox.map.angular_speed
    np.testing.assert_allclose(left_up_turn.twist, [0, speed, speed, 0, 0, -turn])


def test_stick_deadband_and_scaling(xbox):
    width = xbox.map.deadband
    assert not xbox.command(*pad({1: 0.8 * width}, [LB])).twist.any()
    half = xbox.command(*pad({1: 0.5}, [LB])).twist[0]
    assert half == pytest.approx((0.5 - width) / (1 - width) * xbox.map.linear_speed)


def test_deadband_is_continuous_and_clipped():
    shaped = apply_deadband([0.1, 0.1000001, 1.0, -1.0, 3.0], 0.1)
    np.testing.assert_allclose(shaped, [0, 1e-7 / 0.9, 1, -1, 1], atol=1e-12)


def test_gripper_buttons_need_the_deadman(xbox):
    assert xbox.command(*pad(pressed=[A])).gripper is None
    assert xbox.command(*pad(pressed=[A, LB])).gripper == GRIPPER_CLOSED
    assert xbox.command(*pad(pressed=[B, LB])).gripper == GRIPPER_OPEN
    assert xbox.command(*pad(pressed=[A, B, LB])).gripper is None


def test_episode_buttons_fire_once_per_press(xbox):
    assert xbox.command(*pad(pressed=[START])).events == ()  # held before the first message: no event
    assert xbox.command(*pad()).events == ()
    assert xbox.command(*pad(pressed=[START])).events == ("start",)
    assert xbox.command(*pad(pressed=[START])).events == ()  # still held
    assert xbox.command(*pad(pressed=[BACK, Y])).events == ("stop", "success")
    assert xbox.command(*pad(pressed=[X, GUIDE])).events == ("discard", "failure")


def test_a_pedal_map_only_controls_episodes():
    pedal = JoyMapper(JoyMap.from_dict({"buttons": {"start": 0, "stop": 1, "discard": 2}}))
    pedal.command([], [0, 0, 0])
    command = pedal.command([], [0, 1, 0])
    assert command.events == ("stop",) and not command.engaged and not command.twist.any()


def test_without_a_deadman_deflection_is_driving():
    mapper = JoyMapper(JoyMap.from_dict({"deadband": 0.0, "frame": "tool", "axes": {
        "z": {"buttons": [0, 1]}, "yaw": {"axis": 0, "sign": -1}}, "buttons": {"gripper_close": 2}}))
    up = mapper.command([0.0], [1, 0, 0])
    assert up.engaged and up.frame == "tool"
    np.testing.assert_allclose(up.twist, [0, 0, 0.15, 0, 0, 0])
    np.testing.assert_allclose(mapper.command([0.5], [0, 1, 0]).twist, [0, 0, -0.15, 0, 0, -0.3])
    assert not mapper.command([0.0], [0, 0, 0]).engaged
    assert mapper.command([0.0], [0, 0, 1]).gripper == GRIPPER_CLOSED


@pytest.mark.parametrize("axes, buttons, message", [
    ([0.0] * 4, [0] * 11, "has 4 axes; the map reads axis 7"),
    ([0.0] * 8, [0] * 5, "has 5 buttons; the map reads button 8"),
    ([float("nan")] + [0.0] * 7, [0] * 11, "axes must be finite"),
])
def test_messages_the_map_cannot_read_are_refused_in_words(xbox, axes, buttons, message):
    with pytest.raises(ValueError, match=message):
        xbox.command(axes, buttons)
    assert xbox.command(*pad({1: 1.0}, [LB])).engaged  # and the mapper keeps working


@pytest.mark.parametrize("data, message", [
    ({"axes": {"forward": {"axis": 1}}}, "unknown setting.*forward"),
    ({"axes": {"x": {"axis": 1, "buttons": [0, 1]}}}, "exactly one of"),
    ({"axes": {"x": {"axis": -1}}}, "axis index must be an integer >= 0"),
    ({"axes": {"x": {"axis": 1, "sign": 2}}}, "sign must be 1 or -1"),
    ({"axes": {"x": {"axis": 1, "gain": 2}}}, "unexpected keyword argument 'gain'"),
    ({"buttons": {"deadman": "LB"}}, "button for deadman index must be an integer"),
    ({"buttons": {"record": 3}}, "unknown setting.*record"),
    ({"linear_speed": 0}, "linear_speed must be > 0"),
    ({"deadband": 1.5}, "deadband must be in"),
    ({"frame": "world"}, "frame must be one of"),
    ({"timeout": 3}, "unknown setting.*timeout"),
])
def test_wrong_maps_are_refused_in_words(data, message):
    with pytest.raises(ValueError, match=message):
        JoyMap.from_dict(data)


def test_map_files_that_cannot_be_read_are_refused_with_their_path(tmp_path):
    with pytest.raises(ValueError, match="cannot read .*missing.yaml"):
        JoyMap.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml.*must hold a mapping"):
        JoyMap.load(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("axes: {x: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        JoyMap.load(tmp_path / "bad.yaml")


def test_twist_stream_scaled_and_engaged_only_when_moving():
    config = TwistInput(frame="tool", linear_scale=0.2, angular_scale=0.5)
    moving = twist_command([1.0, 0.0, -0.5], [0.0, 0.0, 1.0], config)
    np.testing.assert_allclose(moving.twist, [0.2, 0, -0.1, 0, 0, 0.5])
    assert moving.engaged and moving.frame == "tool"
    assert not twist_command([0, 0, 0], [0, 0, 0], config).engaged
    with pytest.raises(ValueError, match="finite"):
        twist_command([0, float("inf"), 0], [0, 0, 0], config)
    with pytest.raises(ValueError, match="3 finite linear"):
        twist_command([0, 0], [0, 0, 0], config)
    with pytest.raises(ValueError, match="linear_scale must be > 0"):
        TwistInput(linear_scale=0.0)


def test_silence_detector():
    silence = SilenceDetector("joy", 0.5)
    assert silence.silent(0.0)
    with pytest.raises(DeviceError, match="joy: no input received yet"):
        silence.check(0.0)
    silence.heard(10.0)
    silence.check(10.5)
    assert not silence.silent(10.5)
    assert silence.silent(10.51)
    with pytest.raises(DeviceError, match=r"joy: no input for 700 ms \(timeout 500 ms\)"):
        silence.check(10.7)
    silence.heard(10.8)
    silence.check(10.9)  # heard again: no longer silent
    with pytest.raises(ValueError, match="timeout must be > 0"):
        SilenceDetector("joy", 0.0)
