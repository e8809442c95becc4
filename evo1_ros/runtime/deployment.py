"""How a checkpoint is run: its deployment settings, `deployment.json` beside `config.json`.

The model's config (`model/config.py`) describes the network. How the runtime executes it lives
here: the action rate, chunk execution (`runtime.chunking`), the sampler's noise scale, the
instructions it was trained on, and its conventions — how the policy sees the robot:

- per state and action dimension its meaning (`joint` | `gripper`) and unit: joints in `rad` or
  `deg`; the gripper as ROS `drive_joint` (0 open .. 0.85 closed) or the xArm SDK's position
  (`sdk`: 0 closed .. 850 open);
- per action dimension whether it is absolute or `relative` to the state at the chunk's
  observation;
- the colour order of the views (`rgb` | `bgr`) and their names in slot order.

Nodes and the driver always speak ROS units (radians, `drive_joint`); `Conventions` converts at the
policy boundary, both ways. This module needs neither torch nor ROS: `load_deployment` serves any
tool that only wants to read a checkpoint's settings (e.g. the sim eval checking its instructions).

Checkpoints written before this file existed carry `action_rate_hz`, `chunk_mode`,
`request_threshold` and `noise_scale` in `config.json`; `load_deployment` reads them from there
with a warning that says how to move them (`evo1-ros check CHECKPOINT --migrate`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.config import LEGACY_DEPLOYMENT_KEYS
from ..robot.xarm6 import GRIPPER_CLOSED, GRIPPER_OPEN, NUM_JOINTS, SDK_GRIPPER_OPEN
from .chunking import MODES, RTCConfig

DEPLOYMENT_FILE = "deployment.json"
CONFIG_FILE = "config.json"  # the model's; legacy deployment keys may sit in it
JOINT_UNITS = ("rad", "deg")
GRIPPER_UNITS = ("drive_joint", "sdk")
UNITS = {"joint": JOINT_UNITS, "gripper": GRIPPER_UNITS}
COLOR_ORDERS = ("rgb", "bgr")


class DeploymentError(ValueError):
    """Deployment settings that cannot be used as they are; the text says why."""


@dataclass(frozen=True)
class Dim:
    """One state or action dimension as the policy sees it."""

    meaning: str  # joint | gripper
    unit: str  # joint: rad | deg; gripper: drive_joint | sdk
    relative: bool = False  # actions only: an offset from the state at the chunk's observation

    def __post_init__(self):
        if self.meaning not in UNITS:
            raise DeploymentError(f"dimension meaning must be one of {tuple(UNITS)}, got {self.meaning!r}")
        if self.unit not in UNITS[self.meaning]:
            raise DeploymentError(f"a {self.meaning} dimension's unit must be one of {UNITS[self.meaning]}, "
                                  f"got {self.unit!r}")


def xarm6_dims(joint_unit: str = "rad", gripper_unit: str = "drive_joint", relative: bool = False) -> list[Dim]:
    """joint1..joint6 + gripper in the given units; `relative` marks the joints (not the gripper)."""
    return [Dim("joint", joint_unit, relative) for _ in range(NUM_JOINTS)] + [Dim("gripper", gripper_unit)]


ROS_DIMS = tuple(xarm6_dims())  # what the nodes and the driver speak


@dataclass
class Conventions:
    state: list[Dim] = field(default_factory=xarm6_dims)
    action: list[Dim] = field(default_factory=xarm6_dims)
    color_order: str = "rgb"
    views: list[str] = field(default_factory=list)  # camera names in view-slot order; [] = not declared

    def __post_init__(self):
        self.state = [d if isinstance(d, Dim) else Dim(**d) for d in self.state]
        self.action = [d if isinstance(d, Dim) else Dim(**d) for d in self.action]
        self.views = [str(v) for v in self.views]
        if any(d.relative for d in self.state):
            raise DeploymentError("'relative' applies to action dimensions only")
        if self.color_order not in COLOR_ORDERS:
            raise DeploymentError(f"color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}")
        for name, dims in (("state", self.state), ("action", self.action)):
            if [d.meaning for d in dims] != [d.meaning for d in ROS_DIMS[: len(dims)]]:
                raise DeploymentError(f"{name} dimensions must be xArm6 joints in order, then the gripper "
                                      f"(at most {len(ROS_DIMS)}); got {[d.meaning for d in dims]}")
        relative = [i for i, d in enumerate(self.action) if d.relative]
        if relative and max(relative) >= len(self.state):
            raise DeploymentError(f"relative action dimensions {relative} have no state dimension to add to")
        if len(set(self.views)) != len(self.views):
            raise DeploymentError(f"view names repeat: {self.views}")

    def describe(self) -> str:
        def dims(ds: Sequence[Dim]) -> str:
            units = [d.unit + (" relative" if d.relative else "") for d in ds]
            return ", ".join(f"{n} x {u}" if n > 1 else u for u, n in _runs(units))

        return (f"state [{dims(self.state)}]; action [{dims(self.action)}]; views {self.views or 'not declared'} "
                f"({self.color_order.upper()})")

    @property
    def is_ros(self) -> bool:
        """True when the policy speaks the nodes' units already (nothing to convert)."""
        return list(self.state) == list(ROS_DIMS[: len(self.state)]) and list(self.action) == list(
            ROS_DIMS[: len(self.action)])

    def state_to_policy(self, state: np.ndarray) -> np.ndarray:
        """The arm's state in ROS units (rad, drive_joint) -> the policy's units."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.state),):
            raise DeploymentError(f"state has shape {state.shape}; the checkpoint declares {len(self.state)} dims")
        return np.array([_from_ros(x, d) for x, d in zip(state, self.state)])

    def actions_to_ros(self, actions: np.ndarray, policy_state: np.ndarray) -> np.ndarray:
        """(H, action dims) in the policy's units, relative dims offset from `policy_state` (the
        observation's state in the policy's units) -> absolute targets in ROS units."""
        actions = np.array(actions, dtype=np.float64)
        for i, d in enumerate(self.action):
            if d.relative:
                actions[:, i] += policy_state[i]
        return np.stack([_to_ros(actions[:, i], d) for i, d in enumerate(self.action)], axis=1)

    def actions_to_policy(self, actions: np.ndarray, policy_state: np.ndarray) -> np.ndarray:
        """The inverse of `actions_to_ros`: absolute targets in ROS units -> the policy's units, relative
        dims offset from `policy_state` (real-time chunking hands the policy its previous plan)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != len(self.action):
            raise DeploymentError(f"actions must be (n, {len(self.action)}), got {actions.shape}")
        out = np.stack([_from_ros(actions[:, i], d) for i, d in enumerate(self.action)], axis=1)
        for i, d in enumerate(self.action):
            if d.relative:
                out[:, i] -= policy_state[i]
        return out

    def frames_to_policy(self, frames: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """RGB frames (as the nodes decode them) -> the colour order the policy was trained on."""
        if self.color_order == "rgb":
            return list(frames)
        return [None if f is None else np.ascontiguousarray(f[..., ::-1]) for f in frames]


def _runs(items: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out


def _from_ros(x, d: Dim):
    if d.unit == "deg":
        return np.rad2deg(x)
    if d.unit == "sdk":  # drive_joint 0 open .. 0.85 closed -> 850 open .. 0 closed
        return SDK_GRIPPER_OPEN * (1.0 - (np.asarray(x) - GRIPPER_OPEN) / (GRIPPER_CLOSED - GRIPPER_OPEN))
    return x


def _to_ros(x, d: Dim):
    if d.unit == "deg":
        return np.deg2rad(x)
    if d.unit == "sdk":
        return GRIPPER_OPEN + (GRIPPER_CLOSED - GRIPPER_OPEN) * (1.0 - np.asarray(x) / SDK_GRIPPER_OPEN)
    return x


@dataclass
class DeploymentConfig:
    """Everything about running a checkpoint that is not the network itself."""

    # Rate (Hz) of a chunk's actions, i.e. of the data it was trained on; the inference node executes
    # one action per control tick, so it runs at this rate. 0 = unknown.
    action_rate_hz: float = 0.0
    # How the inference node executes the chunks where its parameters leave it open
    # (runtime.chunking: mode, and the fraction of a chunk left when the next is asked for);
    # None: the node's defaults. A small policy trained on few demos may work only with whole
    # chunks played open loop (models/README.md): the checkpoint is where that was measured.
    chunk_mode: str | None = None
    request_threshold: float | None = None
    # chunk_mode rtc: execution horizon, guidance clip and schedule (runtime.chunking.RTCConfig);
    # None: the node's defaults.
    rtc: RTCConfig | None = None
    # The sampler starts from noise uniform in [-noise_scale, noise_scale]. 1 is the reference. 0
    # starts at the noise's mean and makes every chunk a deterministic function of the observation.
    noise_scale: float = 1.0
    instructions: list[str] = field(default_factory=list)  # trained on; [] = not recorded
    conventions: Conventions = field(default_factory=Conventions)

    def __post_init__(self):
        if isinstance(self.conventions, dict):
            self.conventions = Conventions(**self.conventions)
        if isinstance(self.rtc, dict):
            try:
                self.rtc = RTCConfig(**self.rtc)
            except (TypeError, ValueError) as e:
                raise DeploymentError(f"rtc: {e}") from e
        if not (math.isfinite(self.action_rate_hz) and self.action_rate_hz >= 0):
            raise DeploymentError(f"action_rate_hz must be >= 0 (0 = unknown), got {self.action_rate_hz}")
        if self.chunk_mode is not None and self.chunk_mode not in MODES:
            raise DeploymentError(f"chunk_mode must be one of {MODES} or null, got {self.chunk_mode!r}")
        if self.request_threshold is not None and not 0.0 <= self.request_threshold <= 1.0:
            raise DeploymentError(f"request_threshold must be in [0, 1] or null, got {self.request_threshold}")
        if not 0.0 <= self.noise_scale <= 1.0:
            raise DeploymentError(f"noise_scale must be in [0, 1], got {self.noise_scale}")
        if not all(isinstance(i, str) for i in self.instructions):
            raise DeploymentError("instructions must be a list of strings")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("state", "action"):  # "relative": false is the default; say it only where true
            d["conventions"][key] = [{k: v for k, v in dim.items() if k != "relative" or v}
                                     for dim in d["conventions"][key]]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "deployment settings") -> "DeploymentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DeploymentError(f"{source}: unknown keys {unknown} (known: {sorted(names)})")
        conventions = d.get("conventions", {})
        if not isinstance(conventions, dict):
            raise DeploymentError(f"{source}: 'conventions' must be an object")
        known = {f.name for f in dataclasses.fields(Conventions)}
        if set(conventions) - known:
            raise DeploymentError(f"{source}: unknown conventions keys {sorted(set(conventions) - known)} "
                                  f"(known: {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as e:
            raise DeploymentError(f"{source}: {e}") from e
        except DeploymentError as e:
            raise DeploymentError(f"{source}: {e}") from e

    def save(self, checkpoint: str | Path) -> Path:
        path = Path(checkpoint) / DEPLOYMENT_FILE
        text = json.dumps(self.to_dict(), indent=2)
        # One line per dimension: {"meaning": "joint", "unit": "rad"}, not four.
        text = re.sub(r"\{\n\s*([^{}\[\]]*?)\n\s*\}", lambda m: "{" + re.sub(r",\n\s*", ", ", m.group(1)) + "}", text)
        path.write_text(text + "\n")
        return path


def legacy_settings(checkpoint: str | Path) -> dict:
    """Deployment keys an older evo1_ros left in the checkpoint's config.json ({} if none)."""
    config = Path(checkpoint) / CONFIG_FILE
    if not config.is_file():
        return {}
    data = json.loads(config.read_text())
    return {k: data[k] for k in LEGACY_DEPLOYMENT_KEYS if k in data}


def load_deployment(checkpoint: str | Path) -> DeploymentConfig:
    """A checkpoint's deployment settings, without torch. deployment.json if present; else the
    legacy keys of config.json (with a warning naming the fix); else the defaults."""
    checkpoint = Path(checkpoint)
    path = checkpoint / DEPLOYMENT_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DeploymentError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise DeploymentError(f"{path}: expected a JSON object")
        return DeploymentConfig.from_dict(data, str(path))
    legacy = legacy_settings(checkpoint)
    if legacy:
        warnings.warn(f"{checkpoint}: deployment settings {sorted(legacy)} are in config.json, where older "
                      f"evo1_ros versions put them; they are used, but belong in {DEPLOYMENT_FILE}: run "
                      f"`evo1-ros check {checkpoint} --migrate` to move them", stacklevel=2)
    return DeploymentConfig.from_dict(legacy, str(checkpoint / CONFIG_FILE))


def migrate(checkpoint: str | Path, **overrides) -> DeploymentConfig:
    """Move config.json's legacy deployment keys into deployment.json (merged with `overrides`,
    e.g. instructions or conventions); the weights are not touched."""
    checkpoint = Path(checkpoint)
    if (checkpoint / DEPLOYMENT_FILE).is_file():
        raise DeploymentError(f"{checkpoint / DEPLOYMENT_FILE} exists already")
    legacy = legacy_settings(checkpoint)
    deployment = DeploymentConfig.from_dict({**legacy, **overrides}, str(checkpoint))
    deployment.save(checkpoint)
    config_path = checkpoint / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k not in legacy}, indent=2))
    return deployment
