"""Xarm6DriverNode over real rclpy/DDS: trajectories in, /joint_states out at the servo rate
(stamped with the measurement time, with velocities), watchdog, latched e-stop, lifecycle
transitions, safety parameters set at run time or refused, teaching mode, a dying servo thread,
and the xarm_sdk backend's faults on the xArm controller emulator reported in diagnostics and the
log without taking the node down.

Timing bounds here are generous on purpose (2 loaded CI cores); the exact ones are asserted on a
manual clock in test_safety.py."""

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from evo1_ros.nodes.driver import start_driver  # noqa: E402
from evo1_ros.nodes.messages import stamp_seconds, to_duration  # noqa: E402
from evo1_ros.robot import xarm6  # noqa: E402
from evo1_ros.robot.backend import DriverBackend, RobotState  # noqa: E402
from evo1_ros.robot.backends import FakeBackend  # noqa: E402
from evo1_ros.runtime.safety import SafetyLimits  # noqa: E402

pytestmark = pytest.mark.ros
NAMES = list(xarm6.JOINT_STATE_NAMES)


class RecordingFakeBackend(FakeBackend):
    """The fake arm, plus a log of (time, command) as the servo loop sends them."""

    def __init__(self):
        super().__init__()
        self.commands = []

    def command(self, positions, gripper):
        self.commands.append((time.monotonic(), np.append(positions, gripper)))
        super().command(positions, gripper)


class Rig:
    """A driver node (made by start_driver) and a test node that publishes trajectories, calls the
    driver's services and records its output."""

    def __init__(self, tag, arm, **params):
        """arm: the backend object (None: the `backend` parameter makes one)."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        params = dict(trajectory_topic=f"/{tag}/trajectory", joint_states_topic=f"/{tag}/joint_states", **params)
        self.driver = start_driver(backend=arm, context=self.context, namespace=f"/{tag}",
                                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.io = rclpy.create_node("driver_test_io", context=self.context)
        self.trajectory_pub = self.io.create_publisher(JointTrajectory, f"/{tag}/trajectory", 10)
        self.joint_states, self.diagnostics = [], []
        self.io.create_subscription(JointState, f"/{tag}/joint_states", self._on_joint_state, 1000)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        service = f"/{tag}/xarm6_driver"
        self.clients = {name: self.io.create_client(Trigger, f"{service}/{name}")
                        for name in ("emergency_stop", "reset", "recover")}
        self.clients["set_teaching"] = self.io.create_client(SetBool, f"{service}/set_teaching")
        self.clients["change_state"] = self.io.create_client(ChangeState, f"{service}/change_state")
        self.clients["get_state"] = self.io.create_client(GetState, f"{service}/get_state")
        self.clients["set_parameters"] = self.io.create_client(SetParameters, f"{service}/set_parameters")
        self.received = []  # (ROS time when each joint state arrived, its stamp)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.driver)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert self.wait_for(lambda: self.io.count_subscribers(f"/{tag}/trajectory") >= 1, 5.0)
        if self.driver.get_parameter("autostart").value:
            assert self.wait_for(lambda: len(self.joint_states) > 0, 5.0)

    def _on_joint_state(self, msg):
        self.received.append((self.io.get_clock().now().nanoseconds * 1e-9, stamp_seconds(msg.header.stamp)))
        self.joint_states.append(msg)

    def _on_diagnostics(self, msg):
        self.diagnostics.extend(s for s in msg.status if s.name.startswith(self.driver.get_name()))

    def wait_for(self, condition, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return False

    def publish(self, target, ahead=0.2, gripper=True):
        """A one-point trajectory (stamp 0 = now) reaching `target` (7,) `ahead` seconds from now."""
        names = NAMES if gripper else NAMES[:6]
        msg = JointTrajectory(joint_names=names)
        msg.points = [JointTrajectoryPoint(positions=[float(x) for x in target[: len(names)]],
                                           time_from_start=to_duration(ahead))]
        self.trajectory_pub.publish(msg)

    def call(self, name, request=None):
        client = self.clients[name]
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(request or Trigger.Request())
        assert self.wait_for(future.done, 10.0), f"~/{name} did not answer"
        return future.result()

    def transition(self, transition_id):
        return self.call("change_state", ChangeState.Request(transition=Transition(id=transition_id))).success

    def lifecycle_state(self):
        return self.call("get_state", GetState.Request()).current_state.label

    def set_parameter(self, name, value):
        """As `ros2 param set` does it: the SetParameters service. The result (successful, reason)."""
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call("set_parameters", request).results[0]

    def latest_diagnostic(self, after):
        """The newest driver status published after the first `after` ones, or None."""
        return self.diagnostics[-1] if len(self.diagnostics) > after else None

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5.0)  # no callback may run while the nodes are destroyed
        self.driver.destroy_node()
        self.io.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def rig_factory():
    rigs = []

    def make(tag, arm, **params):
        rigs.append(Rig(tag, arm, **params))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def keep_publishing(rig, target, seconds, period=0.033, until=None):
    """Re-send the target like the inference node does (30 Hz windows), for `seconds`, or with
    `until` (a condition) until it holds, for `seconds` at most; returns whether it held."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.publish(target)
        time.sleep(period)
        if until is not None and until():
            return True
    return until is None or until()


