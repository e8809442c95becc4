"""An operator takes the arm over from a running policy, over real rclpy/DDS: the inference node
(its chunk scheduler, ~/pause and ~/resume; a policy that holds one pose), the driver, the recorder
and the teleop node with a Twist device. The recorded episode converts with the intervention flag
on exactly the steps whose action is the operator's, and reads back with it through LeRobot."""

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import Twist  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from evo1_ros import cli  # noqa: E402
from evo1_ros.data import bag  # noqa: E402
from evo1_ros.nodes.messages import array_to_image  # noqa: E402
from evo1_ros.robot import topics, xarm6  # noqa: E402
from test_data_convert import LEROBOT_PYTHON, READ_BACK  # noqa: E402
from test_teleop_node import Graph, override, wait_for  # noqa: E402

pytestmark = pytest.mark.ros
HELD = np.append(xarm6.HOME + np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0]), 0.2)  # what the policy commands
CAMERAS = ("base", "wrist")


class HoldPolicy:
    """A policy whose every chunk holds HELD (the network is not what is tested here)."""

    num_views, action_dim, action_rate_hz, chunk_length = 2, 7, 0.0, 16

    def predict_chunk(self, images, state, instruction):
        return np.tile(HELD, (self.chunk_length, 1))


@pytest.mark.slow  # ~10 s to record, ~15 s for LeRobot's writer and reader
def test_operator_takes_over_from_the_policy_and_the_episode_converts_with_the_flag(tmp_path):
    from evo1_ros.data.convert import convert
    from evo1_ros.nodes.driver import start_driver
    from evo1_ros.nodes.inference import InferenceNode
    from evo1_ros.nodes.recorder import RecorderNode
    from evo1_ros.nodes.teleop import TeleopNode

    def make(context, nodes):
        nodes.append(start_driver(**override(context, backend="fake", realtime_priority=0)))
        nodes.append(RecorderNode(**override(context, output_dir=str(tmp_path / "bags"))))
        nodes.append(InferenceNode(policy=HoldPolicy(), **override(context, control_rate_hz=30.0,
                                                                    instruction="hold", sync_state_to_images=False)))
        nodes.append(TeleopNode(**override(context, source="twist", policy="/evo1_inference", release_s=0.3,
                                           twist_linear_scale=0.1, instruction="hold")))

    graph = Graph(make)
    _, recorder, inference, teleop = graph.nodes
    cameras = {name: graph.listener.create_publisher(Image, topics.camera_topic(name), 10) for name in CAMERAS}
    twist_pub = graph.listener.create_publisher(Twist, "/spacenav/twist", 10)
    flags = graph.latest(Bool, topics.INTERVENTION)
    commands = graph.latest(JointTrajectory, topics.TRAJECTORY)
    forward = [0.0]  # the operator's push along x, -1 .. 1
    stop = threading.Event()

    def stream():  # cameras at 15 Hz, the Twist device at 50 Hz
        frame, tick = array_to_image(np.full((12, 16, 3), 90, np.uint8), "rgb8"), 0
        while not stop.wait(0.02):
            msg = Twist()
            msg.linear.x = forward[0]
            twist_pub.publish(msg)
            if tick % 3 == 0:
                frame.header.stamp = graph.listener.get_clock().now().to_msg()
                for publisher in cameras.values():
                    publisher.publish(frame)
            tick += 1

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        wait_for(lambda: commands and len(commands[-1].points) > 1, what="the policy driving")
        assert teleop.control == "policy" and not flags[-1].data
        teleop.episode("start")
        wait_for(lambda: recorder.writer is not None, what="the episode to start")
        time.sleep(1.0)
        forward[0] = 1.0  # the operator pushes: the policy is paused, the operator has the arm
        wait_for(lambda: teleop.control == "operator", what="the operator to take over")
        assert inference._paused
        time.sleep(1.5)
        forward[0] = 0.0  # released: after release_s the policy gets the arm back
        wait_for(lambda: teleop.control == "policy", what="the policy to get the arm back")
        assert not inference._paused
        wait_for(lambda: len(commands[-1].points) > 1, what="the policy's targets again")
        time.sleep(1.0)
        teleop.episode("stop")
        wait_for(lambda: recorder.writer is None, what="the episode to be saved")
    finally:
        stop.set()
        thread.join()
        graph.close()

    (episode,) = sorted((tmp_path / "bags").iterdir())
    meta = bag.read_meta(episode)
    assert meta["teleop_source"] == "twist" and meta["interrupted"] is None
    assert meta["message_counts"][topics.INTERVENTION] > 50
    dataset = convert([episode], tmp_path / "dataset", rate=10, image_size=8, log=lambda _: None)
    (converted,) = dataset["episodes"]
    data = np.load(tmp_path / "dataset" / converted["file"])
    operators = ~np.isclose(data["action"], HELD, atol=1e-5).all(axis=1)  # the policy only ever commands HELD
    assert data["intervention"].tolist() == operators.tolist()
    # one block of steps, about as long as the operator had the arm (1.5 s pushing + the release)
    assert 12 <= converted["intervention_steps"] <= 25
    flagged = np.flatnonzero(data["intervention"])
    assert np.all(np.diff(flagged) == 1) and 5 <= flagged[0] and flagged[-1] < len(data["intervention"]) - 5
    # the operator pushed along +x: its targets moved the TCP forward
    tcp = [xarm6.forward_kinematics(q[:6]).tcp[0, 3] for q in data["action"][flagged]]
    assert tcp[-1] - xarm6.forward_kinematics(HELD[:6]).tcp[0, 3] > 0.08

    if not Path(LEROBOT_PYTHON).is_file():  # CI has it (scripts/setup_lerobot.sh)
        pytest.skip("no LeRobot venv: the LeRobot read-back of this episode needs scripts/setup_lerobot.sh")
    lerobot = tmp_path / "lerobot"
    assert cli.main(["convert", str(episode), "--out", str(lerobot), "--format", "lerobot", "--rate", "10",
                     "--image-size", "8", "--repo-id", "local/lr", "--lerobot-python", LEROBOT_PYTHON]) == 0
    subprocess.run([LEROBOT_PYTHON, "-c", READ_BACK, str(lerobot), str(tmp_path / "back.npz")], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    back = np.load(tmp_path / "back.npz")
    assert back["intervention"].tolist() == data["intervention"].tolist()
    np.testing.assert_array_equal(back["action"], data["action"])
