"""The xArm controller emulator: its rules on their own (no sockets, a manual clock), its arms, and
the unmodified PyPI xarm-python-sdk talking to it over TCP (the emulator in a process of its own)."""

import math
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from evo1_ros.robot import xarm6
from evo1_ros.xarm_emulator import EmulatorConfig, EmulatorError, XArmEmulator, parse_fault
from evo1_ros.xarm_emulator.arms import KinematicArm
from evo1_ros.xarm_emulator.controller import Controller
from evo1_ros.xarm_emulator.protocol import (
    GripperRegister,
    Register,
    Request,
    Status,
    pack_floats,
    reply,
    split_request,
)

XArmAPI = pytest.importorskip("xarm.wrapper").XArmAPI


class Clock:
    def __init__(self):
        self.now = 10.0

    def __call__(self):
        return self.now


def servoj(joints) -> bytes:
    return pack_floats([*joints, 0.0, 0.0, 0.0, 0.0])  # 7 joints, speed, acceleration, time


def make_ready(controller, mode=1):
    for register, payload in [(Register.CLEAN_ERROR, b""), (Register.MOTION_ENABLE, bytes([8, 1])),
                              (Register.SET_MODE, bytes([mode, 0])), (Register.SET_STATE, bytes([0]))]:
        status, _ = controller.handle(register, payload)
        assert not status & (Status.ERROR | Status.INVALID)


def cycle(controller, clock, seconds, dt=0.004):
    for _ in range(int(round(seconds / dt))):
        clock.now += dt
        controller.cycle(dt)


# --- rules, no sockets ---------------------------------------------------------------------------

def test_framing_round_trip():
    request = struct.pack(">HHHB", 7, 2, 2, Register.SET_STATE) + bytes([0])  # length: register + payload
    parsed, rest = split_request(request + struct.pack(">HH", 8, 2))  # and the start of the next one
    assert parsed == Request(7, 2, Register.SET_STATE, bytes([0])) and rest == struct.pack(">HH", 8, 2)
    assert split_request(rest) == (None, rest)  # incomplete: wait for more
    assert reply(parsed, Status.ERROR, b"\x05") == struct.pack(">HHHBBB", 7, 2, 3, Register.SET_STATE, 0x40, 5)


def test_motion_needs_enable_mode_and_state_0():
    clock = Clock()
    c = Controller(KinematicArm(), clock)
    status, _ = c.handle(Register.MOVE_SERVOJ, servoj(xarm6.HOME))
    assert status & Status.NOT_READY and (c.mode, c.state) == (0, 4)  # powered up stopped
    c.handle(Register.MOTION_ENABLE, bytes([8, 1]))
    c.handle(Register.SET_MODE, bytes([1, 0]))
    assert (c.mode, c.state) == (1, 5)  # mode changed: not ready until set_state(0)
    target = xarm6.HOME + 0.005
    status, _ = c.handle(Register.MOVE_SERVOJ, servoj(target))
    assert status & Status.NOT_READY and len(c.servo_log) == 0
    c.handle(Register.SET_STATE, bytes([0]))
    status, _ = c.handle(Register.MOVE_SERVOJ, servoj(target))
    assert status == 0 and len(c.servo_log) == 1
    cycle(c, clock, 0.02)
    assert np.allclose(c.arm.joints(), target)
    status, _ = c.handle(Register.SET_MODE, bytes([4, 0]))  # velocity mode: not emulated, said so
    assert status & Status.INVALID and c.mode == 1


def test_servo_mode_executes_only_the_newest_target():
    clock = Clock()
    c = Controller(KinematicArm(), clock)
    make_ready(c)
    first, newest = xarm6.HOME + 0.004, xarm6.HOME - 0.004
    for target in (first, newest):  # both within one controller cycle
        assert c.handle(Register.MOVE_SERVOJ, servoj(target))[0] == 0
    cycle(c, clock, 0.02)
    assert np.allclose(c.arm.joints(), newest)


