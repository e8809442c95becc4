"""MuJoCo scene: kinematics match robot/xarm6.py, servos are stable, the expert succeeds, the
success detector and cameras tell the truth."""

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from evo1_ros.robot.xarm6 import HOME, JOINT_LOWER, JOINT_UPPER, forward_kinematics  # noqa: E402
from evo1_ros.sim.expert import ExpertPolicy, run_expert  # noqa: E402
from evo1_ros.sim.mjcf import BOX_WALL, CAN_HEIGHT  # noqa: E402
from evo1_ros.sim.world import SimWorld  # noqa: E402

pytestmark = pytest.mark.sim

# Reaching out over the table, gripper 0.3 m up: large gravity torques on shoulder and elbow.
REACH = np.array([0.3, 0.3, -1.8, 0.2, 1.5, -0.2])


@pytest.fixture(scope="module")
def world():
    w = SimWorld(image_size=96)
    yield w
    w.close()


def test_tcp_matches_forward_kinematics(world):
    rng = np.random.default_rng(0)
    for q in rng.uniform(JOINT_LOWER, JOINT_UPPER, size=(200, 6)):
        world.data.qpos[:6] = q
        mujoco.mj_kinematics(world.model, world.data)
        pos, rot = world.tcp_pose()
        fk = forward_kinematics(q).tcp
        assert np.linalg.norm(pos - fk[:3, 3]) < 1e-3
        assert np.abs(rot - fk[:3, :3]).max() < 1e-6


def test_arm_holds_pose_under_gravity(world):
    world.reset(0)
    world.data.qpos[:6] = REACH
    world.set_target(REACH, 0.0)
    world.step(2.0)
    assert np.abs(world.joint_positions() - REACH).max() < 1e-3
    assert np.abs(world.joint_velocities()).max() < 1e-3


@pytest.mark.parametrize("joint", range(6))
def test_joint_step_settles_without_oscillation(world, joint):
    world.reset(0)
    target = HOME.copy()
    target[joint] += 0.3
    world.set_target(target, 0.0)
    error = []
    for _ in range(400):  # 0.8 s
        world.step(0.002)
        error.append(target[joint] - world.joint_positions()[joint])
    error = np.array(error) / 0.3
    settled = np.flatnonzero(np.abs(error) > 0.01)[-1] * 0.002
    assert -error.min() < 0.02, "overshoot above 2 %"
    assert settled < 0.4, f"took {settled:.3f} s to settle within 1 %"
    beyond_noise = np.sign(error[np.abs(error) > 0.005])
    assert np.count_nonzero(np.diff(beyond_noise)) <= 1, "oscillates around the target"
    others = np.delete(np.arange(6), joint)
    assert np.abs(world.joint_positions()[others] - target[others]).max() < 1e-3


def test_scripted_expert_succeeds(world):
    successes = [run_expert(world, seed) for seed in range(20)]
    assert np.mean(successes) >= 0.95, f"failed seeds: {np.flatnonzero(~np.array(successes))}"


def test_success_detector(world):
    world.reset(3)
    assert not world.success()  # reset leaves the can on the table beside the box
    box, _ = world.object_pose("box")
    world.set_object_pose("can", box + [0.25, 0.0, CAN_HEIGHT / 2])
    world.step(0.3)
    assert not world.success()
    world.set_object_pose("can", box + [0.0, 0.0, CAN_HEIGHT / 2 + 0.3])  # above the box, not in it
    assert not world.success()
    world.set_object_pose("can", box + [0.0, 0.0, BOX_WALL + CAN_HEIGHT / 2])
    world.step(0.3)
    assert world.success()


def test_cameras_see_the_arm_move(world):
    world.reset(1)
    world.step(0.1)
    before = {cam: world.render(cam) for cam in ("base", "wrist")}
    world.set_target(REACH, 0.85)
    world.step(1.5)
    for cam, image in before.items():
        after = world.render(cam)
        assert image.shape == after.shape == (96, 96, 3) and image.dtype == np.uint8
        assert image.std() > 10 and after.std() > 10, f"{cam} frame is (nearly) constant"
        assert np.abs(after.astype(int) - image).mean() > 5, f"{cam} did not change when the arm moved"


def test_expert_policy_chunks_close_the_loop(world):
    """The expert as a ChunkPolicy, executed like the runtime does: 25 rows of each 50-row chunk."""
    policy = ExpertPolicy(world, action_dt=1 / 30)
    for seed in (7, 8):
        world.reset(seed)
        for _ in range(12):  # 12 x 25 / 30 Hz = 10 s
            chunk = policy.predict_chunk([None, None], world.state(), "put the can in the box")
            assert chunk.shape == (50, 7)
            for action in chunk[:25]:
                world.set_target(action[:6], action[6])
                world.step(1 / 30)
        assert world.success()


def test_rendering_is_headless_by_default(tmp_path):
    # Without MUJOCO_GL MuJoCo would pick GLFW, which cannot render without a display.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    code = ("from evo1_ros.sim.world import SimWorld; w = SimWorld(image_size=32); w.reset(0); "
            "import os; print(os.environ['MUJOCO_GL'], w.render('base').shape)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["osmesa", "(32,", "32,", "3)"]
