"""Backends: the fake arm, the factory, and the xarm_sdk backend proven end to end: the driver's
servo loop (own thread, real time) through the unmodified PyPI XArmAPI to the xArm controller
emulator in a process of its own, each test on an address of its own. Bring-up, streaming at 100
and 250 Hz, every injected fault ending in a stopped arm, recovery, warnings, a stalled reply,
a slow gripper, teaching mode."""

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

pytest.importorskip("xarm.wrapper")
LIMITS = SafetyLimits()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


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
    assert np.allclose(state.velocities[:6], np.exp(-1) / 0.05)  # the lag's own velocity
    clock.now += 1.0
    assert np.allclose(arm.read_state().positions, 1.0, atol=1e-6)


def test_describe_code():
    assert describe_code(1, 23) == ("the controller has an uncleared error; "
                                    "controller error C23: joint angle exceeds its limit")
    assert "code 77" in describe_code(77)


# --- xarm_sdk against the emulator -------------------------------------------------------------


class Feeder:
    """A policy re-sending a one-point trajectory to `target` at 30 Hz, as the inference node does."""

    def __init__(self, loop, target, ahead=0.2):
        self.loop, self.target, self.ahead = loop, np.asarray(target, dtype=float), ahead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(1 / 30):
            try:
                self.loop.submit([self.loop.clock() + self.ahead], [self.target])
            except Exception:  # refused while faulted: the policy does not know
                pass

    def stop(self):
        self._stop.set()
        self._thread.join()


def sdk_loop(emulator, rate_hz=100.0):
    loop = ServoLoop(XArmSdkBackend(emulator.config.ip), LIMITS, rate_hz)
    assert loop.connect(), loop.status().fault
    loop.start()
    loop.activate()
    return loop


@pytest.fixture
def loops():
    made = []
    yield made
    for loop in made:
        loop.shutdown()


