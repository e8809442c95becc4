"""Backends: the fake arm, the factory, and the xArm SDK backend against an in-process stand-in
for `XArmAPI` that fails the way a real controller does: codes 1 (uncleared controller error,
here C22/C23/C24/C31/C35), 9 (not ready), -1 (not connected), and a 190 ms blocking call."""

import threading
import time

import numpy as np
import pytest

from evo1_ros.robot import xarm6
from evo1_ros.robot.backend import BackendError
from evo1_ros.robot import backends
from evo1_ros.robot.backends import (BACKENDS, FakeBackend, XArmSdkBackend, describe_code, make_backend,
                                      register_backend)
from evo1_ros.runtime.safety import SafetyLimits
from evo1_ros.runtime.servo import ServoLoop
from xarm_standin import StandInXArmAPI


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def sdk_loop(clock=None, **api_kwargs):
    StandInXArmAPI.instances.clear()
    clock = clock or time.monotonic

    def api(*args, **kwargs):
        return StandInXArmAPI(*args, **kwargs, **api_kwargs)

    backend = XArmSdkBackend("192.168.1.185", api_class=api, clock=clock)
    return ServoLoop(backend, SafetyLimits(), 100.0, clock=clock), backend


def tick_for(loop, clock, seconds):
    for _ in range(int(round(seconds / loop.period))):
        clock.now += loop.period
        loop.tick()


def test_make_backend_names_and_registry(monkeypatch):
    assert isinstance(make_backend("fake"), FakeBackend)
    with pytest.raises(ValueError, match="fake"):
        make_backend("nonsense")
    monkeypatch.setattr(backends, "BACKENDS", dict(BACKENDS))  # registered for this test only
    register_backend("kinematic", "evo1_ros.robot.backends:FakeBackend")
    assert isinstance(make_backend("kinematic"), FakeBackend)


def test_fake_backend_follows_with_first_order_lag():
    clock = Clock()
    arm = FakeBackend(initial_positions=np.zeros(6), tau=0.05, clock=clock)
    arm.connect()
    arm.command(np.ones(6), 0.85)
    clock.now += 0.05
    state = arm.read_state()
    assert np.allclose(state.positions, 1 - np.exp(-1))
    assert state.gripper == pytest.approx(0.85 * (1 - np.exp(-1)))
    clock.now += 1.0
    assert np.allclose(arm.read_state().positions, 1.0, atol=1e-6)


def test_sdk_connect_brings_the_arm_up_in_servo_mode():
    loop, backend = sdk_loop()
    assert loop.connect()
    arm = StandInXArmAPI.instances[-1]
    assert arm.calls[:4] == ["clean_error", "motion_enable", "set_mode(1)", "set_state(0)"]
    assert (arm.mode, arm.state, arm.report_type) == (1, 0, "real")
    assert np.allclose(loop.status().state.positions, xarm6.HOME)
    assert loop.status().state.gripper == pytest.approx(0.0)  # 850 = open


def test_sdk_unreachable_controller_is_a_fault_not_a_crash():
    loop, backend = sdk_loop(reachable=False)
    assert not loop.connect()
    assert loop.status().fault_code == -1 and "cannot reach" in loop.status().fault
    loop.tick()  # nothing to command, nothing raised
    with pytest.raises(BackendError):
        loop.recover()


