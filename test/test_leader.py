"""Leader arm: raw Dynamixel positions and JointState messages -> follower joint angles, the
calibration (function and `evo1-ros leader-calibrate`), the follower's step limiter, and the bus
reader on the unmodified dynamixel-sdk talking Protocol 2.0 to emulated servos over a pty, with
its failures (a servo not answering, CRC errors, the adapter unplugged) as DeviceErrors."""

import math

import numpy as np
import pytest
import yaml
from dynamixel_bus import SYNC_READ, DynamixelBus

from evo1_ros.cli import main as cli
from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, HOME, JOINT_LOWER, JOINT_NAMES, JOINT_UPPER
from evo1_ros.teleop.device import DeviceError
from evo1_ros.teleop.dynamixel import DynamixelLeader
from evo1_ros.teleop.leader import (
    RADIANS_PER_TICK,
    FollowLimits,
    JointStateMapping,
    LeaderConfig,
    LeaderFollower,
    LeaderReading,
    calibration_offsets,
)

SIGNS = (1, -1, 1, 1, -1, 1)
IDS = (1, 2, 3, 4, 5, 6, 7)
POSE = np.array([0.3, -0.2, -1.1, 0.5, 1.0, -0.4])
OPEN, CLOSED = 2900, 2300  # gripper servo raw positions


def leader_config(port="/dev/null", **changes):
    raw = np.array([2048, 1000, 3000, 100, -50, 4000])
    settings = dict(port=port, joint_signs=SIGNS, joint_offsets=calibration_offsets(raw, SIGNS, POSE),
                    gripper_open=OPEN, gripper_closed=CLOSED)
    return LeaderConfig(**{**settings, **changes}), raw


def test_calibrated_config_reads_the_calibration_pose():
    config, raw = leader_config()
    reading = config.reading([*raw, OPEN])
    np.testing.assert_allclose(reading.joints, POSE, atol=1e-12)
    assert reading.gripper == 0.0


def test_signs_turn_a_servo_the_followers_way():
    config, raw = leader_config()
    turned = raw + np.array([100, 100, 0, 0, 100, 0])
    joints = config.reading([*turned, OPEN]).joints
    np.testing.assert_allclose(joints - POSE, 100 * RADIANS_PER_TICK * np.array([1, -1, 0, 0, -1, 0]), atol=1e-12)


def test_a_servo_counting_whole_turns_reads_the_same_angle():
    config, raw = leader_config()
    turns = np.array([4096, -4096, 2 * 4096, 0, 4096, -3 * 4096])
    np.testing.assert_allclose(config.reading([*(raw + turns), OPEN]).joints, POSE, atol=1e-9)


def test_every_joint_reads_across_its_whole_range():
    """Joint 3 reaches below -pi and joint 5 above +pi/2: both still read as themselves."""
    signs = (1,) * 6
    zero = np.zeros(6, dtype=int)
    config = LeaderConfig(port="x", joint_signs=signs, joint_offsets=calibration_offsets(zero, signs, np.zeros(6)),
                          gripper_id=None)
    for pose in (JOINT_LOWER + 1e-3, JOINT_UPPER - 1e-3):
        raw = np.round(pose / RADIANS_PER_TICK)
        np.testing.assert_allclose(config.reading(raw).joints, raw * RADIANS_PER_TICK, atol=1e-12)


@pytest.mark.parametrize("raw, drive", [(OPEN, 0.0), (CLOSED, GRIPPER_CLOSED), (2600, GRIPPER_CLOSED / 2),
                                        (3500, 0.0), (1000, GRIPPER_CLOSED)])
def test_gripper_raw_range_maps_to_drive_joint(raw, drive):
    config, joints = leader_config()
    assert config.reading([*joints, raw]).gripper == pytest.approx(drive)


