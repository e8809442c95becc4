"""Operators over real rclpy/DDS: the sim expert -> recorder -> dataset; the teleop node's keyboard
jog and episode keys against the driver and recorder; its teaching source asking the driver for
teaching mode and streaming the guided pose, with the driver on the xArm controller emulator behind
the unmodified SDK."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from evo1_ros.data import bag  # noqa: E402
from evo1_ros.nodes.spin import SpinThread  # noqa: E402
from evo1_ros.nodes.teleop import TeleopNode  # noqa: E402
from evo1_ros.robot import topics, xarm6  # noqa: E402

pytestmark = pytest.mark.ros
INSTRUCTION = "put the can in the box"
CAMERA = topics.camera_topic("base")


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
    from evo1_ros.graphs.record_sim import RecordingGraph

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
        assert graph.expert.done.wait(300), "the expert did not finish its episode"
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
        assert graph.expert.done.wait(180), "the expert did not finish its episode"
    finally:
        close(graph, context)
    (episode,) = sorted((tmp_path / "bags").iterdir())
    meta = bag.read_meta(episode)
    assert meta["success"] is True and small_world.success()
    assert meta["instruction"] == INSTRUCTION
    assert meta["operator_note"].startswith("sim_expert")
    assert "(seed 1000, task pick_place_can, scene default)" in meta["operator_note"]
    assert (meta["task"], meta["scene"], meta["seed"], meta["teleop_source"]) == (
        "pick_place_can", "default", 1000, "sim_expert")
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
        assert graph.expert.done.wait(120), "the expert did not finish its episodes"
    finally:
        close(graph, context)
    episodes = sorted((tmp_path / "bags").iterdir())
    assert [bag.read_meta(e)["success"] for e in episodes] == [False, False]
    notes = [bag.read_meta(e)["operator_note"] for e in episodes]
    assert "seed 1000" in notes[0] and "seed 1001" in notes[1]  # one reset per episode


def test_unknown_source_is_refused_naming_the_known_ones():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match=r"\['keyboard', 'teaching', 'leader', 'spacemouse', 'joy', 'twist'\], "
                                             r"not 'sim_expert'"):
            TeleopNode(**override(context, source="sim_expert"))
    finally:
        rclpy.try_shutdown(context=context)


XBOX = str(Path(__file__).resolve().parents[1] / "config" / "teleop_joy_xbox.yaml")


@pytest.mark.parametrize("params, message", [
    (dict(source="joy"), "source joy needs joy_map"),
    (dict(source="leader", policy="/evo1_inference"), "source leader has no deadman to take over from the policy"),
    (dict(source="teaching", policy="/evo1_inference", joy_map=XBOX), "cannot take over from a policy"),
    (dict(source="leader", leader_config="/no/such/leader.yaml"), "leader: cannot read /no/such/leader.yaml"),
    (dict(source="twist", twist_frame="world"), "frame must be one of"),
    (dict(source="twist", release_s=0.0), "release_s must be a number above 0"),
    (dict(source="leader", leader_joint_names=["a", "b"]), "joint_names needs 6 distinct names"),
    (dict(source="leader", leader_max_step=0.001), "start_step must not exceed max_step"),
    (dict(source="spacemouse", spacemouse_config=XBOX), "SpaceMouse: unknown setting"),
])
def test_wrong_teleop_parameters_are_refused_in_words(params, message):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match=message):
            TeleopNode(**override(context, **params))
    finally:
        rclpy.try_shutdown(context=context)


def test_a_foot_pedal_runs_the_episodes_beside_the_keyboard(tmp_path):
    """A pedal is a Joy device whose map has only episode buttons: start, stop (keep) and discard."""
    from sensor_msgs.msg import Joy

    from evo1_ros.nodes.driver import start_driver
    from evo1_ros.nodes.recorder import RecorderNode

    pedal_map = tmp_path / "pedal.yaml"
    pedal_map.write_text("buttons: {start: 0, stop: 1, discard: 2}\n")

    def make(context, nodes):
        nodes.append(start_driver(**override(context, backend="fake", realtime_priority=0)))
        nodes.append(RecorderNode(**override(context, output_dir=str(tmp_path / "bags"), cameras=["base"])))
        nodes.append(TeleopNode(**override(context, source="keyboard", joy_map=str(pedal_map), operator="grace")))

    graph = Graph(make)
    try:
        recorder, pedal = graph.nodes[1], graph.listener.create_publisher(Joy, "/joy", 10)

        def step(button, recording):
            for pressed in (button, None):
                pedal.publish(Joy(buttons=[int(i == pressed) for i in range(3)]))
                time.sleep(0.1)
            wait_for(lambda: (recorder.writer is not None) == recording, what=f"pedal button {button}")

        pedal.publish(Joy(buttons=[0, 0, 0]))
        time.sleep(0.3)
        step(0, True)
        step(1, False)  # kept, outcome not marked
        step(0, True)
        step(2, False)  # discarded
    finally:
        graph.close()
    (episode,) = sorted((tmp_path / "bags").iterdir())
    meta = bag.read_meta(episode)
    assert meta["success"] is None and meta["interrupted"] is None
    assert (meta["operator"], meta["teleop_source"]) == ("grace", "keyboard")
    assert recorder.tally["unmarked"] == 1 and recorder.tally["discarded"] == 1


def test_sigterm_ends_the_teleop_process_cleanly():
    """`ros2 run evo1_ros teleop_node` spins like every node (nodes/spin.py): SIGTERM ends it, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "evo1_ros.nodes.teleop", "--ros-args", "-p", "source:=keyboard"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "teleop source keyboard" not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None, "teleop did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()


