"""Safety filter, trajectory interpolation and the servo loop, ROS-free, on a manual clock.

The loop is ticked by hand so every assertion is exact; the threaded timing is covered by
test_driver_node.py and benchmarks/control_loop.py.
"""

import math
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo1_ros.robot import xarm6
from evo1_ros.robot.backend import BackendError, DriverBackend
from evo1_ros.robot.backends import FakeBackend
from evo1_ros.runtime.safety import SafetyFilter, SafetyLimits, TrajectoryRejected, braking_velocity
from evo1_ros.runtime.servo import ServoLoop
from evo1_ros.runtime.trajectory import TrajectoryInterpolator

TOL = 1e-9


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class RecordingBackend(FakeBackend):
    """The fake arm, plus a log of every command it was sent."""

    def __init__(self, clock, initial_positions=xarm6.HOME):
        super().__init__(initial_positions=initial_positions, clock=clock)
        self.commands = []

    def command(self, positions, gripper):
        self.commands.append(np.append(positions, gripper))
        super().command(positions, gripper)


def make_loop(limits=SafetyLimits(), rate_hz=100.0, start=xarm6.HOME):
    clock = Clock()
    backend = RecordingBackend(clock, start)
    loop = ServoLoop(backend, limits, rate_hz, clock=clock)
    assert loop.connect()
    loop.activate()
    return loop, backend, clock


def run(loop, clock, seconds):
    for _ in range(int(round(seconds / loop.period))):
        clock.now += loop.period
        loop.tick()


def assert_within_bounds(commands, start, limits, dt):
    """Position limits, velocity and acceleration bounds over a command log that starts at rest."""
    q = np.vstack([start, start, np.asarray(commands)[:, :6]])
    g = np.asarray(commands)[:, 6]
    assert (q >= limits.lower - TOL).all() and (q <= limits.upper + TOL).all()
    velocity = np.diff(q, axis=0) / dt
    assert np.abs(velocity).max() <= limits.max_velocity + 1e-6
    assert np.abs(np.diff(velocity, axis=0)).max() / dt <= limits.max_acceleration * (1 + 1e-6)
    assert (g >= 0).all() and (g <= xarm6.GRIPPER_CLOSED).all()
    assert np.abs(np.diff(g)).max(initial=0) <= limits.gripper_max_velocity * dt + TOL


# What a broken or hostile publisher could send: points anywhere (far outside the limits, huge
# jumps), stamps in the past, equal or reversed, and now and then a NaN or inf somewhere.
value = st.one_of(st.floats(-4.0, 4.0), st.sampled_from([1e6, -1e6, 1e300, -1e300]))
wild_trajectory = st.tuples(
    st.integers(0, 40),  # ticks before it arrives
    st.lists(st.floats(-0.5, 1.0), min_size=1, max_size=6, unique=True),  # time offsets
    st.booleans(),  # sort the offsets (else they come as drawn: often reversed)
    st.lists(st.lists(value, min_size=7, max_size=7), min_size=6, max_size=6),
    st.one_of(st.none(), st.tuples(st.integers(0, 41), st.sampled_from([math.nan, math.inf, -math.inf]))),
)


@settings(max_examples=120, deadline=None)
@given(
    events=st.lists(wild_trajectory, min_size=1, max_size=8),
    start_fraction=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    rate_hz=st.sampled_from([100.0, 250.0]),
    max_velocity=st.floats(0.2, xarm6.URDF_MAX_VELOCITY),
    max_acceleration=st.floats(1.0, 40.0),
    estop_at=st.one_of(st.none(), st.integers(0, 7)),
)
def test_every_command_is_within_limits_for_any_trajectory(events, start_fraction, rate_hz, max_velocity,
                                                            max_acceleration, estop_at):
    limits = SafetyLimits(max_velocity=max_velocity, max_acceleration=max_acceleration)
    start = limits.lower + np.array(start_fraction) * (limits.upper - limits.lower)
    loop, backend, clock = make_loop(limits, rate_hz, start)
    for i, (wait_ticks, offsets, ordered, points, corruption) in enumerate(events):
        run(loop, clock, wait_ticks * loop.period)
        if i == estop_at:
            loop.emergency_stop()
        points = np.array(points[: len(offsets)])
        if corruption is not None:
            points.flat[corruption[0] % points.size] = corruption[1]
        try:
            loop.submit(clock.now + np.array(sorted(offsets) if ordered else offsets), points)
        except TrajectoryRejected:
            pass
    run(loop, clock, 0.5)
    assert_within_bounds(backend.commands, start, limits, loop.period)