def test_config_round_trips_through_yaml(tmp_path):
    config, _ = leader_config()
    config.save(tmp_path / "leader.yaml")
    assert LeaderConfig.load(tmp_path / "leader.yaml") == config


@pytest.mark.parametrize("change, message", [
    ({"port": ""}, "port must name a serial device"),
    ({"joint_signs": [1, 1, 1, 1, 1, 2]}, "joint_signs must be 1 or -1"),
    ({"joint_ids": [1, 2, 3, 4, 5]}, "joint_ids needs 6 values"),
    ({"joint_ids": [1, 2, 3, 4, 5, 7]}, "servo ids must be distinct"),
    ({"gripper_closed": OPEN}, "both 2900; was the gripper squeezed"),
    ({"gripper_open": None}, "gripper_open and gripper_closed .* are needed"),
    ({"joint_offsets": [0, 0, 0, 0, 0, float("nan")]}, "joint_offsets must be finite"),
    ({"baudrate": "fast"}, "baudrate must be a positive integer"),
    ({"speed": 3}, "unknown setting.*speed"),
])
def test_wrong_leader_files_are_refused_in_words(tmp_path, change, message):
    config, _ = leader_config()
    path = tmp_path / "leader.yaml"
    path.write_text(yaml.safe_dump({**config.to_dict(), **change}))
    with pytest.raises(ValueError, match=message):
        LeaderConfig.load(path)


def test_joint_state_leader_picks_joints_by_name():
    mapping = JointStateMapping(gripper_name="gello_gripper", gripper_open=0.0, gripper_closed=1.0)
    names = ["gello_gripper", *reversed(JOINT_NAMES), "extra"]
    positions = [0.25, *reversed(POSE.tolist()), 9.0]
    reading = mapping.reading(names, positions)
    np.testing.assert_allclose(reading.joints, POSE)
    assert reading.gripper == pytest.approx(0.25 * GRIPPER_CLOSED)
    assert JointStateMapping(gripper_name=None).reading(JOINT_NAMES, POSE).gripper is None


@pytest.mark.parametrize("names, positions, message", [
    (JOINT_NAMES[:5], [0.0] * 5, r"lacks \['joint6', 'drive_joint'\]"),
    (JOINT_NAMES, [0.0] * 5, "6 names but 5 positions"),
    ((*JOINT_NAMES, "drive_joint"), [0.0] * 6 + [float("nan")], "must be finite"),
])
def test_joint_states_the_mapping_cannot_read_are_refused(names, positions, message):
    with pytest.raises(ValueError, match=message):
        JointStateMapping().reading(names, positions)


def test_follower_starts_slowly_then_follows_within_the_step_clamp():
    limits = FollowLimits()
    follower = LeaderFollower(HOME, 0.0, limits)
    leader = LeaderReading(joints=HOME + np.array([0.4, -0.3, 0.2, 0.0, 0.1, -0.5]), gripper=GRIPPER_CLOSED)
    previous, steps = HOME, 0
    while follower.catching_up:
        joints, _ = follower.step(leader)
        assert np.abs(joints - previous).max() <= limits.start_step + 1e-12
        previous, steps = joints, steps + 1
    assert steps == math.ceil((0.5 - limits.caught_up) / limits.start_step)  # the farthest joint sets the pace
    joints, gripper = follower.step(leader)
    np.testing.assert_allclose(joints, leader.joints)  # within one full step: there
    assert gripper == pytest.approx(GRIPPER_CLOSED)
    moved = LeaderReading(joints=leader.joints + 0.2, gripper=None)
    joints, _ = follower.step(moved)
    np.testing.assert_allclose(joints - leader.joints, limits.max_step)  # caught up: the full clamp


def test_a_jump_in_the_leader_slows_the_follower_again():
    follower = LeaderFollower(HOME, 0.0)
    follower.step(LeaderReading(HOME, None))
    assert not follower.catching_up
    joints, _ = follower.step(LeaderReading(HOME + np.array([0, 0, 0, 0, 0, 2.0]), None))
    assert follower.catching_up and joints[5] - HOME[5] == pytest.approx(FollowLimits().start_step)