@pytest.mark.parametrize("controller_error, words", [
    (22, "self-collision"), (23, "joint angle exceeds its limit"), (24, "speed exceeds its limit"),
    (31, "collision"), (35, "safety boundary"),
])
def test_sdk_controller_error_stops_reports_and_recovers(controller_error, words):
    clock = Clock()
    loop, backend = sdk_loop(clock)
    assert loop.connect()
    arm = StandInXArmAPI.instances[-1]
    goal = np.append(xarm6.HOME + 0.3, 0.85)
    loop.submit([clock.now + 0.5], [goal])
    tick_for(loop, clock, 0.1)
    sent = len(arm.servo_targets)
    assert sent == 10

    arm.raise_controller_error(controller_error)
    tick_for(loop, clock, 0.2)
    status = loop.status()
    assert status.fault_code == 1
    assert f"C{controller_error}" in status.fault and words in status.fault
    assert "uncleared error" in status.fault
    assert arm.state == 4 and arm.calls.count("set_state(4)") == 1  # stopped once, not every tick
    assert len(arm.servo_targets) == sent  # nothing sent while faulted

    arm.calls.clear()
    loop.recover()
    assert arm.calls[:4] == ["clean_error", "motion_enable", "set_mode(1)", "set_state(0)"]
    assert loop.status().fault == ""
    tick_for(loop, clock, 0.05)
    assert np.allclose(arm.servo_targets[-1], arm.servo_targets[sent - 1])  # holds, no jump to goal
    loop.submit([clock.now + 0.5], [goal])
    tick_for(loop, clock, 0.1)
    assert len(arm.servo_targets) > sent + 10


def test_sdk_not_ready_and_disconnected_codes_are_reported_in_words():
    clock = Clock()
    loop, backend = sdk_loop(clock)
    assert loop.connect()
    arm = StandInXArmAPI.instances[-1]
    arm.state = 3  # paused from the teach pendant: servo calls now return 9
    tick_for(loop, clock, 0.05)
    assert loop.status().fault_code == 9 and "not ready" in loop.status().fault
    loop.recover()
    assert loop.status().fault == ""

    arm.connected = False  # cable pulled
    tick_for(loop, clock, 0.05)
    assert loop.status().fault_code == -1 and "not connected" in loop.status().fault
    with pytest.raises(BackendError, match="not connected"):
        loop.recover()
    arm.connected = True
    loop.recover()
    assert loop.status().fault == ""


def test_describe_code():
    assert describe_code(1, 23) == ("the controller has an uncleared error; "
                                    "controller error C23: joint angle exceeds its limit")
    assert "code 77" in describe_code(77)


def test_gripper_commands_are_rate_limited_round_trips():
    clock = Clock()
    loop, backend = sdk_loop(clock)
    assert loop.connect()
    arm = StandInXArmAPI.instances[-1]
    for _ in range(20):
        loop.submit([clock.now + 0.05], [np.append(xarm6.HOME, 0.85)])
        tick_for(loop, clock, 0.05)
    assert arm.calls.count("set_gripper_position") <= 11  # at most every 0.1 s, not 100 Hz
    assert arm.gripper_position == pytest.approx(xarm6.gripper_to_sdk(0.85))  # reached closed (0)


def test_sdk_190ms_blocking_call_keeps_the_loop_alive_and_within_bounds():
    """Real thread, real time: one set_servo_angle_j blocks 190 ms. The loop reports the overrun,
    keeps running, and the commands around the gap still respect the per-tick bounds."""
    loop, backend = sdk_loop()
    assert loop.connect()
    arm = StandInXArmAPI.instances[-1]
    feeding = threading.Event()
    feeding.set()

    def publisher():  # a policy re-sending a far target at 50 Hz
        while feeding.is_set():
            loop.submit([loop.clock() + 0.2], [np.append(xarm6.HOME + 1.0, 0.0)])
            time.sleep(0.02)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    loop.start()
    time.sleep(0.3)
    arm.block_next_servo_s = 0.19
    time.sleep(0.5)
    feeding.clear()
    thread.join()
    loop.shutdown()
    status = loop.status()
    assert status.fault == ""
    assert status.overruns >= 1 and status.max_tick_s >= 0.18
    assert len(arm.servo_targets) > 40  # ~80 expected in 0.8 s at 100 Hz minus the block
    q = np.array(arm.servo_targets)
    limits = SafetyLimits()
    assert np.abs(np.diff(q, axis=0)).max() <= limits.max_velocity * loop.period + 1e-9
    assert arm.state == 4  # shutdown stopped the arm
