"""`SimWorld`: the sim's tasks without ROS — physics, targets, cameras, episodes, success.

One instance is shared by whoever drives the arm (the sim backend's physics thread, or a plain loop
for data generation) and whoever renders cameras; `lock` serialises access to MjData. Each episode
is one task (`sim/tasks.py`) in one scene (`sim/scenes.py`), drawn from its seed: the objects the
episode uses are shown and placed, the others parked out of sight and out of reach.
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
from evo1_ros.sim import scenes, tasks
from evo1_ros.sim.mjcf import CAMERAS, FREE_OBJECTS, OBJECTS, REST_HEIGHT, build_mjcf, drive_to_finger, finger_to_drive

FINGERS = ("left_finger", "right_finger")
HIDDEN_GROUP = 3  # geom group the default render options leave out (groups 0-2 are drawn)
PARKED = {name: (-1.0, 0.4 * i - 1.0, 0.5) for i, name in enumerate(OBJECTS)}  # off the table, floating


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


class SimWorld:
    def __init__(self, image_size: int = 448, seed: int = 0, task: str = tasks.DEFAULT_TASK, scene: str = "default"):
        """seed: seeds the world's own generator, which draws the seed of a reset not given one;
        task: a task name; scene: a scene name or a mix (`scenes.parse_mix`), drawn per episode."""
        self.image_size = image_size
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(image_size))
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        joint, model = self.model.joint, self.model
        self._arm_q = np.array([joint(j).qposadr[0] for j in JOINT_NAMES])
        self._arm_v = np.array([joint(j).dofadr[0] for j in JOINT_NAMES])
        self._finger_q = np.array([joint(f).qposadr[0] for f in FINGERS])
        self._object_q = {name: joint(name).qposadr[0] for name in FREE_OBJECTS}
        self._target_mocap = model.body("target").mocapid[0]
        self._bodies = {name: model.body(name).id for name in (*OBJECTS, *FINGERS)}
        self._geoms = {name: np.flatnonzero(model.geom_bodyid == body) for name, body in self._bodies.items()}
        self._nominal = {"group": model.geom_group.copy(), "contype": model.geom_contype.copy(),
                         "conaffinity": model.geom_conaffinity.copy()}
        self._arm_u = np.array([self.model.actuator(j).id for j in JOINT_NAMES])
        self._finger_u = np.array([self.model.actuator(f).id for f in FINGERS])
        self._look = scenes.Look(model)
        self._renderer: mujoco.Renderer | None = None
        self._rng = np.random.default_rng(seed)
        self.episode = 0  # bumps on every reset, so policies can tell episodes apart
        self.seed: int | None = None  # the current episode's
        self.task, self._mix = tasks.check_settings(task, scene)
        self._scene_spec = scene
        self.scene: scenes.Scene | None = None  # the current episode's (one of the mix)
        self.reset()

    # --- episodes -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, task: str | None = None, scene: str | None = None) -> None:
        """Next episode: arm at HOME with the gripper open, the task's objects laid out by `seed`
        (None: a seed drawn from the world's own generator) in its scene. `task` and `scene` (names,
        or a mix for `scene`) switch this and later episodes; unknown ones raise UnknownName before
        anything changes."""
        if task is not None or scene is not None:
            self.task, self._mix = tasks.check_settings(task or self.task.name, scene or self._scene_spec)
            self._scene_spec = scene or self._scene_spec
        if seed is None:
            seed = int(self._rng.integers(2**31))
        chosen = scenes.choose(self._mix, seed)
        layout = tasks.sample_layout(self.task, chosen, np.random.default_rng(seed))
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            self.data.qpos[self._arm_q] = HOME
            self.data.ctrl[self._arm_u] = HOME
            for name in OBJECTS:
                self._show(name, name in layout)
                x, y, yaw = layout.get(name, (*PARKED[name][:2], 0.0))
                self.set_object_pose(name, (x, y, REST_HEIGHT[name] if name in layout else PARKED[name][2]), yaw)
            self._look.apply(chosen, np.random.default_rng([seed, scenes.LOOK_STREAM]))
            mujoco.mj_forward(self.model, self.data)
            self.seed, self.scene = seed, chosen
            self.episode += 1

    def _show(self, name: str, shown: bool) -> None:
        """Show an object, or hide it: not drawn, touching nothing, floating where it is put."""
        geoms, m, nominal = self._geoms[name], self.model, self._nominal
        m.geom_group[geoms] = nominal["group"][geoms] if shown else HIDDEN_GROUP
        m.geom_contype[geoms] = nominal["contype"][geoms] if shown else 0
        m.geom_conaffinity[geoms] = nominal["conaffinity"][geoms] if shown else 0
        m.body_gravcomp[self._bodies[name]] = 0.0 if shown else 1.0

    def set_object_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        """Place an object (`mjcf.OBJECTS`) at rest at `pos` (its body origin) with `yaw` about world z."""
        with self.lock:
            if name == "target":
                self.data.mocap_pos[self._target_mocap] = pos
                self.data.mocap_quat[self._target_mocap] = _yaw_quat(yaw)
            else:
                adr = self._object_q[name]
                self.data.qpos[adr : adr + 3] = pos
                self.data.qpos[adr + 3 : adr + 7] = _yaw_quat(yaw)
                dof = self.model.joint(name).dofadr[0]
                self.data.qvel[dof : dof + 6] = 0.0
            mujoco.mj_forward(self.model, self.data)

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Privileged state: (position (3,), quaternion wxyz (4,)) of an object in link_base."""
        with self.lock:
            if name == "target":
                return self.data.mocap_pos[self._target_mocap].copy(), self.data.mocap_quat[self._target_mocap].copy()
            adr = self._object_q[name]
            return self.data.qpos[adr : adr + 3].copy(), self.data.qpos[adr + 3 : adr + 7].copy()

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The poses of the objects this episode shows."""
        with self.lock:
            return {name: self.object_pose(name) for name in OBJECTS
                    if self.model.geom_group[self._geoms[name][0]] != HIDDEN_GROUP}

    def in_gripper(self, name: str) -> bool:
        """Whether a finger touches the object."""
        fingers = {self._bodies[f] for f in FINGERS}
        body = self._bodies[name]
        with self.lock:
            contacts = self.data.contact[: self.data.ncon]
            bodies = self.model.geom_bodyid[np.stack([contacts.geom1, contacts.geom2])] if len(contacts) else ()
            return any((a == body and b in fingers) or (b == body and a in fingers) for a, b in zip(*bodies))

    def success(self) -> bool:
        """The episode's task is done, by its detector (`sim/tasks.py`)."""
        return self.task.success(self)

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