def test_follower_targets_stay_inside_the_margined_limits_and_the_gripper_moves_gradually():
    limits = FollowLimits()
    follower = LeaderFollower(JOINT_UPPER - 0.06, 0.0, limits)
    for _ in range(30):
        joints, gripper = follower.step(LeaderReading(JOINT_UPPER + 1.0, GRIPPER_CLOSED + 5))
    np.testing.assert_allclose(joints, JOINT_UPPER - limits.joint_limit_margin)
    assert gripper == pytest.approx(GRIPPER_CLOSED)
    follower.restart(HOME, 0.0)
    assert follower.step(LeaderReading(HOME, GRIPPER_CLOSED))[1] == pytest.approx(limits.gripper_max_step)


def test_follower_refuses_non_finite_readings_and_limits():
    follower = LeaderFollower(HOME, 0.0)
    with pytest.raises(ValueError, match="finite joint angles"):
        follower.step(LeaderReading(np.full(6, np.nan), None))
    with pytest.raises(ValueError, match="gripper reading must be finite"):
        follower.step(LeaderReading(HOME, float("inf")))
    with pytest.raises(ValueError, match="start_step must not exceed max_step"):
        FollowLimits(start_step=0.1)
    with pytest.raises(ValueError, match="max_step must be > 0"):
        FollowLimits(max_step=0.0)


# --- the bus: dynamixel-sdk against emulated servos on a pty ---------------------------------


@pytest.fixture
def bus():
    with DynamixelBus(IDS) as chain:
        yield chain


def test_sync_read_of_present_position_through_the_sdk(bus):
    raw = [2048, 1000, 3000, 100, -50, 4096 * 3 + 17, OPEN]
    bus.set_positions(dict(zip(IDS, raw)))
    with DynamixelLeader(bus.port, 57600, IDS) as leader:
        bus.instructions.clear()
        np.testing.assert_array_equal(leader.read_positions(), raw)  # signed and multi-turn counts
        assert bus.instructions == [SYNC_READ]  # one instruction packet for the whole chain


def test_a_leader_moved_by_hand_drives_the_follower(bus):
    config, raw = leader_config(port=bus.port)
    bus.set_positions(dict(zip(IDS, [*raw, OPEN])))
    follower = LeaderFollower(POSE - 0.02, 0.0)
    with DynamixelLeader(config.port, config.baudrate, config.servo_ids) as leader:
        joints, _ = follower.step(config.reading(leader.read_positions()))
        assert not follower.catching_up
        bus.set_positions({1: int(raw[0]) + 200, 7: CLOSED})  # joint1 turned ~0.3 rad, gripper squeezed
        for _ in range(20):
            joints, gripper = follower.step(config.reading(leader.read_positions()))
    np.testing.assert_allclose(joints, POSE + np.array([200 * RADIANS_PER_TICK, 0, 0, 0, 0, 0]), atol=1e-12)
    assert gripper == pytest.approx(GRIPPER_CLOSED)


def test_a_servo_that_does_not_answer_at_open_is_named(bus):
    bus.silent = {4}
    with pytest.raises(DeviceError, match="servo 4: There is no status packet!; check the servos' power"):
        DynamixelLeader(bus.port, 57600, IDS).open()


def test_a_servo_that_stops_answering_is_a_device_error_and_the_bus_recovers(bus):
    with DynamixelLeader(bus.port, 57600, IDS) as leader:
        leader.read_positions()
        bus.silent = {4}
        with pytest.raises(DeviceError, match=r"sync read failed \(.*\); servo 4: There is no status packet!"):
            leader.read_positions()
        bus.silent = set()
        assert len(leader.read_positions()) == len(IDS)