def test_joint_states_follow_a_trajectory_at_the_servo_rate(rig_factory):
    backend = RecordingFakeBackend()
    rig = rig_factory("follow", backend)
    target = np.append(xarm6.HOME + np.array([0.4, 0.2, -0.3, 0.5, -0.2, 0.3]), 0.6)
    first = len(rig.joint_states)
    keep_publishing(rig, target, 1.5)
    states = rig.joint_states[first:]

    assert all(list(s.name) == NAMES for s in states)
    final = np.array(states[-1].position)
    assert np.abs(final - target).max() < 0.02, f"did not reach the target: {final} vs {target}"
    start_error = np.abs(np.array(states[0].position) - target).max()
    assert start_error > 0.25  # it really moved
    # 100 Hz: one message per servo tick, stamped on the servo thread. A tick that overruns on a
    # loaded machine (other test processes) skips its deadline, so the achieved bound is looser:
    # a 2-core VM under load has been seen at 64-75 Hz with the median period still 10 ms.
    stamps = np.array([stamp_seconds(s.header.stamp) for s in states])
    assert np.median(np.diff(stamps)) == pytest.approx(0.01, abs=0.001)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    status = rig.driver.loop.status()
    assert rate >= 50.0, f"joint_states at {rate:.1f} Hz ({status.overruns} overruns, realtime {status.realtime})"
    # what reached the backend obeyed the safety bounds
    q = np.array([c for _, c in backend.commands])[:, :6]
    assert np.abs(np.diff(q, axis=0)).max() <= SafetyLimits().max_velocity * 0.01 + 1e-9


def test_trajectory_without_gripper_keeps_the_gripper_and_bad_ones_are_refused(rig_factory):
    backend = RecordingFakeBackend()
    rig = rig_factory("partial", backend)
    target = np.append(xarm6.HOME + 0.2, 0.8)
    keep_publishing(rig, target, 0.8)
    arm_only = np.append(xarm6.HOME - 0.1, np.nan)  # the NaN is never sent: no drive_joint column
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        rig.publish(arm_only, gripper=False)
        time.sleep(0.033)
    recent = np.array([c for t, c in backend.commands if t > end - 0.25])
    assert np.ptp(recent[:, 6]) < 1e-9 and recent[-1, 6] == pytest.approx(0.8, abs=0.03)  # held
    assert np.abs(recent[-1, :6] - arm_only[:6]).max() < 0.05

    msg = JointTrajectory(joint_names=["joint1", "joint2"])  # joints missing: refused, logged, no crash
    msg.points = [JointTrajectoryPoint(positions=[1.0, 1.0], time_from_start=to_duration(0.1))]
    rig.trajectory_pub.publish(msg)
    rig.publish(np.full(7, np.inf))
    assert rig.wait_for(lambda: "NaN or inf" in rig.driver.loop.status().rejected, 2.0)
    published = len(rig.joint_states)  # and the node carries on
    assert rig.wait_for(lambda: len(rig.joint_states) > published + 10, 2.0)


