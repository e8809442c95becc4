"""Each teleop device drives the MuJoCo sim arm through the real graph (teleop node -> DDS -> the
driver and its safety filter -> the sim backend) to a pose the test asks for, and each one's
failure holds the arm: a Dynamixel leader on a fake servo bus (the unmodified dynamixel-sdk over a
pty), a JointState leader, a SpaceMouse behind pyspacemouse fed with recorded HID reports, a Joy
pad and a Twist stream. The test plays the operator: it moves the device until the arm is there.
Episodes run from the pad's buttons and end interrupted when the device fails."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from geometry_msgs.msg import Twist  # noqa: E402
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dynamixel_bus import DynamixelBus  # noqa: E402
from evo1_ros.data import bag  # noqa: E402
from evo1_ros.nodes.teleop import TeleopNode  # noqa: E402
from evo1_ros.robot import topics, xarm6  # noqa: E402
from evo1_ros.teleop.leader import RADIANS_PER_TICK, LeaderConfig, calibration_offsets  # noqa: E402
from test_spacemouse import FULL, hid  # noqa: E402, F401  (hid: a SpaceMouse behind pyspacemouse's parsing)
from test_teleop_node import Graph, override, wait_for  # noqa: E402

pytestmark = pytest.mark.ros
XBOX = str(Path(__file__).resolve().parents[1] / "config" / "teleop_joy_xbox.yaml")
LB, Y, START = 4, 3, 7  # the Xbox map's deadman, success and start buttons
# The pose asked for: every joint away from HOME (a leader) / the TCP moved 6 cm forward, 4 cm down
POSE = xarm6.HOME + np.array([0.25, 0.15, -0.2, 0.2, -0.25, 0.3])
TCP_MOVE = np.array([0.06, 0.0, -0.04])


class Rig:
    """The sim arm (a MuJoCo world stepped in real time behind the unmodified driver), a recorder
    and a teleop node with `teleop` parameters, in a graph of their own."""

    def __init__(self, tmp_path, **teleop):
        from evo1_ros.nodes.driver import start_driver
        from evo1_ros.nodes.recorder import RecorderNode
        from evo1_ros.sim.backend import SimBackend
        from evo1_ros.sim.world import SimWorld

        self.world = SimWorld(image_size=64)
        self.out = tmp_path / "bags"

        def make(context, nodes):
            nodes.append(start_driver(SimBackend(self.world), **override(context, realtime_priority=0)))
            nodes.append(RecorderNode(**override(context, output_dir=str(self.out), cameras=["base"])))
            nodes.append(TeleopNode(**override(context, instruction="put the can in the box", task="pick_place_can",
                                               operator="ada", **teleop)))

        self.graph = Graph(make)
        self.driver, self.recorder, self.teleop = self.graph.nodes
        self.states = self.graph.latest(JointState, topics.JOINT_STATES)
        self.commands = self.graph.latest(JointTrajectory, topics.TRAJECTORY)
        wait_for(lambda: self.states, what="joint states from the sim arm")

    def joints(self) -> np.ndarray:
        return np.array(self.states[-1].position[:6])

    def tcp(self) -> np.ndarray:
        return xarm6.forward_kinematics(self.joints()).tcp[:3, 3]

    def publisher(self, msg_type, topic):
        return self.graph.listener.create_publisher(msg_type, topic, 10)

    def assert_holds_after_failure(self, device: str) -> None:
        """No target after the failure (not a stale one, not a zero one): the driver's watchdog
        brings the arm to rest and it stays there."""
        wait_for(lambda: self.teleop.failure is not None, what=f"the {device} failure to be noticed")
        assert device in self.teleop.failure
        time.sleep(0.2)  # a target in flight when it failed
        sent = len(self.commands)
        time.sleep(0.6)
        assert len(self.commands) == sent, "targets went on after the device failed"
        assert all(np.abs(c.points[0].positions[:6]).max() > 0.1 for c in self.commands)  # never a zero target
        held = self.joints()
        time.sleep(0.3)
        np.testing.assert_allclose(self.joints(), held, atol=2e-3)
        assert self.driver.loop.status().stopping_reason.startswith("no fresh trajectory")

    def episodes(self) -> list[dict]:
        wait_for(lambda: self.recorder.writer is None, what="the episode to end")
        return [bag.read_meta(path) for path in sorted(self.out.iterdir())]

    def close(self):
        self.graph.close()
        self.world.close()


@pytest.fixture
def rig(tmp_path):
    rigs = []

    def make(**teleop):
        rigs.append(Rig(tmp_path, **teleop))
        return rigs[-1]

    yield make
    for made in rigs:
        made.close()


def every(period, publish, stop: threading.Event):
    """Call publish() every period s on a thread until `stop` is set (a device streaming)."""
    def run():
        while not stop.wait(period):
            publish()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- leader arms -----------------------------------------------------------------------------------

def test_dynamixel_leader_drives_the_sim_arm_and_an_unplugged_adapter_holds_it(rig, tmp_path):
    ids = (1, 2, 3, 4, 5, 6, 7)
    with DynamixelBus(ids) as servos:
        raw_home = np.array([2048, 1500, 2600, 2048, 2300, 1900])
        signs = (1, -1, 1, 1, -1, 1)
        config = LeaderConfig(port=servos.port, joint_signs=signs, gripper_open=2900, gripper_closed=2300,
                              joint_offsets=calibration_offsets(raw_home, signs, xarm6.HOME))
        config.save(tmp_path / "leader.yaml")
        turned = np.round((POSE - xarm6.HOME) / RADIANS_PER_TICK * np.array(signs)).astype(int)
        servos.set_positions(dict(zip(ids, [*(raw_home + turned), 2300])))  # the operator's pose, gripper shut
        arm = rig(source="leader", leader_config=str(tmp_path / "leader.yaml"), rate_hz=50.0)
        arm.teleop.episode("start")
        wait_for(lambda: np.abs(arm.joints() - POSE).max() < 0.01 and arm.states[-1].position[6] > 0.8,
                 timeout=30, what="the sim arm at the leader's pose, gripper closed")
        # the slow start: no target stepped more than start_step (0.005 rad) while catching up
        first = np.array([c.points[0].positions[:6] for c in arm.commands[:40]])
        assert np.abs(np.diff(first, axis=0)).max() <= 0.005 + 1e-9
        servos.silent = {4}  # a read error: servo 4 stops answering
        arm.assert_holds_after_failure("servo 4: There is no status packet!")
        servos.silent = set()  # it answers again: the arm follows the leader again, from where it stands
        wait_for(lambda: arm.teleop.failure is None, what="the leader back")
        arm.teleop.episode("start")
        servos.set_positions({1: int(raw_home[0] + turned[0]) + 100})
        wait_for(lambda: abs(arm.joints()[0] - POSE[0] - 100 * RADIANS_PER_TICK) < 0.01, what="joint1 following")
        servos.unplug()
        arm.assert_holds_after_failure(f"leader on {servos.port}")
    first, episode = arm.episodes()
    assert first["interrupted"].startswith(f"teleop device failed: leader on {servos.port}: sync read failed")
    assert "servo 4: There is no status packet!" in first["interrupted"]
    # the read fails, or stalls past device_timeout_ms first: either way the leader and its port are named
    assert episode["interrupted"].startswith(f"teleop device failed: leader on {servos.port}: ")
    assert episode["success"] is None and episode["teleop_source"] == "leader"
    assert first["message_counts"][topics.TRAJECTORY] > 50  # what was recorded is kept
    assert episode["message_counts"][topics.TRAJECTORY] > 10


def test_joint_state_leader_drives_the_sim_arm_and_its_silence_holds_it(rig):
    names = ["gello_j1", "gello_j2", "gello_j3", "gello_j4", "gello_j5", "gello_j6"]
    arm = rig(source="leader", leader_topic="/gello/joint_states", leader_joint_names=names,
              leader_gripper_joint="", rate_hz=50.0, device_timeout_ms=300.0)
    leader = arm.publisher(JointState, "/gello/joint_states")
    stop = threading.Event()
    every(0.02, lambda: leader.publish(JointState(name=names[::-1], position=POSE[::-1].tolist())), stop)
    try:
        wait_for(lambda: np.abs(arm.joints() - POSE).max() < 0.01, timeout=30, what="the sim arm at the leader's pose")
    finally:
        stop.set()
    arm.assert_holds_after_failure("leader JointState topic: no input for")


# --- Cartesian devices -----------------------------------------------------------------------------

def drive_tcp(arm, goal, push, timeout=30.0):
    """The operator: push(direction in [-1, 1]^3, in link_base) every 50 ms toward `goal` until the
    TCP is within 4 mm of it, then let go."""
    deadline = time.monotonic() + timeout
    while np.linalg.norm(error := goal - arm.tcp()) > 0.004:
        assert time.monotonic() < deadline, f"the TCP stayed {error} from the goal"
        push(np.clip(error / 0.03, -1.0, 1.0))
        time.sleep(0.05)
    push(np.zeros(3))


def test_spacemouse_drives_the_sim_arm_to_a_tcp_position_and_unplugging_it_holds_the_arm(rig, hid):  # noqa: F811 (the fixture)
    arm = rig(source="spacemouse")
    wait_for(lambda: arm.teleop.target is not None, what="the SpaceMouse to be opened and streamed")
    start = arm.tcp()
    orientation = xarm6.forward_kinematics(arm.joints()).tcp[:3, :3]

    def push(direction):  # the HID axes: x right, y toward the user, z down
        hid.move(tx=int(-direction[1] * FULL), ty=int(-direction[0] * FULL), tz=int(-direction[2] * FULL))

    drive_tcp(arm, start + TCP_MOVE, push)
    time.sleep(0.5)  # released: the arm stops where it got to
    np.testing.assert_allclose(arm.tcp(), start + TCP_MOVE, atol=0.008)
    np.testing.assert_allclose(xarm6.forward_kinematics(arm.joints()).tcp[:3, :3], orientation, atol=0.02)
    hid.press(left=True)  # the left button closes the gripper
    wait_for(lambda: arm.states[-1].position[6] > 0.8, what="the gripper closed")
    hid.unplugged = True
    arm.assert_holds_after_failure("SpaceMouseCompact: read failed")
    hid.unplugged = False  # plugged in again: the node opens it and streams from where the arm is
    wait_for(lambda: arm.teleop.failure is None, what="the SpaceMouse back")
    sent = len(arm.commands)
    wait_for(lambda: len(arm.commands) > sent + 5, what="targets again")
    np.testing.assert_allclose(arm.commands[-1].points[0].positions[:6], arm.joints(), atol=2e-3)


def joy(axes=None, pressed=()):
    values = [0.0] * 8
    for index, value in (axes or {}).items():
        values[index] = value
    return Joy(axes=values, buttons=[int(i in pressed) for i in range(11)])


def test_joy_pad_drives_the_sim_arm_runs_episodes_and_its_silence_holds_the_arm(rig):
    arm = rig(source="joy", joy_map=XBOX)
    pad = arm.publisher(Joy, "/joy")
    message = [joy()]
    stop = threading.Event()
    every(0.05, lambda: pad.publish(message[0]), stop)  # the joy node repeats at 20 Hz

    def press(button):
        message[0] = joy(pressed=[button])
        time.sleep(0.2)
        message[0] = joy()
        time.sleep(0.2)

    try:
        wait_for(lambda: arm.teleop.target is not None, what="targets from the pad")
        start = arm.tcp()
        press(START)
        wait_for(lambda: arm.recorder.writer is not None, what="the Start button to start an episode")
        message[0] = joy({1: 0.0, 0: 0.0, 4: 1.0})  # right stick up, deadman not held: nothing moves
        time.sleep(0.5)
        np.testing.assert_allclose(arm.tcp(), start, atol=1e-3)

        def push(direction):  # deadman held; left stick x/y, right stick z (the Xbox map)
            message[0] = joy({1: direction[0], 0: direction[1], 4: direction[2]}, pressed=[LB])

        drive_tcp(arm, start + TCP_MOVE, push)
        message[0] = joy()
        time.sleep(0.3)
        np.testing.assert_allclose(arm.tcp(), start + TCP_MOVE, atol=0.008)
        press(Y)  # success: the episode ends, kept and marked
        wait_for(lambda: arm.recorder.writer is None, what="the Y button to end the episode")
        press(START)
        wait_for(lambda: arm.recorder.writer is not None, what="a second episode")
    finally:
        stop.set()  # the pad goes silent
    arm.assert_holds_after_failure("Joy topic: no input for")
    done, cut = arm.episodes()
    assert done["success"] is True and done["interrupted"] is None
    assert (done["teleop_source"], done["operator"], done["task"]) == ("joy", "ada", "pick_place_can")
    assert cut["success"] is None and cut["interrupted"].startswith("teleop device failed: Joy topic: no input for")
    assert arm.recorder.tally == {"success": 1, "failure": 0, "unmarked": 0, "interrupted": 1, "discarded": 0}


def test_twist_stream_drives_the_sim_arm_in_the_tool_frame(rig):
    arm = rig(source="twist", twist_topic="/spacenav/twist", twist_frame="tool", twist_linear_scale=0.1)
    stream = arm.publisher(Twist, "/spacenav/twist")
    twist = [np.zeros(3)]
    stop = threading.Event()

    def publish():
        msg = Twist()
        msg.linear.x, msg.linear.y, msg.linear.z = map(float, twist[0])
        stream.publish(msg)

    every(0.02, publish, stop)
    try:
        wait_for(lambda: arm.teleop.target is not None, what="targets from the Twist stream")
        start = arm.tcp()
        tool = xarm6.forward_kinematics(arm.joints()).tcp[:3, :3]  # link_tcp's axes in link_base

        def push(direction):  # the goal is in link_base: the stream speaks the tool's axes
            twist[0] = tool.T @ direction

        drive_tcp(arm, start + TCP_MOVE, push)
        time.sleep(0.3)
        np.testing.assert_allclose(arm.tcp(), start + TCP_MOVE, atol=0.008)
    finally:
        stop.set()