def test_crc_errors_are_a_device_error(bus):
    with DynamixelLeader(bus.port, 57600, IDS) as leader:
        bus.corrupt_crc = True
        with pytest.raises(DeviceError, match="Incorrect status packet"):
            leader.read_positions()


def test_unplugging_the_adapter_is_a_device_error_and_closes_the_bus(bus):
    leader = DynamixelLeader(bus.port, 57600, IDS)
    leader.open()
    leader.read_positions()
    bus.unplug()
    with pytest.raises(DeviceError, match="bus failed .*unplugged"):
        leader.read_positions()
    assert not leader.is_open
    with pytest.raises(DeviceError, match="not open"):
        leader.read_positions()


def test_ports_and_baud_rates_that_cannot_work_are_device_errors(tmp_path):
    with pytest.raises(DeviceError, match="cannot open .*no-such-adapter"):
        DynamixelLeader(str(tmp_path / "no-such-adapter"), 57600, IDS).open()
    with pytest.raises(DeviceError, match="baud rate 12345 is not one"):
        DynamixelLeader("/dev/null", 12345, IDS).open()


# --- evo1-ros leader-calibrate -----------------------------------------------------------------


def test_calibrate_command_writes_a_config_that_reads_the_pose(bus, tmp_path, monkeypatch, capsys):
    raw = [2048, 1000, 3000, 100, -50, 4000, OPEN]
    bus.set_positions(dict(zip(IDS, raw)))
    prompts = []

    def operator(prompt):  # holds the pose, then squeezes the gripper when asked
        prompts.append(prompt)
        if "Squeeze" in prompt:
            bus.set_positions({7: CLOSED})
        return ""

    monkeypatch.setattr("builtins.input", operator)
    out = tmp_path / "leader.yaml"
    pose = ",".join(str(v) for v in POSE)
    assert cli(["leader-calibrate", "--port", bus.port, "--signs", "1,-1,1,1,-1,1", "--pose", pose,
                "--out", str(out)]) == 0
    assert len(prompts) == 2 and "[0.3, -0.2, -1.1, 0.5, 1.0, -0.4]" in prompts[0]
    config = LeaderConfig.load(out)
    assert (config.port, config.joint_signs, config.gripper_open, config.gripper_closed) == (
        bus.port, SIGNS, OPEN, CLOSED)
    np.testing.assert_allclose(config.reading([*raw[:6], CLOSED]).joints, POSE, atol=1e-12)
    assert f"wrote {out}" in capsys.readouterr().out

    bus.set_positions({7: OPEN})  # recalibrate in the home pose from that file, keeping its bus and signs
    assert cli(["leader-calibrate", "--config", str(out), "--pose", "home"]) == 0
    np.testing.assert_allclose(LeaderConfig.load(out).reading(raw).joints, HOME, atol=1e-12)


def test_calibrate_command_refuses_in_words(bus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("builtins.input", lambda prompt: "")
    out = str(tmp_path / "leader.yaml")
    assert cli(["leader-calibrate", "--port", bus.port, "--pose", "1,2,3", "--out", out]) == 2
    assert "--pose needs 6 finite angles" in capsys.readouterr().err
    assert cli(["leader-calibrate", "--port", bus.port, "--signs", "1,1", "--out", out]) == 2
    assert "joint_signs needs 6 values" in capsys.readouterr().err
    assert cli(["leader-calibrate", "--pose", "zero", "--out", out]) == 2
    assert "give --port" in capsys.readouterr().err
    bus.silent = {3}
    assert cli(["leader-calibrate", "--port", bus.port, "--out", out]) == 1
    assert "servo 3: There is no status packet!" in capsys.readouterr().err
    bus.silent = set()  # the operator never squeezes the gripper
    assert cli(["leader-calibrate", "--port", bus.port, "--out", out]) == 1
    assert "was the gripper squeezed" in capsys.readouterr().err
    assert not (tmp_path / "leader.yaml").exists()