def test_watchdog_brings_the_arm_to_rest_after_the_last_trajectory(rig_factory):
    backend = RecordingFakeBackend()
    rig = rig_factory("watchdog", backend)  # watchdog_ms defaults to 100
    keep_publishing(rig, np.append(xarm6.HOME + 0.01, 0.0), 0.3)  # the first motion, at its reduced speed
    far = np.append(xarm6.HOME + 2.0, 0.0)  # unreachable in the time given: full speed
    keep_publishing(rig, far, 0.6)
    last_publish = time.monotonic()
    time.sleep(1.0)
    times = np.array([t for t, _ in backend.commands])
    q = np.array([c for _, c in backend.commands])[:, :6]
    speed = np.abs(np.diff(q, axis=0)).max(axis=1) / 0.01
    speed_times = times[1:]
    assert speed[speed_times < last_publish].max() > 1.0  # it was moving fast
    # The watchdog fires 100 ms after the last trajectory *arrived*; allow 150 ms more for DDS and
    # scheduling on a loaded machine. From then on the arm only slows down, then holds.
    braking = speed_times >= last_publish + 0.25
    assert (np.diff(speed[braking]) <= 1e-9).all(), "speed rose after the watchdog should have fired"
    stopped_by = last_publish + 0.25 + SafetyLimits().max_velocity / SafetyLimits().max_acceleration + 0.05
    assert (speed[speed_times > stopped_by] == 0).all(), "still moving after the watchdog's braking time"
    assert "no fresh trajectory" in rig.driver.loop.status().stopping_reason


