"""The xarm6_inference graph running for real, over rclpy/DDS with a tiny random checkpoint:
`evo1-ros launch` (one process) and the launch file under a real `ros2 launch` (skipped without
launch_ros), each with the fake backend and with the sim; Ctrl-C ends either cleanly."""

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from evo1_ros import cli  # noqa: E402
from evo1_ros.nodes.messages import array_to_image  # noqa: E402
from evo1_ros.graphs.launch import xarm6_inference  # noqa: E402
from evo1_ros.robot.description import xarm6_urdf  # noqa: E402
from evo1_ros.robot.xarm6 import JOINT_NAMES  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
TAG = "launchtest"
STARTUP_S = 180.0  # model load + first chunk on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("checkpoint") / "evo1-tiny"
    assert cli.main(["init", "--out", str(path)]) == 0
    return path


def params_file(directory: Path) -> Path:
    """config/evo1.yaml with this test's topics (other tests share the DDS domain) and a slow pace:
    a 1 Hz control rate makes a 16-step chunk last 16 s, longer than a CPU chunk takes here."""
    params = yaml.safe_load((REPO / "config" / "evo1.yaml").read_text())
    topics = dict(trajectory_topic=f"/{TAG}/trajectory")
    params["evo1_inference"]["ros__parameters"].update(
        topics, joint_state_topic=f"/{TAG}/joint_states", max_observation_age_ms=5000.0)
    params["xarm6_driver"]["ros__parameters"].update(
        topics, joint_states_topic=f"/{TAG}/joint_states", watchdog_ms=5000.0, realtime_priority=0)
    params["evo1_camera"]["ros__parameters"]["camera_namespace"] = f"{TAG}/camera"
    params["evo1_sim"]["ros__parameters"].update(camera_namespace=f"{TAG}/camera", image_size=64, fps=5.0)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def ros2_prefix(directory: Path) -> Path:
    """What `colcon build` would install, enough for `ros2 launch evo1_ros ...`: the ament index
    entry, share/evo1_ros and the node executables in lib/evo1_ros (pip ignores setup.cfg there)."""
    prefix = directory / "install"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "evo1_ros").touch()
    share = prefix / "share" / "evo1_ros"
    share.mkdir()
    shutil.copy(REPO / "package.xml", share)
    for name in ("launch", "config"):  # copied: ros2 launch does not look into symlinked directories
        shutil.copytree(REPO / name, share / name)
    lib = prefix / "lib" / "evo1_ros"
    lib.mkdir(parents=True)
    for entry in importlib.metadata.distribution("evo1_ros").entry_points.select(group="console_scripts"):
        module, function = entry.value.split(":")
        script = lib / entry.name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)
    # Stand-ins for the ROS install's C++ programs that rviz:=true starts: robot_state_publisher
    # publishes the URDF it was given (latched, like the real one); rviz2 notes its arguments.
    stand_ins = {"robot_state_publisher": ROBOT_STATE_PUBLISHER, "rviz2": RVIZ2}
    for package, source in stand_ins.items():
        (index / package).touch()
        (prefix / "lib" / package).mkdir()
        script = prefix / "lib" / package / package
        script.write_text(f"#!{sys.executable}\n{source}")
        script.chmod(0o755)
    return prefix