@pytest.mark.parametrize("code, step", [(23, np.array([0, 0, 0.8, 0, 0, 0])),  # joint3 past 0.192 rad
                                         (24, np.array([0.05, 0, 0, 0, 0, 0]))])  # 0.05 rad in 10 ms: 5 rad/s
def test_limit_and_speed_errors_stop_the_arm_until_the_recovery_sequence(code, step):
    clock = Clock()
    c = Controller(KinematicArm(), clock)
    make_ready(c)
    q = xarm6.HOME.copy()
    for _ in range(50):  # a stream at 100 Hz, 1 rad/s on joint 1: fine
        q[0] += 0.01
        clock.now += 0.01
        assert c.handle(Register.MOVE_SERVOJ, servoj(q))[0] == 0
        c.cycle(0.01)
    clock.now += 0.01
    status, _ = c.handle(Register.MOVE_SERVOJ, servoj(q + step))
    assert status & Status.ERROR and (c.error, c.mode, c.state) == (code, 0, 4)
    stopped_at = c.arm.joints()
    cycle(c, clock, 0.1)
    assert np.allclose(c.arm.joints(), stopped_at)  # stopped where the error hit, not at the target
    for register, payload in [(Register.SET_STATE, bytes([0])), (Register.MOVE_SERVOJ, servoj(stopped_at))]:
        assert c.handle(register, payload)[0] & Status.ERROR  # nothing moves before clean_error
    assert c.state == 4 and len(c.servo_log) == 50
    c.handle(Register.CLEAN_ERROR, b"")
    assert c.handle(Register.MOVE_SERVOJ, servoj(stopped_at))[0] & Status.NOT_READY  # still mode 0, state 4
    make_ready(c)
    assert c.handle(Register.MOVE_SERVOJ, servoj(stopped_at + 0.005))[0] == 0


def test_position_mode_plays_queued_moves_in_order():
    clock = Clock()
    c = Controller(KinematicArm(), clock)
    make_ready(c, mode=0)
    goals = [xarm6.HOME + 0.2, xarm6.HOME - 0.1]
    for goal in goals:
        assert c.handle(Register.MOVE_JOINT, pack_floats([*goal, 0.0, 1.0, 10.0, 0.0]))[0] == 0  # 1 rad/s
    assert struct.unpack(">H", c.handle(Register.GET_CMDNUM, b"")[1]) == (2,)
    cycle(c, clock, 0.21)
    assert np.allclose(c.arm.joints(), goals[0], atol=0.01) and c.state == 1
    cycle(c, clock, 0.5)
    assert np.allclose(c.arm.joints(), goals[1]) and c.state == 2


def test_gripper_behind_the_rs485_pass_through():
    clock = Clock()
    c = Controller(KinematicArm(), clock)

    def modbus(frame):
        status, payload = c.handle(Register.RS485_RTU, bytes([9]) + frame)
        assert status & Status.INVALID == 0 and payload[0] == 9
        return payload[1:]

    def write(register, *values):
        data = struct.pack(f">{len(values)}H", *values)
        return modbus(struct.pack(">BBHHB", 8, 0x10, register, len(values), len(data)) + data)

    assert write(GripperRegister.ENABLE, 1) == struct.pack(">BBHH", 8, 0x10, GripperRegister.ENABLE, 1)
    write(GripperRegister.SPEED, 5000)
    write(GripperRegister.TARGET_POSITION, *struct.unpack(">HH", struct.pack(">i", 100)))
    cycle(c, clock, 1.0)  # 5000 r/min: 1500 pulses/s, 750 pulses take 0.5 s
    answer = modbus(struct.pack(">BBHH", 8, 0x03, GripperRegister.POSITION, 2))
    assert answer[:3] == bytes([8, 0x03, 4]) and struct.unpack(">i", answer[3:]) == (100,)
    assert c.arm.gripper() == pytest.approx(xarm6.sdk_to_gripper(100))


