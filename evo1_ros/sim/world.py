"""`SimWorld`: the pick-and-place-can scene without ROS — physics, targets, cameras, episodes, success.

One instance is shared by whoever drives the arm (the sim backend's physics thread, or a plain loop
for data generation) and whoever renders cameras; `lock` serialises access to MjData.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Iterator

import mujoco
import numpy as np

from evo1_ros.robot.xarm6 import HOME, JOINT_NAMES
from evo1_ros.sim.mjcf import (
    BOX_HEIGHT,
    BOX_INNER,
    CAN_HEIGHT,
    CAN_RADIUS,
    CAMERAS,
    build_mjcf,
    drive_to_finger,
    finger_to_drive,
)

FINGERS = ("left_finger", "right_finger")


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


class SimWorld:
    def __init__(self, image_size: int = 448, seed: int = 0):
        self.image_size = image_size
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(image_size))
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        joint = self.model.joint
        self._arm_q = np.array([joint(j).qposadr[0] for j in JOINT_NAMES])
        self._arm_v = np.array([joint(j).dofadr[0] for j in JOINT_NAMES])
        self._finger_q = np.array([joint(f).qposadr[0] for f in FINGERS])
        self._object_q = {name: joint(name).qposadr[0] for name in ("can", "box")}
        self._arm_u = np.array([self.model.actuator(j).id for j in JOINT_NAMES])
        self._finger_u = np.array([self.model.actuator(f).id for f in FINGERS])
        self._renderer: mujoco.Renderer | None = None
        self._rng = np.random.default_rng(seed)
        self.episode = 0  # bumps on every reset, so policies can tell episodes apart
        self.reset()

    # --- episodes -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Arm at HOME with the gripper open; can and box at random poses on opposite sides."""
        rng = self._rng if seed is None else np.random.default_rng(seed)
        side = rng.choice((-1.0, 1.0))
        # The can spawns at |y| >= 0.1, clear of the open fingers at HOME (TCP at x 0.345, y 0); the
        # box goes on the other side, and its walls stay below the fingertips at HOME.
        can_xy = (rng.uniform(0.28, 0.48), side * rng.uniform(0.1, 0.26))
        box_xy = (rng.uniform(0.3, 0.46), -side * rng.uniform(0.17, 0.28))
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            self.data.qpos[self._arm_q] = HOME
            self.data.ctrl[self._arm_u] = HOME
            self.set_object_pose("can", (*can_xy, CAN_HEIGHT / 2), rng.uniform(-math.pi, math.pi))
            self.set_object_pose("box", (*box_xy, 0.0), rng.uniform(-0.5, 0.5))
            mujoco.mj_forward(self.model, self.data)
            self.episode += 1

    def set_object_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        """Place "can" or "box" at rest at `pos` (its body origin) with `yaw` about world z."""
        adr = self._object_q[name]
        with self.lock:
            self.data.qpos[adr : adr + 3] = pos
            self.data.qpos[adr + 3 : adr + 7] = _yaw_quat(yaw)
            dof = self.model.joint(name).dofadr[0]
            self.data.qvel[dof : dof + 6] = 0.0
            mujoco.mj_forward(self.model, self.data)

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Privileged state: (position (3,), quaternion wxyz (4,)) of "can" or "box" in link_base."""
        adr = self._object_q[name]
        with self.lock:
            return self.data.qpos[adr : adr + 3].copy(), self.data.qpos[adr + 3 : adr + 7].copy()

    def success(self) -> bool:
        """The can's centre lies over the box's inner floor and its bottom is below the walls' top."""
        can, _ = self.object_pose("can")
        box, box_quat = self.object_pose("box")
        rot = np.empty(9)
        mujoco.mju_quat2Mat(rot, box_quat)
        local = rot.reshape(3, 3).T @ (can - box)
        inside = np.all(np.abs(local[:2]) < BOX_INNER - CAN_RADIUS / 2)
        return bool(inside and local[2] - CAN_HEIGHT / 2 < BOX_HEIGHT)

    # --- arm ------------------------------------------------------------------------------------

    def set_target(self, positions: np.ndarray, gripper: float) -> None:
        """Servo targets: 6 joint angles (rad, clipped to the limits) and drive_joint (0 open .. 0.85)."""
        with self.lock:
            lo, hi = self.model.actuator_ctrlrange[self._arm_u].T
            self.data.ctrl[self._arm_u] = np.clip(positions, lo, hi)
            self.data.ctrl[self._finger_u] = drive_to_finger(gripper)

    def step(self, seconds: float) -> None:
        """Advance physics by `seconds` (rounded to whole timesteps) toward the current targets."""
        n = max(1, round(seconds / self.model.opt.timestep))
        with self.lock:
            mujoco.mj_step(self.model, self.data, nstep=n)

    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        with self.lock:
            return self.data.qpos[self._arm_q].copy()

    def joint_velocities(self) -> np.ndarray:
        with self.lock:
            return self.data.qvel[self._arm_v].copy()

    def gripper(self) -> float:
        """Measured drive_joint: mean finger closure in the 0 (open) .. 0.85 (closed) convention."""
        with self.lock:
            return finger_to_drive(self.data.qpos[self._finger_q].mean())

    def state(self) -> np.ndarray:
        """(7,) joints + gripper drive: the policy's state vector."""
        return np.append(self.joint_positions(), self.gripper())

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """link_tcp position (3,) and rotation matrix (3, 3) in link_base, as simulated."""
        with self.lock:
            site = self.data.site("tcp")
            return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    # --- cameras --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def frame(self, abort=lambda: False) -> Iterator[None]:
        """Capture one frame set (stamp, renders) inside. Here nothing waits: physics runs on its
        own; `LockstepWorld` makes physics and the frames take turns (and `abort` ends its wait)."""
        yield

    def render(self, camera: str) -> np.ndarray:
        """(image_size, image_size, 3) uint8 RGB from camera "base" or "wrist".

        The renderer is created on first use and owns a GL context: call from one thread only.
        Only the scene snapshot holds the lock, so physics keeps running while pixels are drawn.
        """
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; have {CAMERAS}")
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            # free the GL context before interpreter teardown, when the GL bindings are gone
            weakref.finalize(self, self._renderer.close)
        with self.lock:
            self._renderer.update_scene(self.data, camera)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


_shared: SimWorld | None = None
_shared_lock = threading.Lock()


def shared_world(image_size: int | None = None) -> SimWorld:
    """The process-wide SimWorld that the sim backend and the sim camera node share.

    Created on the first call (448 px unless image_size says otherwise); later calls return the
    same world, and an image_size they give must match it.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SimWorld(image_size or 448)
        elif image_size not in (None, _shared.image_size):
            raise ValueError(f"shared SimWorld renders {_shared.image_size} px, asked for {image_size}")
        return _shared
