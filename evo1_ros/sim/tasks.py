"""The sim's tasks, after the paper's xArm6 suite: one definition each (name, instruction, objects,
reset distribution, success detector, scripted expert), so eval, demo and record-sim pass names.

- `pick_place_can`: put the can into the box.
- `stack_cans`: two identical cans; put one on top of the other and let go.
- `place_at_target`: hand delivery; set the can down on a green disc whose position varies.
- `pour_cup`: lift a cup and tilt it over the box until its opening points down.

Every task moves an *item* to a *destination*. A layout puts the item on one side of the arm and the
destination on the other (`scenes.Scene` widens the ranges, adds a distractor, or fixes a set of
objects as `mixed` does); nothing spawns under the open gripper at HOME.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mujoco
import numpy as np

from evo1_ros.robot.xarm6 import HOME, forward_kinematics
from evo1_ros.runtime.deployment import DeploymentError, load_deployment
from evo1_ros.sim import expert
from evo1_ros.sim.mjcf import (
    BOX_HEIGHT,
    BOX_INNER,
    BOX_WALL,
    CAN_HEIGHT,
    CAN_RADIUS,
    CUP_HEIGHT,
    FOOTPRINT,
    TARGET_RADIUS,
)
from evo1_ros.sim.scenes import SCENES, VARIATIONS, Scene, UnknownName, lookup, parse_mix

UPRIGHT_COS = math.cos(math.radians(15))  # an upright can leans less than this from vertical
POURING_COS = math.cos(math.radians(60))  # a cup pours once its opening is within 60 deg of straight down
RESTING_TOL = 0.012  # m: an object's height off its rest height that still counts as standing there

# Where layouts put things (link_base frame, m). The item goes on one side of the arm (y's sign), the
# destination on the other; `wide` scales the ranges 1.5x about their centres.
ITEM_X, ITEM_Y = (0.28, 0.48), (0.1, 0.26)
DEST_X, DEST_Y = (0.3, 0.46), (0.17, 0.28)
REACH_R, REACH_BEARING = (0.3, 0.55), math.radians(80)  # "anywhere reachable": an annulus in front
CLEARANCE = 0.04  # m between the footprints of any two objects
HOME_TCP_XY = forward_kinematics(HOME).tcp[:2, 3]
HOME_KEEP_OUT = 0.07  # m from the open jaws' centre at HOME (their half span + 5 mm) kept free
MAX_TRIES = 1000


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    item: str  # the object the arm moves
    dest: str  # where it goes
    success: Callable[["object"], bool]  # the detector, on a SimWorld
    expert: Callable[[np.ndarray, float, dict], expert.Plan]  # (q0, gripper0, object poses) -> plan

    @property
    def objects(self) -> tuple[str, str]:
        return self.item, self.dest


# --- layouts ------------------------------------------------------------------------------------


def _spread(bounds: tuple[float, float], factor: float) -> tuple[float, float]:
    centre, half = sum(bounds) / 2, (bounds[1] - bounds[0]) / 2
    return centre - factor * half, centre + factor * half


def _clear(xy, name: str, placed: dict) -> bool:
    if np.hypot(*(np.asarray(xy) - HOME_TCP_XY)) < HOME_KEEP_OUT + FOOTPRINT[name]:
        return False
    return all(np.hypot(xy[0] - p[0], xy[1] - p[1]) >= FOOTPRINT[name] + FOOTPRINT[other] + CLEARANCE
               for other, p in placed.items())


def _anywhere(rng: np.random.Generator, name: str, placed: dict) -> tuple[float, float]:
    for _ in range(MAX_TRIES):
        r = math.sqrt(rng.uniform(REACH_R[0] ** 2, REACH_R[1] ** 2))  # uniform over the annulus' area
        bearing = rng.uniform(-REACH_BEARING, REACH_BEARING)
        xy = (r * math.cos(bearing), r * math.sin(bearing))
        if _clear(xy, name, placed):
            return xy
    raise RuntimeError(f"no free spot for the {name} after {MAX_TRIES} tries")


def _in_region(rng, name: str, placed: dict, xs, ys, side: float, spread: float) -> tuple[float, float]:
    xs, ys = _spread(xs, spread), _spread(ys, spread)
    for _ in range(MAX_TRIES):
        xy = (rng.uniform(*xs), side * rng.uniform(*ys))
        if spread == 1.0 or _clear(xy, name, placed):  # the plain ranges are clear by construction
            return xy
    raise RuntimeError(f"no free spot for the {name} after {MAX_TRIES} tries")


def sample_layout(task: Task, scene: Scene, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Object name -> (x, y, yaw) for an episode of `task` in `scene`. With the default scene the
    draws are those of the sim before tasks existed: its pick_place_can episodes are unchanged."""
    item, dest, *extras = scene.objects or task.objects
    side = rng.choice((-1.0, 1.0))
    placed = {item: _in_region(rng, item, {}, ITEM_X, ITEM_Y, side, scene.spread)}
    if scene.dest_anywhere:
        placed[dest] = _anywhere(rng, dest, placed)
    else:
        placed[dest] = _in_region(rng, dest, placed, DEST_X, DEST_Y, -side, scene.spread)
    yaws = {item: rng.uniform(-math.pi, math.pi), dest: rng.uniform(-0.5, 0.5)}
    for name in extras + (["distractor"] if scene.distractor else []):
        placed[name] = _anywhere(rng, name, placed)
        yaws[name] = rng.uniform(-math.pi, math.pi)
    return {name: (*xy, yaws[name]) for name, xy in placed.items()}