ROBOT_STATE_PUBLISHER = """
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

rclpy.init()
node = rclpy.create_node("robot_state_publisher")
latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
publisher = node.create_publisher(String, "robot_description", latched)
publisher.publish(String(data=node.declare_parameter("robot_description", "").value))
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""
RVIZ2 = """
import os, signal, sys
open(os.environ["RVIZ2_ARGV"], "w").write("\\n".join(sys.argv[1:]))
signal.sigwait([signal.SIGINT, signal.SIGTERM])
"""


class Probe:
    """Feeds camera images (unless the sim does) and records what the graph publishes."""

    def __init__(self, feed_images: bool):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_probe", context=self.context)
        self.got = {"trajectory": [], "joints": [], "path": [], "image": [], "urdf": [], "ghost_urdf": []}
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for key, typ, topic, qos in [
            ("urdf", String, "/robot_description", latched),
            ("ghost_urdf", String, "/ghost/robot_description", latched),
            ("trajectory", JointTrajectory, f"/{TAG}/trajectory", 10),
            ("joints", JointState, f"/{TAG}/joint_states", 10),
            ("path", Marker, "/evo1_inference/predicted_path", 10),
            ("image", Image, f"/{TAG}/camera/wrist/color/image_raw", qos_profile_sensor_data),
        ]:
            self.node.create_subscription(typ, topic, lambda msg, k=key: self.got[k].append(msg), qos)
        if feed_images:
            pubs = [self.node.create_publisher(Image, f"/{TAG}/camera/{name}/color/image_raw", qos_profile_sensor_data)
                    for name in ("base", "wrist")]
            frame = array_to_image(np.full((64, 64, 3), 90, np.uint8), "rgb8")
            self.node.create_timer(0.2, lambda: [pub.publish(frame) for pub in pubs])
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait(self, counts: dict, timeout: float, process: subprocess.Popen) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None:
            if all(len(self.got[key]) >= n for key, n in counts.items()):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def launch_command(launcher: str, tmp_path: Path, env: dict) -> list[str]:
    if launcher == "evo1-ros":
        return [sys.executable, "-m", "evo1_ros.cli", "launch", "xarm6_inference"]
    pytest.importorskip("launch_ros.actions", reason="no ROS 2 launch (a ROS 2 install or its launch packages)")
    pytest.importorskip("ros2launch")
    import launch_ros

    # the child must import launch/launch_ros/ros2cli from wherever this interpreter found them
    env["PYTHONPATH"] = os.pathsep.join([str(Path(launch_ros.__file__).parents[1]), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(ros2_prefix(tmp_path)), env.get("AMENT_PREFIX_PATH", "")])
    # sigterm_timeout: a CPU chunk in flight on a loaded machine outlasts launch's 5 s before SIGTERM
    return [sys.executable, "-c", "import sys; from ros2cli.cli import main; sys.exit(main())",
            "launch", "evo1_ros", "xarm6_inference.launch.py", "sigterm_timeout:=30"]


@pytest.mark.parametrize("use_sim, through_sdk", [
    ("false", "false"), ("true", "false"), pytest.param("true", "true", marks=pytest.mark.slow)],
    ids=["fake", "sim", "sim_through_sdk"])
@pytest.mark.parametrize("launcher", ["evo1-ros", "ros2"])
def test_graph_runs_and_stops_on_ctrl_c(launcher, use_sim, through_sdk, tmp_path, request):
    if use_sim == "true":
        pytest.importorskip("mujoco")
        pytest.importorskip("evo1_ros.nodes.sim")
    if through_sdk == "true":
        from conftest import free_loopback_address

        free_loopback_address()  # skips where port 502 is out of reach
    env = dict(os.environ)
    command = launch_command(launcher, tmp_path, env)  # skips first when there is no ros2 launch
    checkpoint = request.getfixturevalue("checkpoint")
    # under ros2 launch, rviz:=true too (with stand-ins for robot_state_publisher and rviz2)
    rviz = launcher == "ros2" and use_sim == "false"
    env["RVIZ2_ARGV"] = str(tmp_path / "rviz2_argv")
    command += [f"rviz:={str(rviz).lower()}",
        f"use_sim:={use_sim}", f"sim_through_sdk:={through_sdk}", f"checkpoint:={checkpoint}",
        "instruction:=put the can in the box",
        "control_rate:=1", f"params_file:={params_file(tmp_path)}", "cameras:=base,wrist"]
    probe = Probe(feed_images=use_sim == "false")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        expected = {"trajectory": 2, "joints": 10, "path": 1} | ({"image": 2} if use_sim == "true" else {}) | (
            {"urdf": 1, "ghost_urdf": 1} if rviz else {})
        running = probe.wait(expected, STARTUP_S, process)
        counts = {key: len(value) for key, value in probe.got.items()}
        assert running, f"{counts}\n{''.join(output)[-4000:]}"
        trajectory = probe.got["trajectory"][-1]
        assert list(trajectory.joint_names)[:6] == list(JOINT_NAMES) and trajectory.points
        if rviz:
            assert probe.got["urdf"][0].data == xarm6_urdf()
            ghost = xarm6_inference({"rviz": "true"}).find("ghost_state_publisher")
            assert probe.got["ghost_urdf"][0].data == ghost.parameters["robot_description"]
            argv = Path(env["RVIZ2_ARGV"]).read_text().split("\n")
            assert argv[:2] == ["-d", str(Path(env["AMENT_PREFIX_PATH"].split(os.pathsep)[0]) / "share" / "evo1_ros"
                                          / "config" / "evo1.rviz")]
    finally:
        process.send_signal(signal.SIGINT)  # ros2 launch passes it on to every node process
        try:
            rc = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            rc = process.wait()
        reader.join(timeout=5)
        probe.close()
    log = "".join(output)
    assert rc == 0, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    if through_sdk == "true":  # the driver reached the sim arm through the SDK and the emulator
        assert re.search(r"emulated xArm controller on 127\.[\d.]+ .*\n(.*\n)*.*xarm_sdk backend connected", log), \
            log[-4000:]
    if launcher != "evo1-ros":  # each node process's own main handles the SIGINT that ros2 launch passes on
        executables = ["sim_node"] if use_sim == "true" else ["xarm6_driver", "robot_state_publisher", "rviz2"]
        for executable in executables + ["inference_node"]:
            assert re.search(rf"\[{executable}-\d+\]: process has finished cleanly", log), log[-4000:]
        assert "process has died" not in log, log[-4000:]
        if use_sim == "false":  # the launch file configured and then activated the lifecycle driver
            assert re.search(r"\[xarm6_driver\]: active: following", log), log[-4000:]


def test_a_node_that_cannot_start_is_named_and_nothing_keeps_running():
    # no such camera here (or no pyrealsense2): the camera node is the first to start, so it fails alone
    result = subprocess.run([sys.executable, "-m", "evo1_ros.cli", "launch", "xarm6_inference",
                             "cameras:=base:_000000000001", "checkpoint:=/nonexistent"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "[evo1_ros_launch]: evo1_camera failed to start:" in result.stderr
    assert "Traceback" not in result.stderr