def test_on_sim_time_trajectories_play_out_in_sim_seconds(rig_factory):
    """use_sim_time: the driver times trajectories and its watchdog on the ROS clock. Sim time
    runs here at a quarter of the wall clock, so a 0.6 s move takes 2.4 s of wall time; windows
    re-sent every 50 ms of sim time (200 ms wall) keep the 100 ms watchdog fed."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    backend = RecordingFakeBackend()
    rig = rig_factory("simtime", backend, use_sim_time=True)
    clock_pub = rig.io.create_publisher(Clock, "/clock", 10)
    t0 = 100.0

    def publish_clock(sim):
        clock_pub.publish(Clock(clock=Time(sec=int(sim), nanosec=int(round((sim % 1) * 1e9)))))

    publish_clock(t0)
    assert rig.wait_for(lambda: rig.driver.get_clock().now().nanoseconds >= t0 * 1e9, 5.0)
    start = np.array(rig.joint_states[-1].position)
    target = start + np.array([0.3, 0, 0, 0, 0, 0, 0])
    msg = JointTrajectory(joint_names=NAMES)
    msg.header.stamp = Time(sec=int(t0))
    msg.points = [JointTrajectoryPoint(positions=start.tolist(), time_from_start=to_duration(0.0)),
                  JointTrajectoryPoint(positions=target.tolist(), time_from_start=to_duration(0.6))]
    wall0, next_send = time.monotonic(), 0.0
    commanded_at, reasons = {}, {}  # sim seconds since t0 -> joint1 command, filter's stop reason
    while (elapsed := time.monotonic() - wall0) < 3.2:
        sim = t0 + elapsed / 4
        publish_clock(sim)
        if elapsed >= next_send:
            rig.trajectory_pub.publish(msg)
            next_send += 0.2
        commanded_at[sim - t0] = backend.commands[-1][1][0]
        reasons[sim - t0] = rig.driver.loop.status().stopping_reason
        time.sleep(0.01)
    progress = {s: (q - start[0]) / 0.3 for s, q in commanded_at.items()}
    # At 0.3 s of sim time (1.2 s of wall time, long past the move's end on a wall-clock driver)
    # the arm is about halfway; it arrives once sim time passes 0.6 s, and the watchdog did not
    # fire while the move lasted (after it, the re-sent window lies in the past and is refused).
    halfway = [p for s, p in progress.items() if 0.28 < s < 0.32]
    assert halfway and all(0.3 < p < 0.7 for p in halfway), halfway
    assert all(p > 0.95 for s, p in progress.items() if s > 0.72)
    during = {s: reason for s, reason in reasons.items() if 0.05 < s < 0.55}
    assert during and not any(during.values()), during


def test_emergency_stop_latches_until_reset(rig_factory):
    backend = RecordingFakeBackend()
    rig = rig_factory("estop", backend)
    target = np.append(xarm6.HOME + 0.5, 0.0)  # within the limits: reachable
    keep_publishing(rig, target, 0.2)
    assert rig.call("emergency_stop").success
    keep_publishing(rig, target, 0.8)  # the policy does not know about the e-stop
    recent = np.array([c for t, c in backend.commands if t > time.monotonic() - 0.4])
    assert np.ptp(recent, axis=0).max() == 0.0, "moving under a latched e-stop"
    assert np.abs(recent[-1] - target).max() > 0.1  # stopped short of the target
    first = len(rig.diagnostics)
    assert rig.wait_for(lambda: (d := rig.latest_diagnostic(first)) is not None
                        and "emergency stop latched" in d.message and d.level == DiagnosticStatus.WARN, 2.0)

    assert rig.call("reset").success
    keep_publishing(rig, target, 1.2)
    assert np.abs(backend.commands[-1][1] - target).max() < 0.02


def test_main_runs_as_a_process_and_exits_cleanly_on_sigint():
    """`ros2 run evo1_ros xarm6_driver` runs `main`: it comes up, publishes, and stops on Ctrl-C."""
    command = [sys.executable, "-c", "from evo1_ros.nodes.driver import main; main()",
               "--ros-args", "-p", "joint_states_topic:=/main_test/joint_states", "-p", "servo_rate_hz:=50.0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("main_test_listener", context=context)
    received = []
    node.create_subscription(JointState, "/main_test/joint_states", received.append, 100)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 20.0
        while len(received) < 20 and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert len(received) >= 20, process.communicate(timeout=5)[0] if process.poll() is not None else "no joint_states"
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=10)[0]
        assert process.returncode == 0, output
        assert "fake backend connected, servo 50 Hz" in output
    finally:
        if process.poll() is None:
            process.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


# --- joint states, parameters, lifecycle, teaching, a dying servo thread -------------------------

class LateFakeBackend(RecordingFakeBackend):
    """The fake arm, its states measured 50 ms before they are read (a slow report stream)."""

    def read_state(self):
        state = super().read_state()
        state.stamp -= 0.05
        return state


def test_joint_states_carry_the_measurement_time_and_velocities(rig_factory):
    rig = rig_factory("stamps", LateFakeBackend())
    target = np.append(xarm6.HOME + 0.3, 0.5)
    keep_publishing(rig, target, 0.5)
    moving = [m for m in rig.joint_states[-30:] if np.abs(m.velocity).max() > 0.1]
    assert moving and all(len(m.velocity) == 7 for m in rig.joint_states)
    # the fake arm's velocity is its lag's: (command - measured) / tau, in the direction of motion
    assert all(np.sign(m.velocity[0]) == 1.0 for m in moving)
    ages = np.array([arrived - stamp for arrived, stamp in rig.received[-50:]])
    assert ages.min() >= 0.05 - 0.002  # stamped 50 ms before the read, not when published
    assert np.median(ages) < 0.05 + 0.03


def test_safety_parameters_change_the_running_arm_or_are_refused(rig_factory):
    backend = RecordingFakeBackend()
    rig = rig_factory("params", backend)
    keep_publishing(rig, np.append(xarm6.HOME + 0.01, 0.0), 0.3)  # the first motion over
    result = rig.set_parameter("max_velocity", 0.5)
    assert result.successful
    assert rig.driver.loop.limits.max_velocity == 0.5
    start = len(backend.commands)
    keep_publishing(rig, np.append(xarm6.HOME + 1.5, 0.0), 1.5)  # far: the arm goes at its limit
    q = np.array([c for _, c in backend.commands[start:]])[:, :6]
    speed = np.abs(np.diff(q, axis=0)).max(axis=1) / 0.01
    assert speed.max() <= 0.5 + 1e-9 and speed.max() > 0.45, speed.max()
    for value, reason in [(-1.0, "max_velocity must be in (0, 3.14]"), (float("nan"), "max_velocity must be"),
                          (5.0, "max_velocity must be in (0, 3.14]")]:
        result = rig.set_parameter("max_velocity", value)
        assert not result.successful and reason in result.reason, result.reason
        assert rig.driver.get_parameter("max_velocity").value == 0.5 and rig.driver.loop.limits.max_velocity == 0.5
    assert not rig.set_parameter("max_acceleration", 0.0).successful
    assert not rig.set_parameter("first_motion_scale", 1.5).successful
    result = rig.set_parameter("servo_rate_hz", 250.0)
    assert not result.successful and "read-only" in result.reason
    result = rig.set_parameter("watchdog_ms", 250.0)
    assert result.successful and rig.driver.loop.limits.watchdog_s == 0.25


def test_lifecycle_with_the_sdk_backend_on_the_emulator(rig_factory, xarm_emulator):
    emulator = xarm_emulator()
    rig = rig_factory("lifecycle", None, backend="xarm_sdk", robot_ip=emulator.config.ip, autostart=False)
    assert rig.lifecycle_state() == "unconfigured" and emulator.status()["connections"] == 0
    assert not rig.call("recover").success  # not connected: says so
    time.sleep(0.3)
    assert rig.joint_states == []
    target = np.append(xarm6.HOME + 0.2, 0.0)

    assert rig.transition(Transition.TRANSITION_CONFIGURE)  # connects; holds the arm
    assert rig.lifecycle_state() == "inactive" and emulator.status()["connections"] == 3
    assert rig.wait_for(lambda: len(rig.joint_states) > 10, 2.0)
    keep_publishing(rig, target, 0.3)
    assert "not active" in rig.driver.loop.status().rejected
    assert np.allclose(emulator.status()["joints"], xarm6.HOME, atol=1e-6)

    assert rig.transition(Transition.TRANSITION_ACTIVATE)  # follows
    keep_publishing(rig, target, 1.0)
    assert np.allclose(emulator.status()["joints"], target[:6], atol=0.01)

    keep_publishing(rig, np.append(xarm6.HOME, 0.0), 0.1)
    assert rig.transition(Transition.TRANSITION_DEACTIVATE)  # brakes to rest and holds
    time.sleep(0.5)
    first = emulator.status()
    keep_publishing(rig, np.append(xarm6.HOME, 0.0), 0.3)
    assert np.allclose(emulator.status()["joints"], first["joints"], atol=1e-9)
    assert first["mode"] == 1 and first["error"] == 0

    assert rig.transition(Transition.TRANSITION_CLEANUP)  # disconnects
    assert rig.lifecycle_state() == "unconfigured"
    assert rig.wait_for(lambda: emulator.status()["connections"] == 0, 2.0)
    published = len(rig.joint_states)
    time.sleep(0.2)
    assert len(rig.joint_states) == published


@pytest.mark.parametrize("fault, level, words", [
    ("C24", DiagnosticStatus.ERROR, "controller error C24: speed exceeds its limit"),
    ("C31", DiagnosticStatus.ERROR, "controller error C31: collision caused abnormal current"),
    ("freeze-report", DiagnosticStatus.ERROR, "the report stream is silent"),
    ("gripper-lost", DiagnosticStatus.ERROR, "gripper/status connection: "),
    ("W11", DiagnosticStatus.WARN, "controller warning W11: the controller's command buffer is full"),
])
def test_sdk_faults_in_words_on_diagnostics_and_in_the_log(rig_factory, xarm_emulator, capfd, fault, level, words):
    emulator = xarm_emulator()
    rig = rig_factory("faults", None, backend="xarm_sdk", robot_ip=emulator.config.ip)
    target = np.append(xarm6.HOME + 0.3, 0.0)
    keep_publishing(rig, target, 0.3)
    emulator.inject(fault)
    if fault == "gripper-lost":
        keep_publishing(rig, np.append(xarm6.HOME + 0.3, 0.6), 0.2)  # a gripper command that is never answered
    first = len(rig.diagnostics)
    assert rig.wait_for(lambda: (d := rig.latest_diagnostic(first)) is not None and words in d.message, 5.0)
    diagnostic = rig.latest_diagnostic(first)
    assert diagnostic.level == level
    values = {kv.key: kv.value for kv in diagnostic.values}
    assert values["backend"] == "xarm_sdk"
    assert words in capfd.readouterr().err  # and in the log
    if level == DiagnosticStatus.WARN:  # a warning: the arm keeps following
        # a hold of 1 s or more before this target makes it a first motion (reduced speed): wait for it
        assert keep_publishing(rig, np.append(xarm6.HOME - 0.1, 0.0), 6.0, until=lambda: at(emulator, xarm6.HOME - 0.1))
        return
    sent = emulator.status()["servo_targets"]
    keep_publishing(rig, target, 0.3)
    assert emulator.status()["servo_targets"] == sent, "commands sent while the arm is in error"
    emulator.clear_faults()
    assert rig.call("recover").success
    assert keep_publishing(rig, np.append(xarm6.HOME - 0.1, 0.0), 6.0, until=lambda: at(emulator, xarm6.HOME - 0.1))


def at(emulator, joints):
    """Whether the emulated arm stands at `joints` (rad)."""
    return np.allclose(emulator.status()["joints"], joints, atol=0.01)


class GripperRecordingBackend(RecordingFakeBackend):
    """... and of the gripper-only commands teaching mode sends."""

    def __init__(self):
        super().__init__()
        self.gripper_commands = []

    def command_gripper(self, gripper):
        self.gripper_commands.append(gripper)
        super().command_gripper(gripper)


def test_teaching_service(rig_factory):
    backend = GripperRecordingBackend()
    rig = rig_factory("teaching", backend)
    keep_publishing(rig, np.append(xarm6.HOME + 0.1, 0.0), 0.5)
    response = rig.call("set_teaching", SetBool.Request(data=True))
    assert response.success and "by hand" in response.message
    sent = len(backend.commands)
    guided = xarm6.HOME + np.array([0.4, -0.3, 0.2, 0.5, -0.2, 0.3])
    backend.guide(guided)
    keep_publishing(rig, np.append(xarm6.HOME, xarm6.GRIPPER_CLOSED), 1.0)  # joints ignored: moved by hand
    assert len(backend.commands) == sent and rig.driver.loop.status().rejected == ""
    assert np.allclose(rig.joint_states[-1].position[:6], guided)  # the guided pose is published
    # the gripper followed, through the filter: at most gripper_max_velocity (1.7 /s) per servo tick
    steps = np.diff([0.0, *backend.gripper_commands])
    assert backend.gripper_commands[-1] == pytest.approx(xarm6.GRIPPER_CLOSED, abs=0.01)  # windows 0.2 s ahead
    assert steps.max() <= 1.7 / 100 + 1e-9 and steps.min() >= -1e-9
    assert rig.joint_states[-1].position[6] == pytest.approx(xarm6.GRIPPER_CLOSED, abs=0.02)  # measured
    time.sleep(0.3)  # the watchdog: no trajectory, no gripper command
    idle = len(backend.gripper_commands)
    time.sleep(0.2)
    assert len(backend.gripper_commands) == idle
    assert rig.call("set_teaching", SetBool.Request(data=False)).success
    time.sleep(0.2)
    assert np.allclose(np.array([c for _, c in backend.commands[sent:]])[:, :6], guided)  # holds there
    assert np.allclose(np.array([c for _, c in backend.commands[sent:]])[:, 6], xarm6.GRIPPER_CLOSED, atol=0.01)


def test_teaching_mode_moves_the_xarm_gripper_and_no_joint_on_the_emulator(rig_factory, xarm_emulator):
    """The operator hand-guides the xArm (mode 2) and closes the gripper: the driver sends the
    gripper targets over the SDK's gripper path and not a single joint target."""
    emulator = xarm_emulator()
    rig = rig_factory("teachgrip", None, backend="xarm_sdk", robot_ip=emulator.config.ip)
    assert rig.call("set_teaching", SetBool.Request(data=True)).success
    assert emulator.status()["mode"] == 2
    guided = [0.3, -0.2, -0.9, 0.1, 1.0, -0.4]
    emulator.guide(guided)
    targets = emulator.status()["servo_targets"]
    for drive in (xarm6.GRIPPER_CLOSED, xarm6.GRIPPER_OPEN):
        # joint columns ignored; publish until the gripper gets there (a loaded machine may take a while)
        sdk_units = xarm6.gripper_to_sdk(drive)
        assert keep_publishing(rig, np.append(xarm6.HOME, drive), 6.0,
                               until=lambda: abs(emulator.status()["gripper"] - sdk_units) <= 10)
        status = emulator.status()
        assert status["servo_targets"] == targets and status["mode"] == 2
        assert np.allclose(status["joints"], guided, atol=1e-6)