def test_feasible_trajectory_is_followed_exactly():
    """The bounds must not come from a filter that never moves: a slow trajectory is tracked."""
    loop, backend, clock = make_loop()
    goal = np.append(xarm6.HOME + np.array([0.3, -0.2, 0.1, 0.4, -0.3, 0.2]), 0.5)
    ramp = np.linspace(0.05, 1.0, 20)
    times = clock.now + np.append(ramp, 2.0)  # ends with a hold at the goal
    points = xarm6.HOME + (goal[:6] - xarm6.HOME) * np.append(ramp, 1.0)[:, None]
    points = np.hstack([points, np.full((21, 1), 0.5)])
    for _ in range(15):  # a publisher re-sending the remaining window keeps the watchdog fed
        loop.submit(times, points)
        run(loop, clock, 0.1)
    assert np.allclose(backend.commands[-1], goal, atol=1e-9)
    assert_within_bounds(backend.commands, xarm6.HOME, SafetyLimits(), loop.period)


def test_target_beyond_the_limit_stops_at_the_margin_without_overshoot():
    limits = SafetyLimits(joint_limit_margin=0.1)
    loop, backend, clock = make_loop(limits)
    far = np.append(xarm6.HOME, 0.0)
    far[2] = 50.0  # joint3 upper limit is 0.192
    for _ in range(40):  # 2 s: 0.64 rad at the first-motion speed takes 1.2 s
        loop.submit([clock.now + 0.01], [far])
        run(loop, clock, 0.05)
    joint3 = np.array(backend.commands)[:, 2]
    assert joint3.max() <= xarm6.JOINT_UPPER[2] - 0.1 + TOL
    assert joint3[-1] == pytest.approx(xarm6.JOINT_UPPER[2] - 0.1, abs=1e-9)


def test_braking_velocity_stops_exactly_within_the_distance():
    a, dt = 10.0, 0.01
    for distance in np.linspace(0.0, 2.0, 401):
        v = float(braking_velocity(np.array(distance), a, dt))
        covered = 0.0
        while v > 0:
            covered += v * dt
            v -= a * dt
        assert covered <= distance + 1e-12


def test_watchdog_decelerates_within_100_ms_of_the_last_trajectory():
    loop, backend, clock = make_loop()  # watchdog_s defaults to 0.1
    far = np.append(xarm6.HOME + 2.5, 0.0)  # out of reach: the arm moves at full speed
    for _ in range(6):
        loop.submit([clock.now + 0.2], [far])
        run(loop, clock, 0.05)
    last_trajectory = clock.now
    loop.submit([clock.now + 0.2], [far])
    ticks_before = len(backend.commands)
    run(loop, clock, 0.6)
    q = np.array(backend.commands)[ticks_before - 2:, :6]
    speed = np.abs(np.diff(q, axis=0)).max(axis=1) / loop.period  # per tick, fastest joint
    assert speed[0] > 0.5  # it was moving when the trajectories stopped coming
    deadline_tick = 1 + math.ceil(0.1 / loop.period)  # 100 ms after the last trajectory, + 1 tick
    assert speed[deadline_tick] < speed[0] - 0.5 * SafetyLimits().max_acceleration * loop.period
    assert (np.diff(speed[deadline_tick:]) <= TOL).all(), "not decelerating after the watchdog"
    stop_time = 0.1 + speed[0] / SafetyLimits().max_acceleration + 2 * loop.period
    at_rest = speed[int(stop_time / loop.period) + 1:]
    assert (at_rest == 0).all(), "still moving after the watchdog's braking time"
    assert "no fresh trajectory" in loop.status().stopping_reason
    assert clock.now - last_trajectory > 0.5


def test_emergency_stop_latches_and_survives_new_trajectories():
    loop, backend, clock = make_loop()
    moving = np.append(xarm6.HOME + 0.8, 0.4)
    loop.submit([clock.now + 1.0], [moving])
    run(loop, clock, 0.3)
    loop.emergency_stop()
    for _ in range(30):  # the policy keeps publishing
        with pytest.raises(TrajectoryRejected, match="emergency stop"):
            loop.submit([clock.now + 0.2], [moving])
        run(loop, clock, 0.03)
    tail = np.array(backend.commands[-50:])
    assert np.ptp(tail, axis=0).max() == 0.0, "arm still moving under a latched e-stop"
    assert loop.status().estopped
    held = tail[-1].copy()

    loop.reset()  # released, but nothing to follow until a new trajectory arrives
    run(loop, clock, 0.2)
    assert np.array_equal(backend.commands[-1], held)
    loop.submit([clock.now + 0.5], [moving])
    run(loop, clock, 0.2)
    assert np.abs(backend.commands[-1] - held).max() > 0.05