def test_guiding_by_hand_only_in_teaching_mode():
    c = Controller(KinematicArm(), Clock())
    make_ready(c, mode=1)
    with pytest.raises(ValueError, match="teaching mode"):
        c.guide(xarm6.HOME + 0.3)
    make_ready(c, mode=2)
    c.guide(xarm6.HOME + 0.3)
    assert np.allclose(c.arm.joints(), xarm6.HOME + 0.3)
    assert c.handle(Register.MOVE_SERVOJ, servoj(xarm6.HOME))[0] == 0 and len(c.servo_log) == 0  # ignored


def test_fault_syntax():
    assert str(parse_fault("C24@2.5")) == "C24@2.5"
    assert parse_fault("W11").kind == "warning" and parse_fault("W11").at is None
    assert parse_fault("servo-reply-delay").value == pytest.approx(0.19)
    assert parse_fault("freeze-report").value == math.inf
    assert parse_fault("gripper-delay:0.08@1").value == pytest.approx(0.08)
    for bad in ("C", "C24:3", "freeze-report:-1", "gripper-lost:2", "teleport", "C24@-1", "C999"):
        with pytest.raises(ValueError, match="NAME\\[:VALUE\\]"):
            parse_fault(bad)


@pytest.mark.parametrize("field, value, match", [
    ("ip", "localhost:502", "IPv4"), ("arm", "real", "kinematic"), ("report_hz", 500.0, "100.0, 250.0"),
    ("initial_joints", (0.0, 0.0, 1.0, 0.0, 0.0, 0.0), "within the joint limits"), ("faults", ("C24@x",), "bad fault"),
])
def test_config_refuses_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        EmulatorConfig(**{field: value})


def test_sim_arm_is_stepped_by_the_controller():
    """The `sim` arm: the MuJoCo world of evo1_ros.sim follows servo targets as the cycle steps it."""
    pytest.importorskip("mujoco")
    from evo1_ros.sim.world import SimWorld
    from evo1_ros.xarm_emulator.arms import SimArm

    world = SimWorld(image_size=32)
    clock = Clock()
    c = Controller(SimArm(world), clock)
    make_ready(c)
    start = world.joint_positions()
    q = start.copy()
    for _ in range(100):  # 1 s at 100 Hz, joint 1 at 0.4 rad/s
        q[0] += 0.004
        clock.now += 0.01
        assert c.handle(Register.MOVE_SERVOJ, servoj(q))[0] == 0
        for _ in range(2):
            c.cycle(0.005)
    cycle(c, clock, 0.5)
    assert world.time == pytest.approx(1.5, abs=0.01)  # physics ran exactly as long as the controller
    assert world.joint_positions()[0] == pytest.approx(q[0], abs=0.02)
    assert np.allclose(world.joint_positions()[1:], start[1:], atol=0.02)


def test_sim_episode_reset_pauses_the_controller_until_the_client_starts_over():
    """A sim reset puts the world's arm back at HOME: the controller must not drag it back to the
    last episode's target, nor take a command sent for that episode, nor call the client's next
    stream (from HOME) a speeding arm."""
    pytest.importorskip("mujoco")
    from evo1_ros.sim.world import SimWorld
    from evo1_ros.xarm_emulator.arms import SimArm

    world = SimWorld(image_size=32)
    clock = Clock()
    c = Controller(SimArm(world), clock)
    make_ready(c)
    far = xarm6.HOME + [0.6, 0.0, -0.3, 0.0, 0.0, 0.0]
    for q in np.linspace(xarm6.HOME, far, 200):  # 2 s at 100 Hz
        clock.now += 0.01
        assert c.handle(Register.MOVE_SERVOJ, servoj(q))[0] == 0
        c.cycle(0.005)
        c.cycle(0.005)
    cycle(c, clock, 0.5)
    assert np.abs(world.joint_positions() - far).max() < 0.02

    world.reset(seed=3)
    accepted = len(c.servo_log)
    clock.now += 0.01
    assert c.handle(Register.MOVE_SERVOJ, servoj(far))[0] == 0  # sent for the last episode: ignored
    cycle(c, clock, 0.3)
    assert np.abs(world.joint_positions() - xarm6.HOME).max() < 0.01  # not dragged back
    assert (c.mode, c.state, c.error) == (1, 3, 0) and len(c.servo_log) == accepted
    assert "new sim episode" in c.events[-1][1]
    # the client starts over (as the driver's recover does): servo mode, ready, a stream from HOME
    make_ready(c)
    q = xarm6.HOME.copy()
    for _ in range(50):
        q[0] += 0.004  # 0.4 rad/s
        clock.now += 0.01
        assert c.handle(Register.MOVE_SERVOJ, servoj(q))[0] == 0
        c.cycle(0.005)
        c.cycle(0.005)
    cycle(c, clock, 0.3)
    assert c.error == 0 and world.joint_positions()[0] == pytest.approx(q[0], abs=0.02)