# --- detectors ----------------------------------------------------------------------------------


def _axis(quat: np.ndarray) -> np.ndarray:
    """The body's z axis in the world (a can's or cup's axis; the cup opens along +z)."""
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, quat)
    return rot.reshape(3, 3)[:, 2]


def _local(world, frame: str, point: np.ndarray) -> np.ndarray:
    """`point` in the frame of object `frame` (e.g. the box)."""
    pos, quat = world.object_pose(frame)
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, quat)
    return rot.reshape(3, 3).T @ (point - pos)


def can_in_box(world) -> bool:
    """The can's centre lies over the box's inner floor and its bottom is below the walls' top."""
    local = _local(world, "box", world.object_pose("can")[0])
    inside = np.all(np.abs(local[:2]) < BOX_INNER - CAN_RADIUS / 2)
    return bool(inside and local[2] - CAN_HEIGHT / 2 < BOX_HEIGHT)


def _standing(world, name: str, height: float) -> bool:
    """Upright, its centre `height` above the table (± RESTING_TOL)."""
    pos, quat = world.object_pose(name)
    return bool(_axis(quat)[2] > UPRIGHT_COS and abs(pos[2] - height) < RESTING_TOL)


def cans_stacked(world) -> bool:
    """One can stands on the other, which stands on the table, and the gripper has let go."""
    for top, bottom in (("can", "can2"), ("can2", "can")):
        top_pos, bottom_pos = world.object_pose(top)[0], world.object_pose(bottom)[0]
        if (_standing(world, bottom, CAN_HEIGHT / 2) and _standing(world, top, 1.5 * CAN_HEIGHT)
                and np.hypot(*(top_pos[:2] - bottom_pos[:2])) < CAN_RADIUS
                and not world.in_gripper(top)):
            return True
    return False


def can_on_target(world) -> bool:
    """The can stands on the table with its centre on the disc's inner part, let go of."""
    can, target = world.object_pose("can")[0], world.object_pose("target")[0]
    return bool(_standing(world, "can", CAN_HEIGHT / 2) and not world.in_gripper("can")
                and np.hypot(*(can[:2] - target[:2])) < TARGET_RADIUS - CAN_RADIUS / 2)


def cup_pours_into_box(world) -> bool:
    """The cup's opening points down (within 60 degrees) and its rim's centre is over the box's
    inner floor, above it."""
    pos, quat = world.object_pose("cup")
    axis = _axis(quat)
    rim = _local(world, "box", pos + axis * CUP_HEIGHT / 2)
    return bool(axis[2] < -POURING_COS and np.all(np.abs(rim[:2]) < BOX_INNER) and rim[2] > BOX_WALL)