def test_non_finite_and_stale_trajectories_are_refused_and_hold():
    loop, backend, clock = make_loop()
    here = np.append(xarm6.HOME, 0.0)
    with pytest.raises(TrajectoryRejected, match="NaN or inf"):
        loop.submit([clock.now + 0.1, clock.now + 0.2], [here, np.full(7, math.nan)])
    with pytest.raises(TrajectoryRejected, match="stale"):
        loop.submit([clock.now - 0.2, clock.now - 0.1], [here + 1, here + 1])
    with pytest.raises(TrajectoryRejected, match="increasing"):
        loop.submit([clock.now + 0.2, clock.now + 0.1], [here, here])
    run(loop, clock, 0.2)
    assert np.allclose(np.array(backend.commands), here)
    assert "NaN" not in loop.status().rejected and "increasing" in loop.status().rejected


def test_stale_points_are_dropped_not_chased():
    loop, backend, clock = make_loop()
    here = np.append(xarm6.HOME, 0.0)
    # The oldest point is far away; the segment spanning "now" is what counts.
    loop.submit(clock.now + np.array([-0.3, -0.1, 0.2]), [here + 1.0, here, here])
    run(loop, clock, 0.2)
    assert np.allclose(np.array(backend.commands), here)


def test_filter_step_holds_on_a_non_finite_target():
    limits = SafetyLimits()
    safety = SafetyFilter(limits, 0.01)
    safety.sync(xarm6.HOME, 0.0)
    safety.feed_watchdog(0.0)
    moving = np.append(xarm6.HOME + 1.0, 0.0)
    for _ in range(10):
        safety.step(moving, now=0.0)
    v_before = safety.velocities.copy()
    safety.step(np.full(7, math.nan), now=0.0)
    assert safety.stopping_reason == "non-finite target"
    assert (np.abs(safety.velocities) < np.abs(v_before)).all()


def test_interpolator_starts_from_current_and_holds_the_last_point():
    interp = TrajectoryInterpolator()
    assert interp.sample(0.0) is None
    interp.set(np.array([1.0, 2.0]), np.array([[1.0] * 7, [3.0] * 7]), now=0.0, current=np.zeros(7))
    assert np.allclose(interp.sample(0.5), 0.5)
    assert np.allclose(interp.sample(1.5), 2.0)
    assert np.allclose(interp.sample(9.0), 3.0)


def test_limits_are_validated():
    with pytest.raises(ValueError):
        SafetyLimits(max_velocity=5.0)  # above the URDF limit
    with pytest.raises(ValueError):
        SafetyLimits(joint_limit_margin=-0.1)
    with pytest.raises(ValueError):
        ServoLoop(FakeBackend(), rate_hz=500.0)


def test_core_imports_without_rclpy():
    """The filter, the loop and the backends are usable on a machine without ROS."""
    blocked = "import sys; sys.modules['rclpy'] = None; "  # any `import rclpy` now raises ImportError
    code = blocked + "import evo1_ros.runtime.servo, evo1_ros.robot.backends; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_trajectories_planned_before_a_reset_or_recover_are_refused():
    """A window in flight across a sim reset must not drag the arm back to the old plan."""
    loop, backend, clock = make_loop()
    goal = np.append(xarm6.HOME + 0.3, 0.0)
    planned = clock.now
    run(loop, clock, 0.05)
    loop.reset()
    with pytest.raises(TrajectoryRejected, match="before the last reset"):
        loop.submit([clock.now + 0.5], [goal], stamp=planned)
    run(loop, clock, 0.05)
    loop.recover()
    with pytest.raises(TrajectoryRejected, match="before the last reset"):
        loop.submit([clock.now + 0.5], [goal], stamp=clock.now - 0.01)
    loop.submit([clock.now + 0.5], [goal], stamp=clock.now)  # planned after: followed
    run(loop, clock, 0.3)
    assert np.abs(backend.commands[-1][:6] - xarm6.HOME).max() > 0.02  # moving until the watchdog


def command_speeds(commands, dt):
    """Fastest joint's speed per tick over a command log."""
    return np.abs(np.diff(np.array(commands)[:, :6], axis=0)).max(axis=1) / dt


