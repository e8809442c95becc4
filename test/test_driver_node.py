"""Xarm6DriverNode over real rclpy/DDS: trajectories in, /joint_states out at the servo rate,
watchdog, latched e-stop, and backend errors reported in diagnostics without taking the node down.

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
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from evo1_ros.nodes.driver import Xarm6DriverNode  # noqa: E402
from evo1_ros.nodes.messages import stamp_seconds, to_duration  # noqa: E402
from evo1_ros.robot import xarm6  # noqa: E402
from evo1_ros.robot.backends import FakeBackend, XArmSdkBackend  # noqa: E402
from evo1_ros.runtime.safety import SafetyLimits  # noqa: E402
from xarm_standin import StandInXArmAPI  # noqa: E402

pytestmark = pytest.mark.ros
NAMES = list(xarm6.JOINT_NAMES) + [xarm6.GRIPPER_JOINT]


class RecordingFakeBackend(FakeBackend):
    """The fake arm, plus a log of (time, command) as the servo loop sends them."""

    def __init__(self):
        super().__init__()
        self.commands = []

    def command(self, positions, gripper):
        self.commands.append((time.monotonic(), np.append(positions, gripper)))
        super().command(positions, gripper)


class Rig:
    """A driver node and a test node that publishes trajectories and records the driver's output."""

    def __init__(self, tag, backend, **params):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        params = dict(trajectory_topic=f"/{tag}/trajectory", joint_states_topic=f"/{tag}/joint_states", **params)
        self.driver = Xarm6DriverNode(backend=backend, context=self.context, namespace=f"/{tag}",
                                      parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.io = rclpy.create_node("driver_test_io", context=self.context)
        self.trajectory_pub = self.io.create_publisher(JointTrajectory, f"/{tag}/trajectory", 10)
        self.joint_states, self.diagnostics = [], []
        self.io.create_subscription(JointState, f"/{tag}/joint_states", self.joint_states.append, 1000)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.clients = {name: self.io.create_client(Trigger, f"/{tag}/xarm6_driver/{name}")
                        for name in ("emergency_stop", "reset", "recover")}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.driver)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert self.wait_for(lambda: self.io.count_subscribers(f"/{tag}/trajectory") >= 1, 5.0)
        assert self.wait_for(lambda: len(self.joint_states) > 0, 5.0)

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

    def call(self, name):
        client = self.clients[name]
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        assert self.wait_for(future.done, 10.0), f"~/{name} did not answer"
        return future.result()

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

    def make(tag, backend, **params):
        rigs.append(Rig(tag, backend, **params))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def keep_publishing(rig, target, seconds, period=0.033):
    """Re-send the target like the inference node does (30 Hz windows)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.publish(target)
        time.sleep(period)


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


def test_backend_errors_are_reported_and_recovered_without_crashing(rig_factory):
    StandInXArmAPI.instances.clear()
    backend = XArmSdkBackend("192.168.1.185", api_class=StandInXArmAPI)
    rig = rig_factory("sdk", backend)
    arm = StandInXArmAPI.instances[-1]
    target = np.append(xarm6.HOME + 0.5, 0.0)
    keep_publishing(rig, target, 0.2)

    arm.raise_controller_error(24)
    keep_publishing(rig, target, 0.3)
    sent = len(arm.servo_targets)
    first = len(rig.diagnostics)
    assert rig.wait_for(lambda: (d := rig.latest_diagnostic(first)) is not None and d.level == DiagnosticStatus.ERROR, 2.0)
    diagnostic = rig.latest_diagnostic(first)
    assert "C24" in diagnostic.message and "speed exceeds its limit" in diagnostic.message
    assert {kv.key: kv.value for kv in diagnostic.values}["fault_code"] == "1"
    assert arm.state == 4
    keep_publishing(rig, target, 0.2)
    assert len(arm.servo_targets) == sent, "commands sent while the arm is in error"

    arm.connected = False  # and now the cable: recovery fails, says why, the node stays up
    failed = rig.call("recover")
    assert not failed.success and "not connected" in failed.message
    arm.connected = True
    assert rig.call("recover").success
    keep_publishing(rig, target, 0.3)
    assert len(arm.servo_targets) > sent + 10

    arm.block_next_servo_s = 0.19  # one slow SDK call: reported, nothing else happens
    keep_publishing(rig, target, 0.3)
    first = len(rig.diagnostics)
    assert rig.wait_for(lambda: (d := rig.latest_diagnostic(first)) is not None and "blocked" in d.message, 2.0)
    assert rig.driver.loop.status().fault == ""


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
        assert "fake backend, servo 50 Hz" in output
    finally:
        if process.poll() is None:
            process.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