# --- the unmodified SDK over TCP ----------------------------------------------------------------


def sdk(emulator, **kwargs):
    arm = XArmAPI(emulator.config.ip, is_radian=True, **kwargs)
    assert arm.connected
    return arm


def ready(arm, mode=1):
    assert [arm.clean_error(), arm.motion_enable(True), arm.set_mode(mode), arm.set_state(0)] == [0, 0, 0, 0]
    deadline = time.monotonic() + 2.0
    while (arm.mode, arm.state) not in ((mode, 1), (mode, 2)):  # as the report stream tells it
        assert time.monotonic() < deadline, (arm.mode, arm.state)
        time.sleep(0.01)


def test_sdk_streams_servo_targets_for_10_s_at_100_hz_and_the_reports_follow(xarm_emulator):
    emulator = xarm_emulator()
    arm = sdk(emulator, report_type="real")
    try:
        assert arm.version_number == (2, 3, 0) and arm.axis == 6
        ready(arm)
        start = np.array(arm.angles[:6])
        sent, seen = [], []
        t0 = time.monotonic()
        for k in range(1000):
            target = start + 0.3 * np.sin(2 * math.pi * 0.2 * k / 100.0) * np.array([1, 0.5, -0.5, 1, 0.5, 1])
            assert arm.set_servo_angle_j(target.tolist(), is_radian=True) == 0
            sent.append((time.monotonic(), target))
            seen.append((time.monotonic(), np.array(arm.angles[:6])))
            time.sleep(max(0.0, t0 + (k + 1) / 100.0 - time.monotonic()))
        assert emulator.status()["servo_targets"] == 1000
        # every reported pose is one of the targets sent (the arm reaches each within a controller
        # cycle), seen a report period or two later; a loaded CI machine may delay the SDK's threads
        times, targets = np.array([t for t, _ in sent]), np.array([q for _, q in sent])
        lags = []
        for t, angles in seen[100:]:
            matches = np.flatnonzero((np.abs(targets - angles).max(axis=1) < 1e-5) & (times <= t))
            assert len(matches), f"reported {angles} was never commanded"
            lags.append(t - times[matches[-1]])
        assert np.median(lags) < 0.03 and max(lags) < 0.5, (np.median(lags), max(lags))
        assert arm.error_code == 0 and arm.get_err_warn_code() == (0, [0, 0])
    finally:
        arm.disconnect()


@pytest.mark.parametrize("report_hz", [100.0, 250.0])
def test_real_time_report_rate(xarm_emulator, report_hz):
    emulator = xarm_emulator(report_hz=report_hz)
    arm = sdk(emulator, report_type="real")
    arrivals = []
    arm.register_report_location_callback(lambda report: arrivals.append(time.monotonic()), report_joints=True)
    try:
        time.sleep(1.5)
    finally:
        arm.disconnect()
    intervals = np.diff(arrivals[-int(report_hz):])
    assert np.median(intervals) == pytest.approx(1.0 / report_hz, rel=0.2)
    assert len(arrivals) >= 0.8 * 1.5 * report_hz


def test_normal_report_carries_error_and_warning_codes(xarm_emulator):
    emulator = xarm_emulator()
    arm = sdk(emulator, report_type="normal")
    try:
        ready(arm)
        emulator.inject("W11")
        emulator.inject("C31")
        deadline = time.monotonic() + 2.0  # the normal stream runs at 5 Hz
        while (arm.error_code, arm.warn_code) != (31, 11):
            assert time.monotonic() < deadline, (arm.error_code, arm.warn_code)
            time.sleep(0.02)
        assert (arm.mode, arm.state) == (0, 4)
    finally:
        arm.disconnect()