def test_first_motion_to_a_far_target_is_no_faster_than_the_reduced_limit():
    """After activation, reset (e-stop), resume (after the watchdog) and recover, the arm ramps to
    its first target at first_motion_scale * max_velocity until within the tolerance of it."""
    limits = SafetyLimits()
    slow = limits.first_motion_scale * limits.max_velocity
    loop, backend, clock = make_loop(limits)
    goal = np.append(xarm6.HOME + np.array([1.0, 0, 0, 0, 0, 0]), 0.0)  # 1 rad away

    def reach(restart):
        restart()
        log = [loop.status().command]
        began = clock.now
        while np.abs(log[-1][:6] - goal[:6]).max() > limits.first_motion_tolerance:
            start = len(backend.commands)
            loop.submit([clock.now + 0.05], [goal])  # a policy that asks for it at once, again and again
            run(loop, clock, 0.03)
            log += backend.commands[start:]
            assert clock.now - began < 10.0
        speeds = command_speeds(log, loop.period)
        assert speeds.max() <= slow + 1e-9 and speeds.max() > 0.9 * slow
        assert clock.now - began >= (1.0 - limits.first_motion_tolerance) / slow

    def back_home():  # not a first motion: full speed once the first one is over
        start = len(backend.commands)
        for _ in range(40):
            loop.submit([clock.now + 0.05], [np.append(xarm6.HOME, 0.0)])
            run(loop, clock, 0.03)
        assert command_speeds(backend.commands[start - 1:], loop.period).max() > 0.9 * limits.max_velocity

    reach(lambda: None)  # activated by make_loop
    back_home()
    reach(lambda: run(loop, clock, 1.5))  # resume after the watchdog held the arm (a pause, not a chunk seam)
    back_home()
    reach(lambda: (loop.emergency_stop(), run(loop, clock, 0.3), loop.reset()))
    back_home()
    reach(loop.recover)


def test_a_trajectory_that_goes_on_from_where_the_arm_stands_is_no_first_motion():
    """A policy that pauses at a chunk seam (the watchdog holds the arm briefly) and goes on is
    followed at full speed: a slow first motion could never catch up with it."""
    limits = SafetyLimits()
    loop, backend, clock = make_loop(limits)
    start_pose = np.append(xarm6.HOME, 0.0)
    for _ in range(20):  # at rest at HOME, past the activation
        loop.submit([clock.now + 0.05], [start_pose])
        run(loop, clock, 0.03)
    run(loop, clock, 0.5)  # the watchdog holds the arm
    assert loop.status().stopping_reason
    speed = 1.5  # rad/s on joint 1: far above first_motion_scale * max_velocity
    began, first = clock.now, len(backend.commands)
    for _ in range(20):  # a trajectory from where the arm stands, moving on at `speed`
        times = clock.now + np.arange(1, 6) * 0.05
        points = np.tile(start_pose, (5, 1))
        points[:, 0] += speed * (times - began)
        loop.submit(times, points)
        run(loop, clock, 0.03)
    speeds = command_speeds(backend.commands[first:], loop.period)
    assert speeds[-5:].min() > limits.first_motion_scale * limits.max_velocity * 2
    # behind only by what accelerating from rest costs (~0.1 rad); a first motion would trail by ~0.6
    assert abs(backend.commands[-1][0] - (start_pose[0] + speed * (clock.now - began))) < 0.2


def test_new_limits_take_effect_on_the_running_loop():
    loop, backend, clock = make_loop()
    far = np.append(xarm6.HOME + np.array([2.5, 0, 0, 0, 0, 0]), 0.0)
    for _ in range(60):  # past the first motion, at full speed
        loop.submit([clock.now + 0.05], [far if len(backend.commands) > 100 else np.append(xarm6.HOME + 0.01, 0)])
        run(loop, clock, 0.03)
    assert command_speeds(backend.commands[-5:], loop.period).min() > 2.0
    loop.set_limits(SafetyLimits(max_velocity=0.5))
    start = len(backend.commands)
    for _ in range(20):
        loop.submit([clock.now + 0.05], [far])
        run(loop, clock, 0.03)
    speeds = command_speeds(backend.commands[start - 1:], loop.period)
    assert (np.diff(speeds[:10]) < 0).all()  # braking to the new limit at max_acceleration
    assert speeds[-20:].max() <= 0.5 + 1e-9 and loop.limits.max_velocity == 0.5


