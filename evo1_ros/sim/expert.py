"""Scripted experts, one per task (`sim/tasks.py` names them): cans grasped top-down and carried
into the box, onto the other can or onto the target; the cup grasped from the side, carried over
the box and turned over by the wrist.

Each `plan_*` turns object poses into a time-indexed joint trajectory (Cartesian straight lines
solved by damped-least-squares IK on `robot/xarm6.py`'s FK). `ExpertPolicy` serves the plan as a
`ChunkPolicy`. It is *privileged*: instead of looking at the images it reads the object poses and
the clock from the `SimWorld` it is given — that world handle is the whole seam, so only code that
runs in the same process as the sim can use it (demos, data generation, eval of the graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import mujoco
import numpy as np

from evo1_ros.robot.diffik import jacobian, pose_error
from evo1_ros.robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN, JOINT_LOWER, JOINT_UPPER, forward_kinematics
from evo1_ros.sim.mjcf import BOX_WALL, CAN_HEIGHT, CUP_HEIGHT

PLAN_DT = 0.02  # s between trajectory knots; actions in between are interpolated
# TCP heights (m above the table) of the phases; the jaw pads span TCP +- 0.022 m.
APPROACH_Z = 0.22  # fingertips clear the can's top
GRASP_Z = CAN_HEIGHT / 2 + 0.01  # pads around the can's upper middle
CARRY_Z = 0.27  # the held can's bottom clears the box walls
PLACE_Z = GRASP_Z + BOX_WALL + 0.03  # release the can ~3 cm above the box floor
STACK_DROP = 0.008  # m: the held can's bottom over the other can's top when let go
SET_DOWN_DROP = 0.004  # m: the held can's bottom over the table when let go
CUP_GRASP_Z = CUP_HEIGHT / 2  # side grasp, pads across the cup's middle
CUP_GRASP_PITCH = math.radians(50)  # the jaws' reach axis this far below level when grasping the cup
CUP_APPROACH = (0.05, 0.08)  # m back along the reach and up: where the jaws start their way in
POUR_Z = 0.38  # TCP (the cup's centre) height over the box while pouring
POUR_ROLL = math.radians(165)  # wrist roll that turns the cup over (joint6 stays inside its range)
POUR_HOLD = 3.0  # s held turned over at the end of the plan
SPEED = 0.3  # m/s, cruise speed of the free moves
IK_TOLERANCE = 0.003  # m (+ a tenth of the largest rotation-matrix entry error) a knot may miss by


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


class Unreachable(ValueError):
    """A knot the IK could not put the TCP on (joint limits, out of reach)."""


class _Builder:
    """Appends trajectory knots segment by segment, starting from joint angles q0. With `tolerance`
    (m) a knot whose TCP misses its pose by more raises Unreachable."""

    def __init__(self, q0: np.ndarray, gripper: float, tolerance: float | None = None):
        self.rows = [np.append(q0, gripper)]
        self.tolerance = tolerance

    def copy(self) -> "_Builder":
        twin = _Builder(self.q, self.rows[-1][6], self.tolerance)
        twin.rows = list(self.rows)
        return twin

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
            q = solve_ik(pose, self.q)
            if self.tolerance is not None:
                reached = forward_kinematics(q).tcp
                miss = np.linalg.norm(reached[:3, 3] - pose[:3, 3]) + 0.1 * np.abs(reached[:3, :3] - pose[:3, :3]).max()
                if miss > self.tolerance:
                    raise Unreachable(f"TCP misses {np.round(pose[:3, 3], 3)} by {miss:.3f}")
            self.rows.append(np.append(q, gripper))

    def hold(self, seconds: float) -> None:
        self.rows.extend([self.rows[-1]] * round(seconds / PLAN_DT))

    def grip(self, gripper: float, duration: float, settle: float) -> None:
        """Ramp the gripper to `gripper` over `duration`, then hold still for `settle` seconds."""
        start = self.rows[-1][6]
        n, n_hold = round(duration / PLAN_DT), round(settle / PLAN_DT)
        for s in np.append(np.arange(1, n + 1) / n, np.ones(n_hold)):
            self.rows.append(np.append(self.q, start + s * (gripper - start)))


def _radial(xy, z) -> np.ndarray:
    """Top-down TCP pose over `xy` at height z, jaws yawed radially: joint6 stays near zero whatever
    the bearing."""
    return top_down((*xy, z), math.atan2(xy[1], xy[0]))


def _pick_top_down(b: _Builder, xy) -> None:
    """Open, come down over the object at xy, close on it (pads around its upper middle), lift."""
    b.grip(GRIPPER_OPEN, 0.2, 0.0)
    b.move(_radial(xy, APPROACH_Z))
    b.move(_radial(xy, GRASP_Z), 1.0)
    b.grip(GRIPPER_CLOSED, 0.5, 0.3)
    b.move(_radial(xy, CARRY_Z), 1.0)


def _set_down(b: _Builder, xy, z: float) -> None:
    """Carry over xy, lower the TCP to z, let go, rise clear."""
    b.move(_radial(xy, CARRY_Z))
    b.move(_radial(xy, z), 1.0)
    b.grip(GRIPPER_OPEN, 0.3, 0.3)
    b.move(_radial(xy, CARRY_Z), 0.8)


def _plan(b: _Builder) -> Plan:
    actions = np.array(b.rows)
    return Plan(times=np.arange(len(actions)) * PLAN_DT, actions=actions)


def plan_pick_place(q0: np.ndarray, gripper0: float, poses: dict) -> Plan:
    """From joints q0 (+ gripper): the can into the box (dropped ~3 cm above its floor)."""
    b = _Builder(np.asarray(q0, dtype=float), gripper0)
    _pick_top_down(b, poses["can"][0][:2])
    _set_down(b, poses["box"][0][:2], PLACE_Z)
    return _plan(b)


def plan_stack(q0: np.ndarray, gripper0: float, poses: dict) -> Plan:
    """The can onto the other can: let go with its bottom STACK_DROP above the other's top."""
    b = _Builder(np.asarray(q0, dtype=float), gripper0)
    _pick_top_down(b, poses["can"][0][:2])
    _set_down(b, poses["can2"][0][:2], CAN_HEIGHT + GRASP_Z + STACK_DROP)
    return _plan(b)