def wait_for(condition, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_targets_within_limits(targets, period):
    """What the controller accepted: inside the margins, steps within max_velocity * period."""
    q = np.array([t[1:] for t in targets])
    assert (q >= LIMITS.lower - 1e-6).all() and (q <= LIMITS.upper + 1e-6).all()
    assert np.abs(np.diff(q, axis=0)).max(initial=0.0) <= LIMITS.max_velocity * period + 1e-6


def test_sdk_bring_up(xarm_emulator, loops):
    emulator = xarm_emulator()
    loops.append(loop := sdk_loop(emulator))
    status = emulator.status()
    assert (status["mode"], status["state"], status["motors_enabled"], status["error"]) == (1, 2, True, 0)
    assert status["connections"] == 3  # servo commands, its report stream, the gripper/status link
    state = loop.status().state
    assert np.allclose(state.positions, xarm6.HOME, atol=1e-6) and state.gripper == pytest.approx(0.0)
    assert time.monotonic() - state.stamp < 0.1 and np.allclose(state.velocities, 0.0)


def test_sdk_unreachable_controller_is_a_fault_not_a_crash():
    from conftest import free_loopback_address

    loop = ServoLoop(XArmSdkBackend(free_loopback_address()), LIMITS)  # nobody listens there
    assert not loop.connect()
    assert loop.status().fault_code == -1 and "cannot reach" in loop.status().fault
    loop.tick()  # nothing to command, nothing raised
    with pytest.raises(BackendError, match="cannot reach"):
        loop.recover()


@pytest.mark.parametrize("rate_hz", [100.0, 250.0])
def test_sdk_streams_at_the_servo_rate_and_the_arm_follows(xarm_emulator, loops, rate_hz):
    emulator = xarm_emulator(report_hz=rate_hz)
    loops.append(loop := sdk_loop(emulator, rate_hz))
    goal = np.append(xarm6.HOME + np.array([0.4, 0.2, -0.3, 0.5, -0.2, 0.3]), 0.6)
    feeder = Feeder(loop, goal)
    try:
        wait_for(lambda: np.abs(loop.status().state.positions - goal[:6]).max() < 0.01, 10.0, "the goal")
    finally:
        feeder.stop()
    targets = emulator.servo_targets()
    period = 1.0 / rate_hz
    times = np.array([t[0] for t in targets])
    assert np.median(np.diff(times)) == pytest.approx(period, rel=0.15)
    assert_targets_within_limits(targets, period)
    status = emulator.status()
    assert status["error"] == 0 and np.allclose(status["joints"], goal[:6], atol=0.01)
    # the gripper is measured too (read through the RS-485 pass-through at 10 Hz)
    wait_for(lambda: abs(loop.status().state.gripper - 0.6) < 0.01, 5.0, "the gripper")
    assert abs(emulator.status()["gripper"] - xarm6.gripper_to_sdk(0.6)) < 10


FAULTS = {  # injected fault: what the driver says about it
    "C22": "C22: self-collision detected",
    "C23": "C23: joint angle exceeds its limit",
    "C24": "C24: speed exceeds its limit",
    "C31": "C31: collision caused abnormal current",
    "C35": "C35: safety boundary limit",
    "close-socket": "",  # the SDK sees a timeout or the closed socket, whichever comes first
    "freeze-report": "the report stream is silent",
    "gripper-lost": "gripper/status connection: ",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_stops_the_arm_and_recover_resumes(xarm_emulator, loops, fault):
    emulator = xarm_emulator()
    loops.append(loop := sdk_loop(emulator))
    far = np.append(xarm6.HOME + np.array([0.8, 0.3, -0.4, 0.8, 0.4, 0.8]), 0.0)
    feeder = Feeder(loop, far)
    try:
        wait_for(lambda: np.abs(np.array(emulator.status()["velocities"])).max() > 1.0, 5.0, "the arm moving")
        if fault == "gripper-lost":
            feeder.target = far.copy()
            feeder.target[6] = 0.8  # a gripper command that gets no answer
        emulator.inject(fault)
        wait_for(lambda: loop.status().fault, 5.0, "the fault")
        status = loop.status()
        assert FAULTS[fault] in status.fault
        if fault == "close-socket":
            assert "lost the connection" in status.fault or "did not answer in time" in status.fault
        time.sleep(0.2)
        # stopped within one servo period of the fault being visible: nothing accepted later
        targets = emulator.servo_targets()
        assert targets[-1][0] <= status.fault_time + loop.period
        first = emulator.status()
        time.sleep(0.1)
        assert np.allclose(emulator.status()["joints"], first["joints"], atol=1e-9)  # at rest
        assert np.abs(first["velocities"]).max() == 0.0
        if fault.startswith("C"):
            assert (first["error"], first["mode"], first["state"]) == (int(fault[1:]), 0, 4)

        emulator.clear_faults()
        loop.recover()
        assert loop.status().fault == ""
        wait_for(lambda: np.abs(loop.status().state.positions - far[:6]).max() < 0.01, 10.0, "the goal after recover")
    finally:
        feeder.stop()
    after = [t for t in emulator.servo_targets() if t[0] > status.fault_time]
    assert len(after) > 50
    assert_targets_within_limits(after, loop.period)
    assert emulator.status()["error"] == 0


def test_a_warning_is_reported_and_the_arm_keeps_moving(xarm_emulator, loops):
    emulator = xarm_emulator()
    loops.append(loop := sdk_loop(emulator))
    goal = np.append(xarm6.HOME + 0.3, 0.0)
    feeder = Feeder(loop, goal)
    try:
        emulator.inject("W11")
        wait_for(lambda: loop.status().state.warning_words, 2.0, "the warning")
        assert loop.status().state.warning_words == "controller warning W11: the controller's command buffer is full"
        wait_for(lambda: np.abs(loop.status().state.positions - goal[:6]).max() < 0.01, 10.0, "the goal")
    finally:
        feeder.stop()
    assert loop.status().fault == ""


def test_a_stalled_servo_reply_is_survived_and_the_arm_resumes_from_rest(xarm_emulator, loops):
    """One set_servo_angle_j reply comes 190 ms late: the tick overruns, the arm stands at the last
    target meanwhile, and the stream resumes from rest within the acceleration bound."""
    emulator = xarm_emulator()
    loops.append(loop := sdk_loop(emulator))
    feeder = Feeder(loop, np.append(xarm6.HOME + 0.01, 0.0))  # a first motion, then full speed
    try:
        wait_for(lambda: np.abs(loop.status().state.positions - xarm6.HOME - 0.01).max() < 0.005, 5.0, "the start")
        feeder.target = np.append(xarm6.HOME + 1.5, 0.0)
        wait_for(lambda: np.abs(np.diff([t[1:] for t in emulator.servo_targets()[-2:]], axis=0)).max() > 0.015,
                 5.0, "full speed")
        injected = len(emulator.servo_targets())
        emulator.inject("servo-reply-delay:0.19")
        wait_for(lambda: loop.status().max_tick_s > 0.18, 3.0, "the stall")
        time.sleep(0.3)
    finally:
        feeder.stop()
    status = loop.status()
    assert status.fault == "" and status.overruns >= 1
    targets = emulator.servo_targets()
    times = np.array([t[0] for t in targets])
    # the stall is the first long gap after the fault went in (a loaded machine can add others before)
    gap = injected - 1 + int(np.argmax(np.diff(times[injected - 1:]) > 0.18))
    assert np.diff(times)[gap] > 0.18
    q = np.array([t[1:] for t in targets])
    before = np.abs(q[gap] - q[gap - 1]).max()
    after = np.abs(np.diff(q[gap:gap + 6], axis=0)).max(axis=1)
    dv = LIMITS.max_acceleration * loop.period * loop.period  # one tick's speed change, as a step
    assert before > 10 * dv  # it was moving fast
    assert after[0] <= dv + 1e-6 and (np.diff(after) <= dv + 1e-6).all()  # from rest, accelerating
    assert_targets_within_limits(targets, loop.period)


def test_a_slow_gripper_never_holds_up_the_servo_stream(xarm_emulator, loops):
    emulator = xarm_emulator(gripper_latency_s=0.01, faults=("gripper-delay:0.08",))  # 90 ms a round trip
    loops.append(loop := sdk_loop(emulator))
    feeder = Feeder(loop, np.append(xarm6.HOME, 0.85))
    start = len(emulator.servo_targets())
    t0 = time.monotonic()
    try:
        for k in range(8):  # open, close, ... every 0.25 s
            feeder.target = np.append(xarm6.HOME + 0.1 * (k % 2), 0.85 * (k % 2))
            time.sleep(0.25)
    finally:
        feeder.stop()
    elapsed = time.monotonic() - t0
    accepted = len(emulator.servo_targets()) - start
    assert accepted >= 0.7 * 100 * elapsed  # not ~11/s, as it would be with a 90 ms gripper call per tick
    diagnostics = loop.backend_diagnostics()
    assert float(diagnostics["gripper_round_trip_max_ms"]) >= 85
    # a gripper call on the servo thread would leave a >= 85 ms hole in the stream at each of the 8 changes;
    # a loaded machine may add a stray one or two
    times = np.array([t[0] for t in emulator.servo_targets()[start:]])
    assert np.count_nonzero(np.diff(times) >= 0.085) <= 2 and loop.status().fault == ""


def test_teaching_mode_through_the_sdk(xarm_emulator, loops):
    emulator = xarm_emulator()
    loops.append(loop := sdk_loop(emulator))
    loop.set_teaching(True)
    assert (emulator.status()["mode"], emulator.status()["state"]) == (2, 2)
    sent = len(emulator.servo_targets())
    guided = xarm6.HOME + np.array([0.3, -0.2, 0.1, 0.4, -0.3, 0.2])
    emulator.guide(guided)
    wait_for(lambda: np.allclose(loop.status().state.positions, guided, atol=1e-5), 2.0, "the guided pose")
    time.sleep(0.2)
    assert len(emulator.servo_targets()) == sent  # nothing commanded while the arm is moved by hand
    loop.set_teaching(False)
    assert emulator.status()["mode"] == 1
    time.sleep(0.2)
    held = np.array([t[1:] for t in emulator.servo_targets()[sent:]])
    assert len(held) > 10 and np.allclose(held, guided, atol=1e-5)  # holds where it was put
