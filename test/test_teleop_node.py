"""Teleop node over real rclpy/DDS: sim expert -> recorder -> dataset, keyboard jog and episode
keys against the driver and recorder, teaching mode on an XArmAPI stand-in."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from evo1_ros.data import bag  # noqa: E402
from evo1_ros.nodes.spin import SpinThread  # noqa: E402
from evo1_ros.nodes.teleop import TeleopNode  # noqa: E402
from evo1_ros.robot import xarm6  # noqa: E402
from xarm_standin import StandInXArmAPI  # noqa: E402

pytestmark = pytest.mark.ros
INSTRUCTION = "put the can in the box"
CAMERA = bag.camera_topic("base")


class Graph:
    """Nodes made by `make(context)` spinning in a private context, plus a listener node."""

    def __init__(self, make):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.nodes = []
        try:
            make(self.context, self.nodes)
        except Exception:
            self.close()
            raise
        self.listener = rclpy.create_node("listener", context=self.context)
        self.spin = SpinThread([*self.nodes, self.listener], self.context)

    def latest(self, msg_type, topic):
        """A list that always holds the newest message on `topic` last."""
        seen = []
        self.listener.create_subscription(msg_type, topic, seen.append, 10)
        return seen

    def close(self):
        if hasattr(self, "spin"):  # stop spinning before destroying nodes
            self.spin.stop()
        for node in reversed(self.nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def override(context, **values):
    return {"context": context, "parameter_overrides": [Parameter(k, value=v) for k, v in values.items()]}


# --- sim expert ------------------------------------------------------------------------------------

def sim_graph(tmp_path, world, episodes, instruction=INSTRUCTION, **task_and_scene):
    """`record-sim`'s graph (sim time, /clock from the world) in a private context."""
    from evo1_ros.teleop.record_sim import RecordingGraph

    context = rclpy.Context()
    rclpy.init(context=context)
    graph = RecordingGraph(world, tmp_path / "bags", episodes, 1000, instruction, context=context, **task_and_scene)
    graph.listener = rclpy.create_node("listener", context=context)
    graph.spin.add_node(graph.listener)
    return graph, context


def close(graph, context):
    graph.close()
    rclpy.try_shutdown(context=context)


@pytest.fixture
def small_world():
    from evo1_ros.sim.lockstep import LockstepWorld

    world = LockstepWorld(image_size=64, fps=10.0)  # small frames: the test is about the graph, not pixels
    yield world
    world.close()


@pytest.mark.slow  # the pour plan lasts ~14 sim s, recorded in lockstep
def test_sim_expert_records_another_task_in_a_scene_of_a_mix(tmp_path, small_world):
    from evo1_ros.sim.scenes import choose, parse_mix
    from evo1_ros.sim.tasks import TASKS

    pour = TASKS["pour_cup"]
    graph, context = sim_graph(tmp_path, small_world, 1, pour.instruction, task="pour_cup", scene="mix")
    try:
        assert graph.teleop.done.wait(300), "the expert did not finish its episode"
    finally:
        close(graph, context)
    (episode,) = sorted((tmp_path / "bags").iterdir())
    meta = bag.read_meta(episode)
    scene = choose(parse_mix("mix"), 1000).name  # what the seed draws from the mix
    assert meta["success"] is True and meta["instruction"] == "pour the cup into the box"
    assert f"(seed 1000, task pour_cup, scene {scene})" in meta["operator_note"]


def test_sim_expert_records_a_successful_episode_that_converts(tmp_path, small_world):
    from evo1_ros.data.convert import convert

    graph, context = sim_graph(tmp_path, small_world, episodes=1)
    try:
        trajectories = []
        graph.listener.create_subscription(JointTrajectory, "/evo1/joint_trajectory", trajectories.append, 10)
        assert graph.teleop.done.wait(180), "the expert did not finish its episode"
    finally:
        close(graph, context)
    (episode,) = sorted((tmp_path / "bags").iterdir())
    meta = bag.read_meta(episode)
    assert meta["success"] is True and small_world.success()
    assert meta["instruction"] == INSTRUCTION
    assert meta["operator_note"].startswith("sim_expert")
    assert "(seed 1000, task pick_place_can, scene default)" in meta["operator_note"]
    assert meta["message_counts"]["/evo1/instruction"] == 1
    # the expert's targets went over DDS to the driver: trajectory windows of plan points ahead
    assert len(trajectories) > 100 and len(trajectories[-1].points) > 1
    # lockstep sim time: frame sets exactly 1/fps apart, however slowly they were rendered
    stamps = [bag.decode(m.msgtype, m.raw).header.stamp for m in bag.read_messages(episode, {CAMERA})]
    assert set(np.diff([s.sec * 10**9 + s.nanosec for s in stamps])) == {100_000_000}

    dataset = convert([episode], tmp_path / "dataset", rate=10, image_size=64, log=lambda _: None)
    (converted,) = dataset["episodes"]
    assert converted["success"] is True and converted["instruction"] == INSTRUCTION
    data = np.load(tmp_path / "dataset" / converted["file"])
    assert converted["length"] >= converted["grid_steps"] - 2 > 80  # the plan alone lasts ~8 s
    gripper = data["action"][:, 6]
    assert gripper.max() > 0.8 and gripper[-1] < 0.05  # closed on the can, open after the drop
    # the commanded action leads the measured state while the arm moves
    assert np.abs(data["action"][:, :6] - data["state"][:, :6]).max() > 0.01