def plan_place_at(q0: np.ndarray, gripper0: float, poses: dict) -> Plan:
    """The can set down standing on the target's centre."""
    b = _Builder(np.asarray(q0, dtype=float), gripper0)
    _pick_top_down(b, poses["can"][0][:2])
    _set_down(b, poses["target"][0][:2], GRASP_Z + SET_DOWN_DROP)
    return _plan(b)


def side_on(position, bearing: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """4x4 TCP pose at `position` reaching out along `bearing`, tilted `pitch` below horizontal
    (link_tcp z outward and down), the jaws closing horizontally and link6 x (the wrist camera's
    side) up; then rolled by `roll` about the reach axis (joint6)."""
    out, up = np.array([math.cos(bearing), math.sin(bearing), 0.0]), np.array([0.0, 0.0, 1.0])
    reach = math.cos(pitch) * out - math.sin(pitch) * up
    above = math.cos(pitch) * up + math.sin(pitch) * out
    x = math.cos(roll) * above + math.sin(roll) * np.cross(reach, above)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([x, np.cross(reach, x), reach])
    pose[:3, 3] = position
    return pose


def _first_reachable(b: _Builder, ways) -> _Builder:
    """The builder extended by the first of `ways` (each extends a copy) whose knots all reach."""
    for way in ways:
        trial = b.copy()
        try:
            way(trial)
            return trial
        except Unreachable:
            continue
    raise Unreachable("no way tried reaches")


def plan_pour(q0: np.ndarray, gripper0: float, poses: dict) -> Plan:
    """Pinch the cup from the side with the jaws pitched down, lift it, carry it over the box
    while levelling the jaws, and roll the wrist until the opening points down; hold it there.

    Why this way: a level side grasp at table height is out of the xArm6's reach near its base
    (joint5 and the elbow run into their limits), a pitched one is not; and the roll about a level
    reach axis turns the cup's axis (which starts CUP_GRASP_PITCH off that axis' normal) to
    cos(CUP_GRASP_PITCH) * cos(POUR_ROLL) = -0.62 vertical: 52 degrees off straight down. The
    reach is radial where the arm can do it, else turned by up to 60 degrees (objects near the base
    or far to the side), whichever first reaches every knot."""
    cup, box = poses["cup"][0][:2], poses["box"][0][:2]
    cup_bearing, box_bearing = math.atan2(cup[1], cup[0]), math.atan2(box[1], box[0])

    def pick(bearing):
        def way(b: _Builder) -> None:
            grasp = side_on((*cup, CUP_GRASP_Z), bearing, CUP_GRASP_PITCH)
            before = grasp.copy()  # back along the reach and up: the jaws come in over the rim
            before[:3, 3] += -CUP_APPROACH[0] * grasp[:3, 2] + (0.0, 0.0, CUP_APPROACH[1])
            b.grip(GRIPPER_OPEN, 0.2, 0.0)
            b.move(before, 1.6)
            b.move(grasp, 1.0)
            b.grip(GRIPPER_CLOSED, 0.5, 0.3)
            b.move(side_on((*cup, POUR_Z), bearing, CUP_GRASP_PITCH), 1.2)
        return way

    def pour(bearing):
        def way(b: _Builder) -> None:
            b.move(side_on((*box, POUR_Z), bearing))
            # joint6 turns the cup over (the reach axis is joint6's): the way that keeps it in its range
            roll = -POUR_ROLL if b.q[5] > 0 else POUR_ROLL
            b.move(side_on((*box, POUR_Z), bearing, roll=roll), 1.5)
            b.hold(POUR_HOLD)
        return way

    turns = np.radians([0, 30, -30, 60, -60])
    b = _Builder(np.asarray(q0, dtype=float), gripper0, tolerance=IK_TOLERANCE)
    b = _first_reachable(b, [pick(cup_bearing + t) for t in turns])
    b = _first_reachable(b, [pour(box_bearing + t) for t in turns])
    return _plan(b)


def plan_for(world) -> Plan:
    """The expert's plan for the world's task from its current state (privileged: reads the object
    poses). Only the snapshot holds the world's lock: planning takes ~0.1 s and physics must not wait."""
    with world.lock:
        state, poses = world.state(), world.object_poses()
    return world.task.expert(state[:6], state[6], poses)


def run_expert(world, seed: int | None = None, control_dt: float = PLAN_DT, settle: float = 1.0,
               on_tick: Callable[[np.ndarray], None] | None = None) -> bool:
    """One scripted episode straight on a SimWorld (no ROS, as fast as physics runs): reset with
    `seed` (the world's task and scene), plan, feed the plan's action every control_dt, let things
    settle, return success.
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

    def __init__(self, world, action_dt: float = 1 / 30, chunk_length: int = 50):
        self.world, self.action_dt, self.chunk_length = world, action_dt, chunk_length
        self.action_rate_hz = 1.0 / action_dt
        self._episode, self._plan, self._t0 = None, None, 0.0

    def predict_chunk(self, images: Sequence[np.ndarray | None], state: np.ndarray, instruction: str) -> np.ndarray:
        with self.world.lock:
            episode, now = self.world.episode, self.world.time
        if episode != self._episode:
            self._episode, self._plan, self._t0 = episode, plan_for(self.world), now
        return self._plan.at(now - self._t0 + self.action_dt * np.arange(self.chunk_length))