def test_sdk_queries_moves_errors_and_gripper(xarm_emulator):
    emulator = xarm_emulator(gripper_latency_s=0.01)
    arm = sdk(emulator, report_type="real", check_robot_sn=True)
    try:
        assert arm.sn == "XI1303EMU01" and arm.control_box_sn == "AC1303EMU01"
        ready(arm, mode=0)
        goal = [0.3, -0.2, -0.8, 0.2, 1.0, -0.3]
        assert arm.set_servo_angle(angle=goal, speed=1.5, wait=True) == 0  # mode 0: a planned move
        code, angles = arm.get_servo_angle()
        assert code == 0 and np.allclose(angles[:6], goal, atol=1e-5)
        code, pose = arm.get_position()
        assert code == 0 and np.allclose(pose[:3], xarm6.forward_kinematics(np.array(goal), 0.0).tcp[:3, 3] * 1000,
                                          atol=0.01)
        # mode changes wait for set_state(0); out of servo mode, servo targets do not move the arm
        assert arm.set_mode(1) == 0
        assert arm.set_servo_angle_j(goal, is_radian=True) == 9  # state 5: not ready
        assert arm.set_state(0) == 0
        # the controller's own joint limits (the URDF's): joint 1 at 3.12 rad passes the SDK's own
        # check (+-2 pi for this arm type) and meets C23 in the controller
        assert arm.set_servo_angle_j([3.12, *goal[1:]], is_radian=True) == 1
        assert arm.get_err_warn_code() == (0, [23, 0])
        time.sleep(0.05)
        assert (arm.mode, arm.state) == (0, 4)
        # the gripper through the RS-485 pass-through, each register access a round trip
        assert [arm.set_gripper_mode(0), arm.set_gripper_enable(True), arm.set_gripper_speed(5000)] == [0, 0, 0]
        start = time.monotonic()
        assert arm.set_gripper_position(200, wait=True) == 0
        assert arm.get_gripper_position() == (0, 200)
        assert time.monotonic() - start >= 0.4  # 650 pulses at 1500 pulses/s, read back a round trip at a time
        start = time.monotonic()
        assert arm.get_gripper_position(check_baud=False)[0] == 0
        assert time.monotonic() - start >= 0.02  # position + error register: two round trips of 10 ms
    finally:
        arm.disconnect()


def test_teaching_mode_follows_the_hand(xarm_emulator):
    emulator = xarm_emulator()
    arm = sdk(emulator, report_type="real")
    try:
        ready(arm, mode=1)
        with pytest.raises(EmulatorError, match="teaching mode"):
            emulator.guide(xarm6.HOME + 0.2)
        ready(arm, mode=2)
        guided = xarm6.HOME + np.array([0.3, -0.1, 0.2, 0.1, -0.2, 0.4])
        emulator.guide(guided)
        time.sleep(0.05)
        assert np.allclose(arm.angles[:6], guided, atol=1e-6)
    finally:
        arm.disconnect()


def test_in_process_emulator_and_its_cli_refusals():
    from conftest import free_loopback_address

    ip = free_loopback_address()
    with XArmEmulator(EmulatorConfig(ip=ip)) as emulator:
        arm = XArmAPI(ip, is_radian=True, report_type="real")
        assert arm.connected and arm.get_state() == (0, 4)
        arm.disconnect()
        with pytest.raises(OSError, match=f"cannot listen on {ip}:502"):  # the address is taken
            XArmEmulator(EmulatorConfig(ip=ip)).start()
        assert emulator.status()["error"] == 0
    for args, words in [(["--ip", ip, "--fault", "teleport"], "bad fault 'teleport'"),
                        (["--ip", "127.0.0.300"], "IPv4")]:
        result = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "xarm-emulator", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and words in result.stderr, result.stderr