def test_teaching_refused_by_a_backend_without_it(rig_factory):
    class NoTeaching(RecordingFakeBackend):
        set_teaching = DriverBackend.set_teaching

    rig = rig_factory("noteaching", NoTeaching())
    response = rig.call("set_teaching", SetBool.Request(data=True))
    assert not response.success and "fake backend has no teaching mode" in response.message
    keep_publishing(rig, np.append(xarm6.HOME + 0.1, 0.0), 0.3)
    assert not rig.driver.loop.status().teaching and rig.driver.loop.status().rejected == ""


class DyingBackend(FakeBackend):
    """Reads a malformed state after a while (a bug of any kind): publishing it raises."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def read_state(self):
        self.reads += 1
        state = super().read_state()
        return state if self.reads < 50 else RobotState(None, 0.0, state.stamp, state.velocities)


def test_a_dying_servo_thread_takes_the_driver_down_loudly(rig_factory, capfd):
    rig = rig_factory("dying", DyingBackend())
    assert rig.wait_for(lambda: rig.driver.loop is None, 5.0), "still configured"
    assert rig.lifecycle_state() == "unconfigured"
    first = len(rig.diagnostics)
    assert rig.wait_for(lambda: (d := rig.latest_diagnostic(first)) is not None and d.level == DiagnosticStatus.ERROR,
                        3.0)
    message = rig.latest_diagnostic(first).message
    assert message.startswith("servo thread died: TypeError") and "the arm was stopped" in message
    err = capfd.readouterr().err
    assert "servo thread died: TypeError" in err and "Traceback" in err
    published = len(rig.joint_states)
    time.sleep(0.2)
    assert len(rig.joint_states) == published  # it does not look alive