def test_sim_expert_stops_a_failed_episode_as_failure(tmp_path, small_world, monkeypatch):
    from evo1_ros.sim import expert

    # an operator who never moves: the can stays on the table, the sim's flag stays false
    def idle_plan(world):
        state = world.state()
        return expert.Plan(times=np.array([0.0, 0.5]), actions=np.stack([state, state]))

    monkeypatch.setattr(expert, "plan_for", idle_plan)
    graph, context = sim_graph(tmp_path, small_world, episodes=2)
    try:
        assert graph.teleop.done.wait(120), "the expert did not finish its episodes"
    finally:
        close(graph, context)
    episodes = sorted((tmp_path / "bags").iterdir())
    assert [bag.read_meta(e)["success"] for e in episodes] == [False, False]
    notes = [bag.read_meta(e)["operator_note"] for e in episodes]
    assert "seed 1000" in notes[0] and "seed 1001" in notes[1]  # one reset per episode


def test_sim_expert_needs_the_sims_world():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match="sim's process"):
            TeleopNode(**override(context, source="sim_expert"))
    finally:
        rclpy.try_shutdown(context=context)


# --- keyboard --------------------------------------------------------------------------------------

def test_keyboard_jogs_the_driver_and_runs_recorder_episodes(tmp_path):
    from evo1_ros.nodes.driver import Xarm6DriverNode
    from evo1_ros.nodes.recorder import RecorderNode

    def make(context, nodes):
        nodes.append(Xarm6DriverNode(**override(context, backend="fake", realtime_priority=0)))
        nodes.append(RecorderNode(**override(context, output_dir=str(tmp_path))))  # its cameras stay silent
        nodes.append(TeleopNode(**override(context, source="keyboard", instruction=INSTRUCTION)))

    graph = Graph(make)
    try:
        teleop = graph.nodes[-1]
        states = graph.latest(JointState, "/joint_states")
        wait_for(lambda: teleop.target is not None, what="the target to start from the measured pose")
        start = forward_tcp(teleop.target[0])
        teleop.handle_key("b")
        for _ in range(10):
            teleop.handle_key("i")  # +x, 5 mm a press
        teleop.handle_key("c")
        np.testing.assert_allclose(forward_tcp(teleop.target[0]) - start, [0.05, 0, 0], atol=1e-4)

        def arrived():
            state = states[-1]
            return (np.abs(np.array(state.position[:6]) - teleop.target[0]).max() < 1e-3
                    and state.position[6] > 0.8)

        wait_for(arrived, what="the fake arm to reach the jogged target")
        teleop.handle_key("s")
    finally:
        graph.close()
    (episode,) = sorted(tmp_path.iterdir())
    meta = bag.read_meta(episode)
    assert meta["success"] is True and meta["instruction"] == INSTRUCTION
    assert meta["message_counts"]["/evo1/joint_trajectory"] > 0


def forward_tcp(q):
    return xarm6.forward_kinematics(q).tcp[:3, 3]


# --- teaching --------------------------------------------------------------------------------------

class TeachingStandIn(StandInXArmAPI):
    """The SDK drives the gripper over Modbus in any mode (xarm/x3/gripper.py has no mode check);
    the shared stand-in only accepts it in servo mode."""

    def set_gripper_position(self, pos, wait=False):
        self.calls.append("set_gripper_position")
        self.gripper_position = pos
        return 0


def test_teaching_republishes_hand_guided_positions_as_commands():
    TeachingStandIn.instances.clear()
    graph = Graph(lambda context, nodes: nodes.append(TeleopNode(
        api_class=TeachingStandIn, **override(context, source="teaching", robot_ip="192.168.1.2"))))
    try:
        (arm,) = TeachingStandIn.instances
        assert (arm.mode, arm.state, arm.enabled) == (2, 0, True)  # hand-guiding, ready
        commands = graph.latest(JointTrajectory, "/evo1/joint_trajectory")
        states = graph.latest(JointState, "/joint_states")
        guided = [0.3, -0.2, -0.9, 0.1, 1.0, -0.4]
        arm.angles = guided + [0.0]  # the operator moves the arm
        graph.nodes[0].handle_key("c")
        assert arm.gripper_position == 0.0  # closed, in SDK units
        graph.nodes[0].handle_key("i")  # jog keys do nothing: the arm is moved by hand
        wait_for(lambda: commands and list(commands[-1].points[0].positions) == guided + [xarm6.GRIPPER_CLOSED],
                 what="the guided pose and closed gripper as the commanded trajectory")
        wait_for(lambda: states and list(states[-1].position[:6]) == guided, what="the guided pose as joint state")
        assert arm.servo_targets == []  # nothing was ever sent to move the arm
    finally:
        graph.close()
    assert arm.mode == 0 and not arm.connected  # teaching left, connection released

