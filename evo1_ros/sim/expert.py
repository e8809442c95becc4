"""Scripted pick-and-place expert: top-down grasp of the can, carry, drop into the box.

`plan_pick_place` turns object positions into a time-indexed joint trajectory (Cartesian straight
lines solved by damped-least-squares IK on `robot/xarm6.py`'s FK). `ExpertPolicy` serves that plan
as a `ChunkPolicy`. It is *privileged*: instead of looking at the images it reads the object poses
and the clock from the `SimWorld` it is given — that world handle is the whole seam, so only code
that runs in the same process as the sim can use it (demos, data generation, eval of the graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import mujoco
import numpy as np

from evo1_ros.robot.diffik import jacobian, pose_error
from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN, JOINT_LOWER, JOINT_UPPER, forward_kinematics
from evo1_ros.sim.mjcf import BOX_WALL, CAN_HEIGHT
from evo1_ros.sim.world import SimWorld

PLAN_DT = 0.02  # s between trajectory knots; actions in between are interpolated
# TCP heights (m above the table) of the phases; the jaw pads span TCP +- 0.022 m.
APPROACH_Z = 0.22  # fingertips clear the can's top
GRASP_Z = CAN_HEIGHT / 2 + 0.01  # pads around the can's upper middle
CARRY_Z = 0.27  # the held can's bottom clears the box walls
PLACE_Z = GRASP_Z + BOX_WALL + 0.03  # release the can ~3 cm above the box floor
SPEED = 0.3  # m/s, cruise speed of the free moves


@dataclass(frozen=True)
class Plan:
    times: np.ndarray  # (N,) s from the plan's start
    actions: np.ndarray  # (N, 7) joint targets (rad) + gripper drive

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    def at(self, t: np.ndarray | float) -> np.ndarray:
        """Actions at times t (s since the plan's start), linearly interpolated, held after the end."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        return np.stack([np.interp(t, self.times, column) for column in self.actions.T], axis=-1)


def top_down(position, yaw: float) -> np.ndarray:
    """4x4 TCP pose at `position` with the jaws pointing down (link_tcp z = -world z), turned by yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]]
    pose[:3, 3] = position
    return pose


def solve_ik(target: np.ndarray, q: np.ndarray, iters: int = 100, tol: float = 1e-5) -> np.ndarray:
    """Joint angles putting link_tcp at the 4x4 `target`, from the initial guess `q` (damped LSQ).

    Warm starts from the previous knot keep the arm on one IK branch along a path.
    """
    q = np.array(q, dtype=float)
    for _ in range(iters):
        jac, tcp = jacobian(q)
        error = pose_error(tcp, target)  # small-angle orientation error: exact enough near convergence
        if np.abs(error).max() < tol:
            break
        q += jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), error)
        q = np.clip(q, JOINT_LOWER, JOINT_UPPER)
    return q


def _quat(rot: np.ndarray) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, rot.ravel())
    return quat


def _min_jerk(n: int) -> np.ndarray:
    """The n path parameters in (0, 1] with zero velocity and acceleration at both ends."""
    s = np.arange(1, n + 1) / n
    return s**3 * (10 - 15 * s + 6 * s**2)


class _Builder:
    """Appends trajectory knots segment by segment, starting from joint angles q0."""

    def __init__(self, q0: np.ndarray, gripper: float):
        self.rows = [np.append(q0, gripper)]

    @property
    def q(self) -> np.ndarray:
        return self.rows[-1][:6]

    def move(self, goal: np.ndarray, duration: float | None = None) -> None:
        """Straight TCP line (position lerp, orientation slerp) to the 4x4 `goal`, min-jerk timed."""
        start = forward_kinematics(self.q).tcp
        distance = np.linalg.norm(goal[:3, 3] - start[:3, 3])
        duration = duration or max(0.8, 1.5 * distance / SPEED)
        q0, q1 = _quat(start[:3, :3]), _quat(goal[:3, :3])
        turn = np.empty(3)
        mujoco.mju_subQuat(turn, q1, q0)
        gripper = self.rows[-1][6]
        for s in _min_jerk(max(1, round(duration / PLAN_DT))):
            quat, rot = q0.copy(), np.empty(9)
            mujoco.mju_quatIntegrate(quat, turn, s)
            mujoco.mju_quat2Mat(rot, quat)
            pose = np.eye(4)
            pose[:3, :3] = rot.reshape(3, 3)
            pose[:3, 3] = start[:3, 3] + s * (goal[:3, 3] - start[:3, 3])
            self.rows.append(np.append(solve_ik(pose, self.q), gripper))

    def grip(self, gripper: float, duration: float, settle: float) -> None:
        """Ramp the gripper to `gripper` over `duration`, then hold still for `settle` seconds."""
        start = self.rows[-1][6]
        n, n_hold = round(duration / PLAN_DT), round(settle / PLAN_DT)
        for s in np.append(np.arange(1, n + 1) / n, np.ones(n_hold)):
            self.rows.append(np.append(self.q, start + s * (gripper - start)))


def plan_pick_place(q0: np.ndarray, gripper0: float, can_xyz, box_xyz) -> Plan:
    """Trajectory from joints q0 (+ gripper) that puts the can (at can_xyz) into the box (box_xyz)."""
    can_xy, box_xy = np.asarray(can_xyz)[:2], np.asarray(box_xyz)[:2]

    def at(xy, z):  # yaw the jaws radially: joint6 then stays near zero whatever the bearing
        return top_down((*xy, z), math.atan2(xy[1], xy[0]))

    b = _Builder(np.asarray(q0, dtype=float), gripper0)
    b.grip(GRIPPER_OPEN, 0.2, 0.0)
    b.move(at(can_xy, APPROACH_Z))
    b.move(at(can_xy, GRASP_Z), 1.0)
    b.grip(GRIPPER_CLOSED, 0.5, 0.3)
    b.move(at(can_xy, CARRY_Z), 1.0)
    b.move(at(box_xy, CARRY_Z))
    b.move(at(box_xy, PLACE_Z), 1.0)
    b.grip(GRIPPER_OPEN, 0.3, 0.3)
    b.move(at(box_xy, CARRY_Z), 0.8)
    actions = np.array(b.rows)
    return Plan(times=np.arange(len(actions)) * PLAN_DT, actions=actions)


def plan_for(world: SimWorld) -> Plan:
    """The expert's plan from the world's current state (privileged: reads the object poses).
    Only the snapshot holds the world's lock: planning takes ~0.1 s and physics must not wait."""
    with world.lock:
        state, can, box = world.state(), world.object_pose("can")[0], world.object_pose("box")[0]
    return plan_pick_place(state[:6], state[6], can, box)


def run_expert(world: SimWorld, seed: int | None = None, control_dt: float = PLAN_DT, settle: float = 1.0,
               on_tick: Callable[[np.ndarray], None] | None = None) -> bool:
    """One scripted episode straight on the world (no ROS, as fast as physics runs): reset with
    `seed`, plan, feed the plan's action every control_dt, let things settle, return success.
    `on_tick(action)` runs before each tick with the action about to be sent, while the world still
    shows the observation it answers: the place to record (frames, state, action) samples."""
    world.reset(seed)
    plan = plan_for(world)
    for t in np.arange(1, round((plan.duration + settle) / control_dt) + 1) * control_dt:
        action = plan.at(t)[0]
        if on_tick is not None:
            on_tick(action)
        world.set_target(action[:6], action[6])
        world.step(control_dt)
    return world.success()


class ExpertPolicy:
    """`ChunkPolicy` over the scripted expert, for running it through the ROS graph.

    It ignores images and instruction. It (re)plans whenever `world.episode` changes and indexes
    the plan by sim time: chunk row i is the action for `world.time + i * action_dt` (the runtime's
    convention, runtime/chunking.py); `action_dt` must be the runtime's control period.
    """

    action_dim = 7
    num_views = 2

    def __init__(self, world: SimWorld, action_dt: float = 1 / 30, chunk_length: int = 50):
        self.world, self.action_dt, self.chunk_length = world, action_dt, chunk_length
        self.action_rate_hz = 1.0 / action_dt
        self._episode, self._plan, self._t0 = None, None, 0.0

    def predict_chunk(self, images: Sequence[np.ndarray | None], state: np.ndarray, instruction: str) -> np.ndarray:
        with self.world.lock:
            episode, now = self.world.episode, self.world.time
        if episode != self._episode:
            self._episode, self._plan, self._t0 = episode, plan_for(self.world), now
        return self._plan.at(now - self._t0 + self.action_dt * np.arange(self.chunk_length))
