"""sim_node over real rclpy/DDS: cameras on the camera node's topics, the unmodified driver moving
the simulated arm through the sim backend or through the xArm SDK and the controller emulator,
episode resets that the driver follows."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from evo1_ros.nodes.messages import image_to_rgb, to_duration  # noqa: E402
from evo1_ros.nodes.sim import bring_up  # noqa: E402
from evo1_ros.nodes.spin import SpinThread  # noqa: E402
from evo1_ros.robot.xarm6 import GRIPPER_JOINT, HOME, JOINT_NAMES  # noqa: E402
from evo1_ros.sim.world import SimWorld  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim]
TAG = "simtest"


def wait_for(condition, timeout=5.0):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.fixture
def rig(request):
    """sim_node's bringup on one 64 px world (SimNode + driver on a SimBackend, or through the SDK
    when the test parametrizes `rig` with True; resets wired), plus a probe node."""
    through_sdk = getattr(request, "param", False)
    if through_sdk:
        from conftest import free_loopback_address

        free_loopback_address()  # skips where port 502 is out of reach
    context = rclpy.Context()
    rclpy.init(context=context)
    world = SimWorld(image_size=64)
    nodes = bring_up({
        "evo1_sim": dict(world=world, context=context, parameter_overrides=[
            Parameter("fps", value=20.0), Parameter("camera_namespace", value=f"{TAG}/camera"),
            Parameter("through_sdk", value=through_sdk)]),
        "xarm6_driver": dict(context=context, parameter_overrides=[
            Parameter("trajectory_topic", value=f"/{TAG}/trajectory"),
            Parameter("joint_states_topic", value=f"/{TAG}/joint_states"),
            Parameter("watchdog_ms", value=5000.0),
            Parameter("robot_ip", value="192.0.2.1")]),  # a real arm's address: through the SDK, never used
    })
    assert list(nodes) == ["evo1_sim", "xarm6_driver"]  # no clock node: this world runs in real time
    probe = rclpy.create_node("probe", context=context)
    probe.got = {"base": [], "wrist": [], "info": [], "success": [], "joints": []}
    for name in ("base", "wrist"):
        probe.create_subscription(Image, f"/{TAG}/camera/{name}/color/image_raw",
                                  lambda m, n=name: probe.got[n].append(m), qos_profile_sensor_data)
    probe.create_subscription(CameraInfo, f"/{TAG}/camera/base/color/camera_info", probe.got["info"].append, 10)
    probe.create_subscription(Bool, "/evo1_sim/success", probe.got["success"].append, 10)
    probe.create_subscription(JointState, f"/{TAG}/joint_states", probe.got["joints"].append, 10)
    probe.trajectory = probe.create_publisher(JointTrajectory, f"/{TAG}/trajectory", 10)
    probe.driver = nodes["xarm6_driver"]
    spin = SpinThread([*nodes.values(), probe], context)
    yield world, probe, nodes["evo1_sim"]
    spin.stop()
    for node in (*reversed(nodes.values()), probe):
        node.destroy_node()
    rclpy.shutdown(context=context)


def joints(probe):
    return np.array(probe.got["joints"][-1].position[:6])


@pytest.mark.parametrize("rig", [False, True], ids=["sim_backend", "through_sdk"], indirect=True)
def test_cameras_success_and_driver_on_one_world(rig):
    world, probe, sim = rig
    assert wait_for(lambda: len(probe.got["base"]) >= 3 and len(probe.got["wrist"]) >= 3 and probe.got["info"])
    frame = probe.got["base"][-1]
    assert (frame.encoding, frame.width, frame.height) == ("rgb8", 64, 64)
    assert image_to_rgb(frame).std() > 10
    assert probe.got["info"][-1].k[0] > 0 and probe.got["success"][-1].data is False

    target = HOME + [0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
    msg = JointTrajectory(joint_names=[*JOINT_NAMES, GRIPPER_JOINT])
    msg.points = [JointTrajectoryPoint(positions=[*map(float, target), 0.5], time_from_start=to_duration(t))
                  for t in (0.5, 1.0)]
    probe.trajectory.publish(msg)
    # (through the SDK the gripper's position is read between gripper commands: it may come later)
    assert wait_for(lambda: np.abs(joints(probe) - target).max() < 0.01
                    and abs(probe.got["joints"][-1].position[6] - 0.5) < 0.02)

    client = probe.create_client(Trigger, "/evo1_sim/reset")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done) and future.result().success
    time.sleep(0.5)  # the driver re-synced to HOME and does not drag the arm back
    assert np.abs(joints(probe) - HOME).max() < 0.02 and np.abs(world.joint_positions() - HOME).max() < 0.02
    if sim.through_sdk:  # the emulator moved the world's arm, and the driver started over from HOME
        assert [probe.driver.get_parameter(name).value for name in ("backend", "robot_ip")] == [
            "xarm_sdk", sim.emulator.config.ip]
        status = sim.emulator.status()
        assert (status["mode"], status["error"]) == (1, 0) and status["state"] in (1, 2), status
        assert any("new sim episode" in what for _, what in status["events"])
        assert np.abs(np.array(sim.emulator.servo_targets()[-1][1:]) - HOME).max() < 0.02


def test_parameters_are_described_and_changes_applied_or_refused(rig):
    world, probe, sim = rig
    described = sim.describe_parameters(["seed", "image_size"])
    assert all(d.description for d in described)
    assert described[1].read_only and not described[0].read_only
    # image_size cannot change under a running renderer: refused, with rclpy's reason
    (result,) = sim.set_parameters([Parameter("image_size", value=128)])
    assert not result.successful and "read-only" in result.reason
    (result,) = sim.set_parameters([Parameter("fps", value=-5.0)])
    assert not result.successful and "above 0" in result.reason and sim.fps == 20.0
    assert "0 or more" in sim.set_parameters([Parameter("seed", value=-1)])[0].reason
    # a new seed is the next reset's scene
    assert sim.set_parameters([Parameter("seed", value=42)])[0].successful
    client = probe.create_client(Trigger, "/evo1_sim/reset")
    assert client.wait_for_service(timeout_sec=5.0)
    for expected in ("(seed 42,", "(seed 43,"):
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done) and expected in future.result().message


def test_task_scene_and_seed_parameters_choose_the_next_episodes(rig):
    world, probe, sim = rig
    client = probe.create_client(Trigger, "/evo1_sim/reset")
    assert client.wait_for_service(timeout_sec=5.0)

    def reset():
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done)
        return future.result().message

    for name, value, words in (("task", "juggle", "known tasks"), ("scene", "foggy", "known scenes"),
                               ("scene", "wide:0", "positive")):
        [result] = sim.set_parameters([Parameter(name, value=value)])
        assert not result.successful and words in result.reason
    [result] = sim.set_parameters([Parameter("scene", value="mixed")])  # pick_place_can can run there
    assert result.successful
    [result] = sim.set_parameters([Parameter("task", value="pour_cup")])  # but pour_cup cannot
    assert not result.successful and "tasks it takes" in result.reason
    assert all(r.successful for r in sim.set_parameters([Parameter("scene", value="default"),
                                                         Parameter("task", value="pour_cup"),
                                                         Parameter("seed", value=500)]))
    assert reset().endswith("(seed 500, task pour_cup, scene default)")
    assert reset().endswith("(seed 501, task pour_cup, scene default)")
    assert world.task.name == "pour_cup" and set(world.object_poses()) == {"cup", "box"}
    sim.set_parameters([Parameter("seed", value=500)])  # setting the seed starts the count again
    assert "seed 500," in reset()