# --- keyboard --------------------------------------------------------------------------------------

def test_keyboard_jogs_the_driver_and_runs_recorder_episodes(tmp_path):
    from evo1_ros.nodes.driver import start_driver
    from evo1_ros.nodes.recorder import RecorderNode

    def make(context, nodes):
        nodes.append(start_driver(**override(context, backend="fake", realtime_priority=0)))
        nodes.append(RecorderNode(**override(context, output_dir=str(tmp_path))))  # its cameras stay silent
        nodes.append(TeleopNode(**override(context, source="keyboard", instruction=INSTRUCTION)))

    graph = Graph(make)
    try:
        teleop = graph.nodes[-1]
        states = graph.latest(JointState, "/joint_states")
        wait_for(lambda: teleop.target is not None, what="the target to start from the measured pose")
        # jog steps change at run time, or are refused with the reason; the source is read-only
        (refused,) = teleop.set_parameters([Parameter("linear_step", value=-0.01)])
        assert not refused.successful and "above 0" in refused.reason
        assert teleop.set_parameters([Parameter("linear_step", value=0.005)])[0].successful
        assert teleop.source.steps.linear == 0.005
        assert "read-only" in teleop.set_parameters([Parameter("source", value="teaching")])[0].reason
        start = forward_tcp(teleop.source.target.joints)
        teleop.handle_key("b")
        for _ in range(10):
            teleop.handle_key("i")  # +x, 5 mm a press
        teleop.handle_key("c")
        np.testing.assert_allclose(forward_tcp(teleop.source.target.joints) - start, [0.05, 0, 0], atol=1e-4)

        def arrived():
            state = states[-1]
            return (np.abs(np.array(state.position[:6]) - teleop.source.target.joints).max() < 1e-3
                    and state.position[6] > 0.8)

        wait_for(arrived, what="the fake arm to reach the jogged target")
        recorder = graph.nodes[1]
        wait_for(lambda: recorder.writer is not None, what="the episode to start")
        teleop.handle_key("s")
        wait_for(lambda: recorder.writer is None, what="the episode to be saved")
    finally:
        graph.close()
    (episode,) = sorted(tmp_path.iterdir())
    meta = bag.read_meta(episode)
    assert meta["success"] is True and meta["instruction"] == INSTRUCTION
    assert meta["message_counts"]["/evo1/joint_trajectory"] > 0


def forward_tcp(q):
    return xarm6.forward_kinematics(q).tcp[:3, 3]


# --- teaching --------------------------------------------------------------------------------------

def test_teaching_asks_the_driver_and_streams_the_guided_pose(xarm_emulator):
    """The driver owns the arm: the teaching source asks its ~/set_teaching for the xArm's joint
    teaching mode (mode 2 on the emulated controller), streams the pose the driver measures while the
    operator moves the arm, and hands the arm back to servo following on the way out."""
    from evo1_ros.nodes.driver import start_driver

    emulator = xarm_emulator()  # the xArm controller emulator, behind the unmodified SDK

    def make(context, nodes):
        nodes.append(start_driver(**override(context, backend="xarm_sdk", robot_ip=emulator.config.ip)))
        nodes.append(TeleopNode(**override(context, source="teaching")))

    graph = Graph(make)
    try:
        teleop = graph.nodes[-1]
        commands = graph.latest(JointTrajectory, topics.TRAJECTORY)
        states = graph.latest(JointState, topics.JOINT_STATES)
        wait_for(lambda: emulator.status()["mode"] == 2, what="the arm in teaching mode")
        held = emulator.status()["servo_targets"]  # the active driver held the arm until then
        guided = [0.3, -0.2, -0.9, 0.1, 1.0, -0.4]
        emulator.guide(guided)  # the operator moves the arm
        wait_for(lambda: states and np.allclose(states[-1].position[:6], guided, atol=1e-6),
                 what="the guided pose as joint state")
        teleop.handle_key("c")  # the gripper key goes into the recorded command
        teleop.handle_key("i")  # jog keys do nothing: the arm is moved by hand
        wait_for(lambda: commands and np.allclose(commands[-1].points[0].positions, guided + [xarm6.GRIPPER_CLOSED],
                                                  atol=1e-6),
                 what="the guided pose and closed gripper as the commanded trajectory")
        assert emulator.status()["servo_targets"] == held  # nothing was sent to move the arm while teaching
        teleop.close_source()
        wait_for(lambda: emulator.status()["mode"] == 1, what="the arm back in servo mode")
    finally:
        graph.close()
