"""The emulated controller's arm: `KinematicArm` (moves exactly as commanded, within the joint speed
limit) or `SimArm` (the MuJoCo world of `evo1_ros.sim`, stepped by the controller's cycle).

Both take the controller's targets (6 joint angles, rad; gripper `drive_joint`, 0 open .. 0.85
closed) and are advanced by `step(dt)` from the controller's cycle thread only. `take_reset()` tells
the controller that the arm was put back at its start by someone else (a sim episode reset).
"""

from __future__ import annotations

import numpy as np

from evo1_ros.robot import xarm6


class KinematicArm:
    """Joints move straight to their target at up to `max_speed` (rad/s); the gripper at its speed."""

    name = "kinematic"

    def __init__(self, initial=xarm6.HOME, max_speed: float = np.pi, gripper: float = xarm6.GRIPPER_OPEN):
        self.max_speed = max_speed
        self._joints = np.array(initial, dtype=float)
        self._target = self._joints.copy()
        self._velocities = np.zeros(xarm6.NUM_JOINTS)
        self._gripper = float(gripper)
        self._gripper_target, self._gripper_speed = self._gripper, 1.0

    def set_target(self, joints: np.ndarray) -> None:
        self._target = np.array(joints, dtype=float)

    def set_gripper_target(self, drive: float, speed: float) -> None:
        """speed: drive units per second."""
        self._gripper_target, self._gripper_speed = float(drive), float(speed)

    def place(self, joints: np.ndarray) -> None:
        """Put the arm here by hand (teaching): it stays where it is put."""
        self._joints = np.array(joints, dtype=float)
        self._target = self._joints.copy()

    def take_reset(self) -> bool:
        return False  # nothing but the controller moves it

    def step(self, dt: float) -> None:
        if dt <= 0:
            return
        move = np.clip(self._target - self._joints, -self.max_speed * dt, self.max_speed * dt)
        self._joints += move
        self._velocities = move / dt
        step = self._gripper_speed * dt
        self._gripper += float(np.clip(self._gripper_target - self._gripper, -step, step))

    def joints(self) -> np.ndarray:
        return self._joints.copy()

    def velocities(self) -> np.ndarray:
        return self._velocities.copy()

    def gripper(self) -> float:
        return self._gripper


class SimArm:
    """A `SimWorld`'s xArm6 as the controller's arm. The controller's cycle steps the physics, so
    the world must not be stepped by anyone else (no `SimBackend` on it); cameras may render it.
    Its owner may reset it for a new episode (sim_node's `~/reset`): the arm then stands at HOME,
    and the arm aims where it stands, since a target of the last episode would drag it back."""

    name = "sim"

    def __init__(self, world, speed: float = 1.0):
        """speed: physics pace, sim seconds per second of the controller's cycle (1 = real time)."""
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.world, self.speed = world, speed
        self._target = world.joint_positions()
        self._gripper_target = world.gripper()
        self._episode = world.episode  # the episode the targets belong to
        self._reset_seen = False  # a reset the controller has not been told of
        self._owed = 0.0  # seconds of physics owed to the controller's clock (whole timesteps run)

    def set_target(self, joints: np.ndarray) -> None:
        self._target = np.array(joints, dtype=float)

    def set_gripper_target(self, drive: float, speed: float) -> None:
        self._gripper_target = float(drive)  # the sim's finger actuators set the speed

    def place(self, joints: np.ndarray) -> None:
        raise ValueError("the sim arm moves by physics only; guide the kinematic arm instead")

    def _follow_episode(self) -> None:
        """With the world's lock held: after a reset, aim where the arm now stands."""
        if self.world.episode != self._episode:
            self._episode = self.world.episode
            self._target, self._gripper_target = self.world.joint_positions(), self.world.gripper()
            self._reset_seen = True

    def take_reset(self) -> bool:
        """Whether the world was reset since the last call (the arm is at its start, aiming there)."""
        with self.world.lock:
            self._follow_episode()
        seen, self._reset_seen = self._reset_seen, False
        return seen

    def step(self, dt: float) -> None:
        timestep = self.world.model.opt.timestep
        self._owed += dt * self.speed
        steps = int(self._owed / timestep)
        if steps:
            with self.world.lock:  # no reset between looking and aiming (one after aiming sets its own targets)
                self._follow_episode()
                self.world.set_target(self._target, self._gripper_target)
            self.world.step(steps * timestep)  # a LockstepWorld runs what its frames allow: the rest is dropped
            self._owed -= steps * timestep

    def joints(self) -> np.ndarray:
        return self.world.joint_positions()

    def velocities(self) -> np.ndarray:
        return self.world.joint_velocities()

    def gripper(self) -> float:
        return self.world.gripper()