def test_inactive_loop_refuses_trajectories_and_holds():
    loop, backend, clock = make_loop()
    goal = np.append(xarm6.HOME + 0.5, 0.0)
    for _ in range(10):
        loop.submit([clock.now + 0.2], [goal])
        run(loop, clock, 0.03)
    loop.deactivate()
    with pytest.raises(TrajectoryRejected, match="not active"):
        loop.submit([clock.now + 0.2], [goal])
    run(loop, clock, 0.5)
    assert np.ptp(np.array(backend.commands[-10:]), axis=0).max() == 0.0  # at rest, held
    assert "inactive" in loop.status().stopping_reason and not loop.status().active
    loop.activate()
    loop.submit([clock.now + 0.2], [goal])
    run(loop, clock, 0.1)
    assert np.abs(backend.commands[-1] - backend.commands[-10]).max() > 0


def test_teaching_commands_no_joint_and_holds_where_the_arm_was_put():
    loop, backend, clock = make_loop()
    loop.set_teaching(True)
    sent = len(backend.commands)
    guided = xarm6.HOME + np.array([0.4, -0.2, 0.1, 0.3, -0.1, 0.2])
    backend.guide(guided)
    run(loop, clock, 0.2)
    assert len(backend.commands) == sent and np.allclose(loop.status().state.positions, guided)
    loop.set_teaching(False)
    run(loop, clock, 0.2)
    assert np.allclose(np.array(backend.commands[sent:])[:, :6], guided)  # holds there, no jump back


def test_teaching_follows_only_the_gripper_through_the_filter():
    """While the arm is hand-guided a trajectory moves the gripper alone: within its range, at most
    gripper_max_velocity, stopped by the watchdog and the e-stop like any command."""
    limits = SafetyLimits()
    loop, backend, clock = make_loop(limits)
    grips = []
    backend.command_gripper = lambda g: (grips.append(g), FakeBackend.command_gripper(backend, g))
    loop.set_teaching(True)
    sent = len(backend.commands)
    backend.guide(xarm6.HOME + 0.2)
    loop.submit([clock.now + 0.5, clock.now + 1.0], [np.append(xarm6.HOME + 0.3, 0.6), np.append(xarm6.HOME, 2.0)])
    for _ in range(25):
        run(loop, clock, 0.04)
        loop.submit([clock.now + 0.01], [np.append(xarm6.HOME, 2.0)])  # keeps the watchdog fed
    assert len(backend.commands) == sent  # not one joint command
    assert np.allclose(loop.status().state.positions, xarm6.HOME + 0.2)  # where the hand put it
    assert max(np.diff([0.0, *grips])) <= limits.gripper_max_velocity * loop.period + 1e-12
    assert grips[-1] == pytest.approx(xarm6.GRIPPER_CLOSED)  # 2.0 asked for: clipped to the range
    run(loop, clock, limits.watchdog_s + 0.02)  # no fresh trajectory: the watchdog stops the gripper commands
    count = len(grips)
    run(loop, clock, 0.3)
    assert len(grips) == count
    loop.submit([clock.now + 0.2], [np.append(xarm6.HOME, 0.0)])
    run(loop, clock, 0.05)
    assert len(grips) > count
    count = len(grips)
    loop.emergency_stop()
    with pytest.raises(TrajectoryRejected, match="emergency stop"):
        loop.submit([clock.now + 0.2], [np.append(xarm6.HOME, 0.0)])
    run(loop, clock, 0.2)
    assert len(grips) == count


def test_a_backend_without_teaching_mode_refuses_it():
    class NoTeaching(RecordingBackend):
        set_teaching = DriverBackend.set_teaching

    clock = Clock()
    loop = ServoLoop(NoTeaching(clock), clock=clock)
    assert loop.connect()
    with pytest.raises(BackendError, match="fake backend has no teaching mode"):
        loop.set_teaching(True)
    assert not loop.status().teaching


def test_a_dying_servo_thread_stops_the_arm_and_says_why():
    class Recording(FakeBackend):
        stops = 0

        def stop(self):
            Recording.stops += 1
            super().stop()

    deaths = []
    ticks = []

    def on_state(state):
        ticks.append(state)
        if len(ticks) == 20:
            raise ZeroDivisionError("a bug")

    loop = ServoLoop(Recording(), on_state=on_state, on_death=deaths.append, realtime_priority=0)
    assert loop.connect()
    loop.start()
    loop.activate()
    deadline = time.monotonic() + 5.0
    while not deaths and time.monotonic() < deadline:
        time.sleep(0.01)
    status = loop.status()
    assert deaths == [status.fault] and status.fault == "servo thread died: ZeroDivisionError: a bug"
    assert not status.alive and Recording.stops == 1 and "ZeroDivisionError" in loop.death_details
    time.sleep(0.1)
    assert len(ticks) == 20  # and it really stopped
