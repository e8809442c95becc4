"""The `sim` driver backend: made by the driver's factory (registered by the ROS layer), steps in
real time, follows commands."""

import time

import numpy as np
import pytest

pytest.importorskip("mujoco")

import evo1_ros.nodes  # noqa: E402,F401  (registers the sim backend, as for the driver node)
from evo1_ros.robot.backends import make_backend  # noqa: E402
from evo1_ros.sim import world as world_module  # noqa: E402
from evo1_ros.sim.backend import SimBackend  # noqa: E402
from evo1_ros.sim.world import SimWorld, shared_world  # noqa: E402

pytestmark = pytest.mark.sim


def test_factory_makes_a_backend_on_the_shared_world(monkeypatch):
    monkeypatch.setattr(world_module, "_shared", None)  # a fresh process-wide world, dropped after
    shared = shared_world(image_size=64)
    backend = make_backend("sim")
    assert isinstance(backend, SimBackend) and backend.world is shared
    with pytest.raises(ValueError):
        shared_world(image_size=128)


def test_steps_in_real_time_and_follows_commands():
    backend = SimBackend(SimWorld(image_size=64))
    start = backend.connect()
    wall, sim = time.monotonic(), backend.world.time
    target = start.positions + 0.2
    backend.command(target, 0.4)
    time.sleep(1.0)
    state = backend.read_state()
    rate = (backend.world.time - sim) / (time.monotonic() - wall)
    assert 0.9 < rate < 1.05
    assert np.abs(state.positions - target).max() < 2e-3 and abs(state.gripper - 0.4) < 0.01

    backend.command(start.positions, 0.0)
    time.sleep(0.05)
    backend.stop()  # hold about where the arm is now, not at the last command
    stopped_at = backend.read_state().positions
    time.sleep(0.5)
    held = backend.read_state().positions
    assert np.abs(held - stopped_at).max() < 0.05 and np.abs(held - start.positions).max() > 0.1
    backend.close()
    frozen = backend.world.time
    time.sleep(0.05)
    assert backend.world.time == frozen


def test_lockstep_physics_runs_one_frame_period_per_frame_set_and_stands_still_while_held():
    from evo1_ros.sim.lockstep import LockstepWorld

    world = LockstepWorld(image_size=64, fps=10.0)
    backend = SimBackend(world, speed=2.0)
    backend.connect()
    try:
        period_ns = world.frame_steps * round(world.model.opt.timestep * 1e9)
        assert period_ns == 100_000_000
        time.sleep(0.2)
        assert world.steps_ns == 0  # no frame captured yet: physics waits for the cameras
        with world.frame():
            world.render("base")
        time.sleep(0.2)  # 0.1 s of sim time at speed 2 takes 0.05 s
        assert world.steps_ns == period_ns  # one period, not more: the next frame set is due
        with world.frame():  # returns at once: physics has run the period
            pass
        with world.hold():
            time.sleep(0.3)  # a slow policy: sim time must not move meanwhile
            assert world.steps_ns == period_ns
        time.sleep(0.2)
        assert world.steps_ns == 2 * period_ns  # released: the granted period runs
    finally:
        backend.close()
        world.close()
