"""Scene variations: seeded distributions over where things are and how they look.

A scene changes the layout's ranges (`wide`), adds an object (`distractor`), or varies the look of
the compiled model per seed (`lighting`, `camera`); `mixed` holds the objects of two tasks, so only
the instruction says which one to do. Layouts are sampled in `sim/tasks.py`; the look is set here,
on the model, from each episode's own random stream.

`record-sim --scene` takes a mix: `mix` (the five variations, equal weights) or
`NAME:WEIGHT,NAME:WEIGHT,...`; each episode's scene is drawn from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from evo1_ros.sim.mjcf import CAMERAS, TABLE_MATERIALS


class UnknownName(ValueError):
    """A task or scene name that is not registered; the message lists the known ones."""


def lookup(registry: dict, name: str, kind: str):
    if name not in registry:
        raise UnknownName(f"unknown {kind} {name!r}; known {kind}s: {', '.join(registry)}")
    return registry[name]


@dataclass(frozen=True)
class Scene:
    name: str
    description: str
    spread: float = 1.0  # object ranges scaled about their centres
    dest_anywhere: bool = False  # the box (target, second can) anywhere reachable, not opposite the item
    distractor: bool = False
    lighting: bool = False
    camera: bool = False
    objects: tuple[str, ...] = ()  # a fixed object set (item, destination, extras); empty: the task's


SCENES = {s.name: s for s in (
    Scene("default", "the task's own layout ranges and look"),
    Scene("wide", "object ranges 1.5x wider; the destination anywhere reachable", spread=1.5, dest_anywhere=True),
    Scene("distractor", "a block of another colour and shape on the table", distractor=True),
    Scene("lighting", "light direction, intensity and colour; table texture and colour", lighting=True),
    Scene("camera", "each camera moved by up to 2 cm and turned by up to 3 degrees", camera=True),
    Scene("mixed", "can, box and target together: the instruction says which task",
          objects=("can", "box", "target")),
)}
VARIATIONS = ("default", "wide", "distractor", "lighting", "camera")  # `mix` and `all`

# Independent random streams per seed: the layout draws from default_rng(seed) (as before scenes
# existed, so `default` episodes are unchanged); look and scene choice from streams of their own,
# so a look variation never moves an object.
LOOK_STREAM, CHOICE_STREAM = 1, 2

MAX_CAMERA_SHIFT, MAX_CAMERA_TURN = 0.02, math.radians(3.0)
DISTRACTOR_COLOURS = ((0.9, 0.8, 0.1), (0.55, 0.2, 0.75), (0.15, 0.15, 0.17), (0.95, 0.55, 0.1))


def scene(name: str) -> Scene:
    return lookup(SCENES, name, "scene")


def parse_mix(spec: str) -> tuple[tuple[str, float], ...]:
    """`NAME`, `mix`, or `NAME:WEIGHT,...` -> ((name, weight), ...) with positive weights."""
    if spec == "mix":
        return tuple((name, 1.0) for name in VARIATIONS)
    mix = []
    for part in spec.split(","):
        name, _, weight = part.strip().partition(":")
        scene(name)
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"scene weight {weight!r} of {name!r} is not a number") from None
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"scene weight of {name!r} must be a positive number, not {weight!r}")
        mix.append((name, value))
    if len({name for name, _ in mix}) != len(mix):
        raise ValueError(f"scene mix {spec!r} names a scene twice")
    return tuple(mix)


def choose(mix: tuple[tuple[str, float], ...], seed: int) -> Scene:
    """The scene of the episode with `seed`, drawn by weight (always the one scene of a plain name)."""
    if len(mix) == 1:
        return scene(mix[0][0])
    names, weights = zip(*mix)
    rng = np.random.default_rng([seed, CHOICE_STREAM])
    return scene(names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))])


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _turned(quat: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    turn, out = np.empty(4), np.empty(4)
    mujoco.mju_axisAngle2Quat(turn, axis, angle)
    mujoco.mju_mulQuat(out, quat, turn)
    return out


class Look:
    """The model fields a scene varies, with their compiled values to go back to each episode."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self.sun, self.fill = model.light("sun").id, model.light("fill").id
        self.table = model.geom("table").id
        self.materials = [model.material(name).id for name in TABLE_MATERIALS]
        self.cameras = [model.camera(name).id for name in CAMERAS]
        self.distractor = model.geom("distractor").id
        m = model
        self.nominal = {
            "light_dir": m.light_dir.copy(), "light_diffuse": m.light_diffuse.copy(),
            "headlight": (m.vis.headlight.ambient.copy(), m.vis.headlight.diffuse.copy()),
            "geom_matid": m.geom_matid.copy(), "mat_rgba": m.mat_rgba.copy(), "geom_rgba": m.geom_rgba.copy(),
            "cam_pos": m.cam_pos.copy(), "cam_quat": m.cam_quat.copy(),
        }

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        """Back to the compiled look, then `scene`'s variation drawn from `rng`. Call under the
        world's lock and before mj_forward (light directions become world vectors there)."""
        m, nominal = self.model, self.nominal
        m.light_dir[:], m.light_diffuse[:] = nominal["light_dir"], nominal["light_diffuse"]
        m.vis.headlight.ambient[:], m.vis.headlight.diffuse[:] = nominal["headlight"]
        m.geom_matid[:], m.mat_rgba[:] = nominal["geom_matid"], nominal["mat_rgba"]
        m.geom_rgba[:] = nominal["geom_rgba"]
        m.cam_pos[:], m.cam_quat[:] = nominal["cam_pos"], nominal["cam_quat"]
        if scene.lighting:
            self._lighting(rng)
        if scene.camera:
            self._cameras(rng)
        if scene.distractor:
            m.geom_rgba[self.distractor, :3] = DISTRACTOR_COLOURS[rng.integers(len(DISTRACTOR_COLOURS))]

    def _lighting(self, rng: np.random.Generator) -> None:
        m = self.model
        # the sun from anywhere within 45 degrees of overhead, 0.3-0.8 bright, warm to cool
        tilt, azimuth = rng.uniform(0.0, math.radians(45)), rng.uniform(-math.pi, math.pi)
        m.light_dir[self.sun] = (math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth),
                                 -math.cos(tilt))

        def tint():
            colour = 1.0 + rng.uniform(-0.25, 0.25, size=3)
            return colour / colour.max()

        m.light_diffuse[self.sun] = rng.uniform(0.3, 0.8) * tint()
        m.light_diffuse[self.fill] = rng.uniform(0.0, 0.35) * tint()
        m.vis.headlight.ambient[:] = rng.uniform(0.2, 0.45) * tint()
        m.vis.headlight.diffuse[:] = rng.uniform(0.1, 0.45) * tint()
        material = self.materials[rng.integers(len(self.materials))]
        m.geom_matid[self.table] = material
        m.mat_rgba[material, :3] = np.clip(self.nominal["mat_rgba"][material, :3] * rng.uniform(0.7, 1.2, 3), 0, 1)

    def _cameras(self, rng: np.random.Generator) -> None:
        m = self.model
        for cam in self.cameras:
            shift = _unit(rng) * MAX_CAMERA_SHIFT * rng.uniform() ** (1 / 3)  # uniform in the 2 cm ball
            m.cam_pos[cam] = self.nominal["cam_pos"][cam] + shift
            m.cam_quat[cam] = _turned(self.nominal["cam_quat"][cam], _unit(rng), rng.uniform(0.0, MAX_CAMERA_TURN))