TASKS = {t.name: t for t in (
    Task("pick_place_can", "put the can in the box", "can", "box", can_in_box, expert.plan_pick_place),
    Task("stack_cans", "stack one can on top of the other", "can", "can2", cans_stacked, expert.plan_stack),
    Task("place_at_target", "put the can on the target", "can", "target", can_on_target, expert.plan_place_at),
    Task("pour_cup", "pour the cup into the box", "cup", "box", cup_pours_into_box, expert.plan_pour),
)}
DEFAULT_TASK = "pick_place_can"


def task(name: str) -> Task:
    return lookup(TASKS, name, "task")


def check_pair(task_: Task, scene: Scene) -> None:
    """A scene with a fixed object set takes only the tasks its objects allow."""
    if scene.objects and not set(task_.objects) <= set(scene.objects):
        allowed = [t.name for t in TASKS.values() if set(t.objects) <= set(scene.objects)]
        raise UnknownName(f"scene {scene.name!r} holds {', '.join(scene.objects)}: task {task_.name!r} cannot run "
                          f"there; tasks it takes: {', '.join(allowed)}")


def check_settings(task_name: str, scene_spec: str) -> tuple[Task, tuple[tuple[str, float], ...]]:
    """A task name and a scene (or scene mix, `scenes.parse_mix`) -> (the task, the mix), checked
    together; unknown names and scenes that cannot hold the task raise ValueError (UnknownName)."""
    chosen, mix = task(task_name), parse_mix(scene_spec)
    for name, _ in mix:
        check_pair(chosen, SCENES[name])
    return chosen, mix


def tasks_in(scene: Scene) -> list[str]:
    """The tasks an episode of `scene` can be judged by (mixed: every task its objects allow)."""
    return [t.name for t in TASKS.values() if scene.objects and set(t.objects) <= set(scene.objects)]


def select(task_names: str, scene_names: str) -> list[tuple[Task, Scene]]:
    """`--task` / `--scene` values (a name, a comma list, or `all`) -> the (task, scene) pairs to
    run, tasks outer. `--task all` in a scene with a fixed object set means the tasks it takes.
    Unknown names and impossible pairs raise UnknownName, with the known names."""
    scenes = [lookup(SCENES, n.strip(), "scene") for n in
              (VARIATIONS if scene_names == "all" else scene_names.split(","))]
    if task_names == "all":
        fixed = {s.name for s in scenes if s.objects}
        names = tasks_in(scenes[0]) if fixed and len(scenes) == 1 else list(TASKS)
        if fixed and len(scenes) > 1:
            raise UnknownName(f"--task all with several scenes cannot include {', '.join(sorted(fixed))}: "
                              "run that scene on its own")
    else:
        names = [n.strip() for n in task_names.split(",")]
    pairs = []
    for name in names:
        for s in scenes:
            t = task(name)
            check_pair(t, s)
            pairs.append((t, s))
    return pairs


# --- checkpoints --------------------------------------------------------------------------------


def trained_instructions(checkpoint: str | Path) -> list[str] | None:
    """The instructions a checkpoint says it was trained on, or None where it does not say.

    Read without torch from its deployment settings (`runtime.deployment.load_deployment`); a
    `deployment.json` that cannot be read raises its DeploymentError."""
    return load_deployment(checkpoint).instructions or None


def instruction_warning(checkpoint: str | Path, instruction: str) -> str | None:
    """A sentence when `checkpoint` was not trained on `instruction` (or does not say), else None."""
    try:
        known = trained_instructions(checkpoint)
    except DeploymentError as e:
        return f"the instructions checkpoint {checkpoint} was trained on cannot be read: {e}"
    if known is None:
        return (f"checkpoint {checkpoint} does not say which instructions it was trained on; "
                f"{instruction!r} may be new to it")
    if instruction not in known:
        return (f"checkpoint {checkpoint} was not trained on {instruction!r}; it knows: "
                + "; ".join(repr(i) for i in known))
    return None
